"""``pyro_kr.simulate``: seeded chunks, shards that resume and refuse corruption, Ray backend."""

from __future__ import annotations

import importlib.util

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_kr
from pyro_kr.simulation import SimulationBank, chunk_seed
from pyro_kr.simulation import run as run_module

HAS_RAY = importlib.util.find_spec("ray") is not None


def model(y=None):
    scale = pyro.sample("scale", dist.LogNormal(0.0, 0.3))
    z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    loc = (z.sum(-1) * scale)[..., None]  # broadcasts over an outer plate
    with pyro.plate("data", 4):
        return pyro.sample("y", dist.Normal(loc, 0.5).to_event(1), obs=y)


def other_model(y=None):
    scale = pyro.sample("scale", dist.LogNormal(0.0, 0.3))
    z = pyro.sample("z", dist.Normal(torch.ones(3), 1.0).to_event(1))
    loc = (z.sum(-1) * scale)[..., None]  # broadcasts over an outer plate
    with pyro.plate("data", 4):
        return pyro.sample("y", dist.Normal(loc, 0.5).to_event(1), obs=y)


def assert_same(a: SimulationBank, b: SimulationBank) -> None:
    assert len(a) == len(b)
    for x, y in ((a.latents, b.latents), (a.observations, b.observations)):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


def test_default_settings_draw_the_prior_predictive():
    bank = pyro_kr.simulate(model, 4000, observed="y")
    assert len(bank) == 4000 and bank.num_shards == 1
    assert set(bank.latents) == {"scale", "z"} and set(bank.observations) == {"y"}
    assert bank.latents["z"].shape == (4000, 3) and bank.observations["y"].shape == (4000, 4, 1)
    # closed forms: log scale ~ N(0, 0.3^2), z ~ N(0, I); y - scale * sum(z) ~ N(0, 0.5^2)
    log_s = bank.latents["scale"].log()
    assert abs(float(log_s.mean())) < 4 * 0.3 / 4000**0.5
    assert abs(float(log_s.std()) - 0.3) < 0.02
    resid = bank.observations["y"][..., 0] - (bank.latents["z"].sum(-1) *
                                                bank.latents["scale"])[:, None]
    assert abs(float(resid.std()) - 0.5) < 0.02
    # the global RNG is left untouched
    state = torch.get_rng_state()
    pyro_kr.simulate(model, 10, observed="y")
    assert torch.equal(state, torch.get_rng_state())


def test_pairs_depend_on_seed_and_chunk_size_only():
    a = pyro_kr.simulate(model, 10, observed="y", seed=3, chunk_size=4)
    b = pyro_kr.simulate(model, 10, observed="y", seed=3, chunk_size=4)
    assert_same(a, b)
    assert a.shard_sizes == [4, 4, 2]
    c = pyro_kr.simulate(model, 10, observed="y", seed=4, chunk_size=4)
    assert not torch.equal(a.latents["z"], c.latents["z"])
    # chunk i is simulate_pairs with chunk_seed(seed, i): a prefix of a bigger bank is the same
    d = pyro_kr.simulate(model, 6, observed="y", seed=3, chunk_size=4)
    assert torch.equal(d.latents["z"][:4], a.latents["z"][:4])
    assert chunk_seed(3, 0) != chunk_seed(3, 1) != chunk_seed(4, 0)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="backend"):
        pyro_kr.simulate(model, 10, observed="y", backend="dask")
    with pytest.raises(ValueError, match="observed sites"):
        pyro_kr.simulate(model, 10, observed="x")
    with pytest.raises(ValueError, match="num_simulations"):
        pyro_kr.simulate(model, 0, observed="y")
    with pytest.raises(ValueError, match="address"):
        pyro_kr.simulate(model, 10, observed="y", address="auto")


