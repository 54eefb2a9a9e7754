"""Shipped reference draws: format, recorded convergence, and agreement with a regeneration."""

from __future__ import annotations

import json

import numpy as np
import pytest

import pyro_kr.bench.problems as problems
from pyro_kr.bench.problems import references

SHIPPED = sorted(p.stem.rsplit("_obs", 1)[0] for p in references.reference_dir().glob("*.npz"))


def test_shipped_files_are_small_and_present_for_the_headline_problem():
    total = sum(p.stat().st_size for p in references.reference_dir().glob("*.npz"))
    assert total < 8 * 2**20
    assert "lotka_volterra" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED, ids=SHIPPED)
def test_shipped_reference_format_and_convergence(name):
    p = problems.get(name)
    draws = p.reference(0)
    assert list(draws) == p.param_names
    n = len(draws[p.param_names[0]])
    for k, shape in p.param_shapes.items():
        assert draws[k].shape == (n, *shape) and draws[k].dtype == np.float32
        assert np.isfinite(draws[k]).all()
    info = references.reference_info(name, 0)
    assert info["num_draws"] == n
    assert info["max_rhat"] <= 1.01
    assert info["min_ess_bulk"] >= n / 20
    np.testing.assert_allclose(info["observation"], p.observation(0).numpy())
    assert p.reference(0, num_samples=10)[p.param_names[0]].shape[0] == 10
    with pytest.raises(ValueError, match="ships"):
        p.reference(0, num_samples=n + 1)


def test_lotka_volterra_reference_covers_the_truth():
    draws = problems.get("lotka_volterra").reference(0)
    assert len(draws["alpha"]) >= 25_000
    truths = (0.83, 0.041, 1.08, 0.04)
    for k, truth in zip(("alpha", "beta", "gamma", "delta"), truths, strict=True):
        lo, hi = np.quantile(draws[k], [0.001, 0.999])
        assert lo < truth < hi


def test_darcy_reference_covers_the_truth_and_is_informative():
    p = problems.get("darcy_2d")
    draws = p.reference(0)["xi"].astype(np.float64)
    assert draws.shape == (4000, 32)
    xi_true = np.random.default_rng(5).standard_normal(32)  # how the observation was made
    lo, hi = np.quantile(draws, [0.001, 0.999], axis=0)
    assert np.all((lo < xi_true) & (xi_true < hi))
    sd = draws.std(0)
    assert sd[0] < 0.05 and sd[-1] > 0.5  # the leading modes are pinned, the last ones not


def test_settings_cover_the_mcmc_problems():
    assert set(references.SETTINGS) == {
        "lotka_volterra", "banana", "eight_schools", "elliptic_1d", "darcy_2d"
    }
    with pytest.raises(ValueError, match="valid: lotka_volterra"):
        references.generate("funnel")


def test_darcy_reference_samples_the_pyro_model_through_nuts_from_pyro(monkeypatch, tmp_path):
    """darcy_2d goes through nuts_from_pyro (its PyMC twin's gradient is ~50x slower)."""
    import pyro_kr.bench.reference as reference_module
    from pyro_kr.bench.reference import _io

    p = problems.get("darcy_2d")
    calls = {}

    def fake_nuts_from_pyro(model, **kwargs):
        calls.update(kwargs, model=model)
        rng = np.random.default_rng(0)
        chains, draws = kwargs["chains"], kwargs["draws"]
        post = {"xi": rng.standard_normal((chains, draws, 32))}
        stats = {"diverging": np.zeros((chains, draws), dtype=bool)}
        return _io.from_dict(post, sample_stats=stats)

    monkeypatch.setattr(reference_module, "nuts_from_pyro", fake_nuts_from_pyro)
    draws, record = references.generate(
        "darcy_2d", draws=2000, tune=10, chains=4, out_dir=tmp_path
    )
    assert calls["model"].__func__ is type(p).model and calls["model"].__self__ == p
    np.testing.assert_array_equal(calls["y"].numpy(), p.observation(0).numpy())
    assert (calls["draws"], calls["tune"], calls["chains"]) == (2000, 10, 4)
    assert calls["rhat_max"] == float("inf")  # generate() checks R-hat / ESS itself
    assert draws["xi"].shape == (8000, 32) and draws["xi"].dtype == np.float32
    assert record["sampler"].startswith("pyro_kr.bench.reference.nuts_from_pyro")
    assert record["settings"]["sampler"] == "nuts_from_pyro"
    saved = np.load(tmp_path / "darcy_2d_obs0.npz")
    np.testing.assert_array_equal(saved["xi"], draws["xi"])
    assert json.loads((tmp_path / "darcy_2d_obs0.json").read_text())["num_draws"] == 8000


