"""benchmarks/amortized_stop_replay.py replays stop_after_cuts as fit_amortized applies it."""

from __future__ import annotations

import json

import pyro
import torch
from _amortized_models import SIGMA, A, linear_gaussian
from _scripts import load_benchmark

from pyro_kr import AmortizedKR, fit_amortized


def _load():
    return load_benchmark("amortized_stop_replay.py", "amortized_stop_replay_bench")


def _fit(bank, **kwargs):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine", hidden_dims=())
    return fit_amortized(linear_gaussian, guide, mode="forward", simulations=bank,
                         batch_size=256, seed=1, min_patience_steps=0, progress=False,
                         **kwargs)


def test_replay_of_a_patience_run_matches_the_library_rule(tmp_path):
    bench = _load()
    pyro.set_rng_seed(4)
    z = torch.randn(1_000, 2, dtype=torch.float64)
    bank = {"z": z, "y": z @ A.T + SIGMA * torch.randn(1_000, 3, dtype=torch.float64)}
    long = _fit(bank, stop_after_cuts=None)
    for k in (1, 2, 3):
        stop, kept = bench.replay(long.val_step, long.val_loss, long.lr_cuts, k)
        short = _fit(bank, stop_after_cuts=k)
        assert short.steps == (long.steps if stop is None else stop)
        assert short.best_step == kept
    # the script on a stored-results file of one such row
    row = {"method": "forward", "forward_defaults": True, "budget": 1_000, "seed": 0,
           "validation_simulations": 100, "steps": long.steps, "best_step": long.best_step,
           "val_step": long.val_step, "val_loss": long.val_loss, "lr_cuts": long.lr_cuts}
    peers, out = tmp_path / "peers.json", tmp_path / "replay.json"
    peers.write_text(json.dumps({"rows": [row]}))
    result = bench.main(["--peers", str(peers), "--out", str(out), "--k", "3"])
    stop, kept = bench.replay(long.val_step, long.val_loss, long.lr_cuts, 3)
    assert result["rows"][0]["replay"]["3"]["steps"] == (long.steps if stop is None else stop)
    assert json.loads(out.read_text())["summary"]["3"]["runs"] == 1
