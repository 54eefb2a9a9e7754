"""Data-parallel training: 2 gloo processes give the parameters of 1 process (same global batch).

The processes are launched as ``torchrun`` would launch them (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT`` in the environment); the training script itself is unchanged.
"""

from __future__ import annotations

import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = '''
import sys, pyro, pyro.distributions as dist, torch, pyro_kr

torch.set_num_threads(1)


def model(y=None):
    z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))
    return pyro.sample("y", dist.Normal(z, 0.5).to_event(1), obs=y)


def train(out, mode="forward", steps=6, checkpoint=None, simulations=None):
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    guide = pyro_kr.AmortizedKR(model, observed="y", depth=1, hidden_dims=(8,),
                                num_standardize=100, embedding_hidden=(8,))
    history = pyro_kr.fit_amortized(
        model, guide, mode=mode, steps=steps, batch_size=32, lr=1e-2,
        num_simulations=None if simulations is not None or mode == "reverse" else 200,
        simulations=simulations, validate_every=3, checkpoint=checkpoint,
        checkpoint_every=2, progress=True,
    )
    if pyro_kr.distributed.is_main():
        params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
        torch.save({"params": params, "loss": history.loss, "val": history.val_loss}, out)


if __name__ == "__main__":
    bank = pyro_kr.SimulationBank.load(sys.argv[3]) if len(sys.argv) > 3 else None
    train(sys.argv[1], mode=sys.argv[2], simulations=bank)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script: Path, out: Path, world: int, *extra: str) -> list[subprocess.CompletedProcess]:
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                   LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                   OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen(
            [sys.executable, str(script), str(out), *extra], env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ))
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    return results


def _single_process(script: Path, out: Path, **kwargs) -> dict:
    runpy.run_path(str(script), run_name="single")["train"](str(out), **kwargs)
    return torch.load(out)


def _assert_same_training(one: dict, two: dict) -> None:
    assert one["params"].keys() == two["params"].keys()
    for k in one["params"]:
        torch.testing.assert_close(two["params"][k], one["params"][k], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(torch.tensor(two["loss"]), torch.tensor(one["loss"]),
                               rtol=1e-9, atol=1e-9)


def test_two_gloo_processes_match_one_process(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    one = _single_process(script, tmp_path / "one.pt")
    results = _launch(script, tmp_path / "two.pt", 2, "forward")
    two = torch.load(tmp_path / "two.pt")
    _assert_same_training(one, two)
    assert len(one["loss"]) == 6 and len(one["val"]) == 2
    torch.testing.assert_close(torch.tensor(two["val"]), torch.tensor(one["val"]))
    # only rank 0 reports progress
    assert "fit: step" in results[0].stderr and "fit: step" not in results[1].stderr


@pytest.mark.slow
def test_streamed_bank_and_resume_under_two_processes(tmp_path):
    import pyro_kr

    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    namespace = runpy.run_path(str(script), run_name="single")
    bank = pyro_kr.simulate(namespace["model"], 200, observed="y", chunk_size=64,
                            path=tmp_path / "bank")
    one = _single_process(script, tmp_path / "one.pt", simulations=bank)
    _launch(script, tmp_path / "two.pt", 2, "forward", str(tmp_path / "bank"))
    _assert_same_training(one, torch.load(tmp_path / "two.pt"))
    # resume: 4 steps with a checkpoint, then continue to 6 == 6 uninterrupted steps
    ckpt = tmp_path / "ckpt.pt"
    namespace["train"](str(tmp_path / "a.pt"), steps=4, checkpoint=str(ckpt), simulations=bank)
    namespace["train"](str(tmp_path / "b.pt"), steps=6, checkpoint=str(ckpt), simulations=bank)
    _assert_same_training(one, torch.load(tmp_path / "b.pt"))


@pytest.mark.slow
def test_torchrun_reverse_mode_runs(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    out = tmp_path / "rev.pt"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--master_port", str(_free_port()), str(script), str(out), "reverse"],
        env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loss = torch.load(out)["loss"]
    assert len(loss) == 6 and all(torch.isfinite(torch.tensor(loss)))


def test_each_rank_takes_its_share_of_the_global_batch(monkeypatch, tmp_path):
    import pyro_kr
    from pyro_kr import distributed
    from pyro_kr.simulation.stream import ShardStream

    index = torch.arange(8)
    assert torch.equal(distributed.shard(index), index)  # no launch: the whole batch
    bank = pyro_kr.simulate(_model, 50, observed="y", chunk_size=16, path=tmp_path)
    whole = ShardStream(bank, batch_size=12, validation_fraction=0.1, seed=0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    shares = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        assert torch.equal(distributed.shard(index), index[4 * rank:4 * rank + 4])
        stream = ShardStream(bank, batch_size=12, validation_fraction=0.1, seed=0)
        shares.append([stream.batch(t)[0]["z"] for t in range(6)])
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    for t in range(6):  # 6 x 12 > 45 training pairs: crosses an epoch
        torch.testing.assert_close(torch.cat([shares[0][t], shares[1][t]]),
                                   whole.batch(t)[0]["z"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="divisible"):
        monkeypatch.setenv("WORLD_SIZE", "2")
        distributed.shard(torch.arange(7))


def test_stream_epochs_visit_every_training_pair_once(tmp_path):
    import pyro_kr
    from pyro_kr.simulation.stream import ShardStream

    bank = pyro_kr.simulate(_model, 50, observed="y", chunk_size=16, path=tmp_path)
    stream = ShardStream(bank, batch_size=4, validation_fraction=0.1, seed=3)
    assert (stream.num_train, stream.num_validation) == (44, 6)  # round(0.1 * 16) per shard
    seen = torch.cat([stream.batch(t)[0]["z"] for t in range(11)])
    val = stream.validation()[0]["z"]
    every = torch.cat([seen, val])
    # the training pairs of one epoch plus the validation pairs are the bank, each once
    assert torch.equal(torch.sort(every[:, 0]).values, torch.sort(bank.latents["z"][:, 0]).values)


def _model(y=None):
    import pyro
    import pyro.distributions as dist

    z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))
    return pyro.sample("y", dist.Normal(z, 0.5).to_event(1), obs=y)