def test_rejected_reference_run_writes_nothing(monkeypatch, tmp_path):
    import pyro_kr.bench.reference as reference_module
    from pyro_kr.bench.reference import _io

    def stuck_chains(model, **kwargs):  # two chains in different places: R-hat >> 1.01
        post = np.stack([np.zeros((200, 32)), np.ones((200, 32))])
        post = post + 0.01 * np.random.default_rng(0).standard_normal(post.shape)
        return _io.from_dict({"xi": post}, sample_stats={"diverging": np.zeros((2, 200))})

    monkeypatch.setattr(reference_module, "nuts_from_pyro", stuck_chains)
    with pytest.raises(RuntimeError, match="rejected, nothing written"):
        references.generate("darcy_2d", draws=200, tune=1, chains=2, out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_missing_reference_says_how_to_build_one():
    with pytest.raises(ValueError, match="pyro_kr.bench.reference.nuts"):
        references.load_reference("lotka_volterra", 3)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["banana", "lotka_volterra"])
def test_regeneration_agrees_with_shipped_draws(name, tmp_path):
    shipped = problems.get(name).reference(0)
    ess_shipped = json.loads((references.reference_dir() / f"{name}_obs0.json").read_text())[
        "min_ess_bulk"
    ]
    new, record = references.generate(
        name, draws=1000, tune=1000, chains=2, seed=123, out_dir=tmp_path, check=False
    )
    assert (tmp_path / f"{name}_obs0.npz").exists()
    assert record["max_rhat"] < 1.05
    for k in shipped:
        a, b = shipped[k].astype(np.float64), new[k].astype(np.float64)
        se = np.sqrt(a.var(0) / ess_shipped + b.var(0) / record["min_ess_bulk"])
        assert np.all(np.abs(a.mean(0) - b.mean(0)) < 5 * se), k


def test_pymc_twin_references_go_through_reference_nuts(monkeypatch, tmp_path):
    """One builder: generate() samples the PyMC twin through pyro_kr.bench.reference.nuts, with
    the LV chains started at init_at (PyMC's init="adapt_diag", no jitter), uncached."""
    import importlib

    from pyro_kr.bench.reference import _io

    nuts_module = importlib.import_module("pyro_kr.bench.reference.nuts")
    seen = {}

    def fake_sample(model, settings, progressbar):
        seen.update(settings)
        rng = np.random.default_rng(0)
        chains, draws = settings["chains"], settings["draws"]
        post = {k: 1.0 + 0.01 * rng.standard_normal((chains, draws)) for k in ("alpha", "beta",
                                                                             "gamma", "delta")}
        return _io.from_dict(post, sample_stats={"diverging": np.zeros((chains, draws))}), 1.0

    monkeypatch.setattr(nuts_module, "_sample", fake_sample)
    monkeypatch.setenv("PYRO_KR_CACHE", str(tmp_path / "cache"))
    draws, record = references.generate(
        "lotka_volterra", draws=50, tune=5, chains=3, out_dir=tmp_path, check=False
    )
    assert seen["compile_mode"] == "NUMBA" and seen["init"] == "adapt_diag"
    assert len(seen["initvals"]) == 3
    start = np.array([[c[k] for k in problems.get("lotka_volterra").param_names]
                      for c in seen["initvals"]])
    center = np.array(references.SETTINGS["lotka_volterra"]["init_at"])
    assert np.all(np.abs(np.log(start / center)) < 5 * 0.05)  # u* * exp(0.05 z)
    assert record["sampler"].startswith("pyro_kr.bench.reference.nuts")
    assert not (tmp_path / "cache").exists()  # cache=False: nothing cached
