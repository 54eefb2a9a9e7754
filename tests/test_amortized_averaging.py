"""fit_amortized(average_from=...): tail averages of the parameters, per phase."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from _amortized_models import linear_gaussian, linear_gaussian_errors

from pyro_kr import AmortizedKR, fit_amortized
from pyro_kr.checkpoint import snapshot_params


def _guide():
    return AmortizedKR(linear_gaussian, observed="y", map="affine", hidden_dims=(),
                       embedding_dim=4, embedding_hidden=(8,))


def _run(record: list | None = None, seed: int = 0, **kw):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = _guide()
    cb = None if record is None else (lambda step, rec: record.append(snapshot_params()))
    history = fit_amortized(linear_gaussian, guide, progress=False, callback=cb, **kw)
    return history, snapshot_params()


def _mean(snapshots: list[dict]) -> dict:
    return {k: torch.stack([s[k] for s in snapshots]).mean(0) for k in snapshots[0]}


def _close(a: dict, b: dict, **tol) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol)


def test_default_is_the_path_of_before_bit_for_bit():
    kw = dict(mode="reverse", steps=6, batch_size=16)
    h0, p0 = _run(**kw)
    h1, p1 = _run(average_from=None, **kw)
    assert h0.loss == h1.loss and h1.average_starts == [] and h1.averaged_steps == []
    for k in p0:
        assert torch.equal(p0[k], p1[k])


def test_reverse_tail_average_is_the_mean_of_the_last_iterates():
    seen: list[dict] = []
    h_plain, _ = _run(mode="reverse", steps=10, batch_size=16)
    h, params = _run(seen, mode="reverse", steps=10, batch_size=16, average_from=0.6)
    assert h.loss == h_plain.loss  # averaging does not touch the trajectory or the RNG
    assert h.average_starts == [6] and h.averaged_steps == [4]
    _close(params, _mean(seen[6:]), rtol=1e-12, atol=1e-12)
    h, params = _run(seen := [], mode="reverse", steps=10, batch_size=16, average_from=8)
    assert h.average_starts == [8] and h.averaged_steps == [2]
    _close(params, _mean(seen[8:]), rtol=1e-12, atol=1e-12)


def test_warmup_and_refinement_are_averaged_separately():
    seen: list[dict] = []
    kw = dict(mode="reverse", warmup_steps=8, warmup_batch_size=16, steps=4, batch_size=8)
    h_plain, _ = _run(**kw)
    h, params = _run(seen, average_from=0.5, **kw)
    assert h.average_starts == [4, 2] and h.averaged_steps == [4, 2]
    assert h.loss[:8] == h_plain.loss[:8]  # the warm-up runs as before
    assert h.loss[8] != h_plain.loss[8]  # the refinement starts from the warm-up's average
    _close(params, _mean(seen[10:]), rtol=1e-12, atol=1e-12)  # the refinement's last 2


def test_refinement_starts_from_the_warmup_average():
    # a refinement that cannot move (lr 1e-12) ends at the warm-up's tail average
    seen: list[dict] = []
    _, params = _run(seen, mode="reverse", warmup_steps=8, warmup_batch_size=16, steps=2,
                     batch_size=8, lr=1e-12, average_from=0.5)
    _close(params, _mean(seen[4:8]), rtol=0, atol=1e-9)


def test_forward_tail_average_replaces_the_best_check():
    seen: list[dict] = []
    kw = dict(mode="forward", steps=30, num_simulations=400, batch_size=32, validate_every=10,
              patience=50, min_patience_steps=0, plateau_factor=None)
    h, params = _run(seen, average_from=0.5, **kw)
    assert h.steps == 30 and h.average_starts == [15] and h.averaged_steps == [15]
    _close(params, _mean(seen[15:]), rtol=1e-12, atol=1e-12)
    assert math.isfinite(h.average_val_loss)  # the validation NLL of the average
    h0, p0 = _run(**kw)  # without: the best check is kept, no average recorded
    assert h0.average_val_loss is None and h0.loss == h.loss


def test_forward_stopped_before_the_average_warns_and_keeps_the_best_check():
    kw = dict(mode="forward", steps=400, num_simulations=300, batch_size=32, lr=0.5,
              validate_every=2, patience=1, min_patience_steps=0)
    with pytest.warns(RuntimeWarning, match="before its tail average starts"):
        h, params = _run(average_from=0.99, **kw)
    assert h.stopped_early and h.averaged_steps == [0]
    _, p0 = _run(**kw)
    _close(params, p0, rtol=0, atol=0)


def test_hybrid_averages_both_phases():
    h, _ = _run(mode="hybrid", steps=20, num_simulations=300, batch_size=32,
                validate_every=10, patience=50, min_patience_steps=0, reverse_steps=4,
                average_from=0.5)
    assert h.average_starts == [10, 2] and h.averaged_steps == [10, 2]
    assert h.average_val_loss is not None


@pytest.mark.parametrize("kw, match", [
    (dict(mode="reverse", steps=10, average_from=1.0), "average_from"),
    (dict(mode="reverse", steps=10, average_from=0.0), "average_from"),
    (dict(mode="reverse", steps=10, average_from=10), "average_from"),
    (dict(mode="reverse", steps=10, average_from=True), "average_from"),
    (dict(mode="reverse", steps=10, average_from="half"), "average_from"),
    (dict(mode="reverse", steps=10, warmup_steps=5, average_from=3), "float"),
    (dict(mode="hybrid", steps=10, num_simulations=100, average_from=3), "float"),
    (dict(mode="forward", num_simulations=100, average_from=0.5), "steps="),
    (dict(mode="forward", steps=10, num_simulations=100, average_from=0.5, ema_decay=0.9),
     "ema_decay"),
    (dict(mode="reverse", steps=10, average_from=0.5, checkpoint="x.pt"), "checkpoint"),
])
def test_bad_average_from(kw, match):
    pyro.clear_param_store()
    with pytest.raises(ValueError, match=match):
        fit_amortized(linear_gaussian, _guide(), progress=False, **kw)


def test_averaged_reverse_defaults_recover_the_exact_linear_gaussian_posterior():
    # every setting is reverse mode's default (1,000 steps, batch 128, Adam at a constant
    # lr 1e-2, the default annealing) except the tail average of the last quarter; the
    # affine family with a linear conditioner contains the exact posterior map. The last
    # iterate of this seed misses (mean error 0.095, cov error 0.38: the constant lr's noise)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine", hidden_dims=())
    history = fit_amortized(linear_gaussian, guide, mode="reverse", progress=False,
                            average_from=0.75)
    assert history.averaged_steps == [250]
    mean_error, cov_error = linear_gaussian_errors(guide)
    assert mean_error < 0.05 and cov_error < 0.1


def test_example_flag_runs_under_smoke(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "lotka_volterra_amortized.py"
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(script), "--smoke", "--mode", "reverse", "--calibrated",
         "--warmup-steps", "5", "--average-from", "0.5"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "tail averages swapped in: [3, 3] iterates" in result.stdout