def test_shards_resume_after_an_interrupted_run(tmp_path, monkeypatch):
    full = pyro_kr.simulate(model, 10, observed="y", seed=1, chunk_size=3)
    calls = []
    original = run_module._run_chunk
    probe = chunk_seed(1, run_module._PROBE)  # the manifest's two probe draws

    def interrupted(*args):
        calls.append(args[-2])
        if len([c for c in calls if c != probe]) == 3:
            raise KeyboardInterrupt
        return original(*args)

    monkeypatch.setattr(run_module, "_run_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pyro_kr.simulate(model, 10, observed="y", seed=1, chunk_size=3, path=tmp_path)
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == ["shard-000000.pt",
                                                                  "shard-000001.pt"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ValueError, match="misses 2 of 4 shards"):
        SimulationBank.load(tmp_path)
    calls.clear()
    monkeypatch.setattr(run_module, "_run_chunk", lambda *a: (calls.append(a[-2]),
                                                              original(*a))[1])
    bank = pyro_kr.simulate(model, 10, observed="y", seed=1, chunk_size=3, path=tmp_path)
    assert calls == [probe, chunk_seed(1, 2), chunk_seed(1, 3)]  # only the missing chunks ran
    assert_same(bank, full)
    assert_same(SimulationBank.load(tmp_path), full)
    assert [len(s[0]["z"]) for s in bank.shards()] == [3, 3, 3, 1]


def test_corrupted_or_foreign_shards_are_refused_by_name(tmp_path):
    kwargs = dict(observed="y", seed=0, chunk_size=5, path=tmp_path / "a")
    pyro_kr.simulate(model, 10, **kwargs)
    shard = tmp_path / "a" / "shard-000001.pt"
    data = shard.read_bytes()
    record = torch.load(shard, weights_only=True)
    record["tensors"]["observations/y"][0, 0, 0] += 1.0  # a changed value, same layout
    torch.save(record, shard)
    with pytest.raises(ValueError, match="shard-000001.pt is corrupted"):
        pyro_kr.simulate(model, 10, **kwargs)
    shard.write_bytes(bytes(data[:100]))
    with pytest.raises(ValueError, match="shard-000001.pt is corrupted"):
        SimulationBank.load(tmp_path / "a").shard(1)
    # a shard copied from a bank with another seed
    pyro_kr.simulate(model, 10, observed="y", seed=1, chunk_size=5, path=tmp_path / "b")
    shard.write_bytes((tmp_path / "b" / "shard-000001.pt").read_bytes())
    with pytest.raises(ValueError, match="shard-000001.pt belongs to another bank"):
        pyro_kr.simulate(model, 10, **kwargs)
    # the same folder with another seed, or another model with the same shapes
    with pytest.raises(ValueError, match="seed=0, this call has seed=2"):
        pyro_kr.simulate(model, 10, **{**kwargs, "seed": 2})
    with pytest.raises(ValueError, match="another model|model="):
        pyro_kr.simulate(other_model, 10, **kwargs)


def test_ray_missing_says_how_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ImportError, match=r'pip install "pyro_kr\[distributed\]"'):
        pyro_kr.simulate(model, 10, observed="y", backend="ray")


@pytest.mark.skipif(not HAS_RAY, reason="needs ray (pip install 'pyro_kr[distributed]')")
def test_ray_local_cluster_gives_the_local_pairs_and_resumes(tmp_path):
    import ray

    import pyro_kr.bench.problems as problems

    # Ray workers import functions by module: a model of an importable module (a script's
    # own functions, in __main__, travel by value)
    lg = problems.get("linear_gaussian").model
    kw = dict(observed="y", seed=7, chunk_size=3)
    local = pyro_kr.simulate(lg, 10, **kw)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert_same(pyro_kr.simulate(lg, 10, backend="ray", **kw), local)
        full = pyro_kr.simulate(lg, 10, path=tmp_path, **kw)
        kept = (tmp_path / "shard-000000.pt").stat().st_mtime_ns
        (tmp_path / "shard-000002.pt").unlink()  # as if the run had stopped early
        (tmp_path / "shard-000003.pt").unlink()
        resumed = pyro_kr.simulate(lg, 10, path=tmp_path, backend="ray", **kw)
        assert_same(resumed, local)
        assert_same(full, local)
        assert (tmp_path / "shard-000000.pt").stat().st_mtime_ns == kept  # not redrawn
    finally:
        ray.shutdown()
