"""fit_amortized(mode="forward") with its defaults: steps from the bank size, plateau lr cuts."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from _amortized_models import SIGMA, A, linear_gaussian, linear_gaussian_errors

from pyro_kr import AmortizedKR, fit_amortized


def test_forward_mode_with_default_settings_recovers_the_exact_linear_gaussian_posterior():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    # a linear conditioner (hidden_dims=()) puts the exact posterior map in the family; every
    # training setting is fit_amortized's default (steps, lr, validation, stopping, plateaus)
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine", hidden_dims=())
    history = fit_amortized(linear_gaussian, guide, mode="forward", num_simulations=10_000,
                            progress=False)
    epoch = math.ceil(9_000 / 128)  # 10 % validation, batch 128: checks once per epoch
    assert history.val_step[0] == epoch and history.steps < 500 * epoch
    assert history.stopped_early and history.lr_cuts  # it ran into plateaus and stopped
    assert history.best_step in history.val_step
    mean_error, cov_error = linear_gaussian_errors(guide)  # Monte Carlo sd of the mean 0.004
    assert mean_error < 0.05 and cov_error < 0.1


def test_plateau_cuts_the_learning_rate_of_a_given_optimizer():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine")
    optim = pyro.optim.Adam({"lr": 0.05})  # too large: the validation loss stalls quickly
    history = fit_amortized(linear_gaussian, guide, mode="forward", steps=300, optim=optim,
                            num_simulations=400, batch_size=32, validate_every=5, patience=8,
                            min_patience_steps=0, progress=False)
    assert history.lr_cuts and set(history.lr_cuts) <= set(history.val_step)
    lrs = {g["lr"] for opt in optim.optim_objs.values() for g in opt.param_groups}
    assert lrs == {0.05 * 0.5 ** len(history.lr_cuts)}
    pyro.clear_param_store()
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine")
    optim = pyro.optim.Adam({"lr": 0.05})
    history = fit_amortized(linear_gaussian, guide, mode="forward", steps=300, optim=optim,
                            num_simulations=400, batch_size=32, validate_every=5, patience=8,
                            min_patience_steps=0, plateau_factor=None, progress=False)
    assert history.lr_cuts == []
    assert {g["lr"] for opt in optim.optim_objs.values() for g in opt.param_groups} == {0.05}


def test_forward_default_arguments_are_checked():
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine")
    with pytest.raises(ValueError, match="plateau_factor must lie in"):
        fit_amortized(linear_gaussian, guide, mode="forward", num_simulations=20,
                      plateau_factor=1.5, progress=False)
    with pytest.raises(ValueError, match="steps"):
        fit_amortized(linear_gaussian, guide, mode="forward", num_simulations=20, steps=0,
                      progress=False)


def _bank(n: int, seed: int) -> dict[str, torch.Tensor]:
    pyro.set_rng_seed(seed)
    z = torch.randn(n, 2, dtype=torch.float64)
    return {"z": z, "y": z @ A.T + SIGMA * torch.randn(n, 3, dtype=torch.float64)}


def test_ema_decay_keeps_the_best_averaged_parameters():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    bank = _bank(400, seed=3)
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine", hidden_dims=())
    history = fit_amortized(linear_gaussian, guide, mode="forward", simulations=bank,
                            steps=150, batch_size=32, validate_every=10, ema_decay=0.9,
                            seed=5, progress=False)
    # the validation split of fit_amortized (seeded permutation, 10 % held out)
    val = torch.randperm(400, generator=torch.Generator().manual_seed(5))[:40]
    with torch.no_grad():
        kept = -guide.log_prob(bank["z"][val], {"y": bank["y"][val]}).mean()
    # the parameters left in the guide are the averaged ones of the best check, not the
    # last step's (those score differently: the average lags the steps)
    assert float(kept) == pytest.approx(min(history.val_loss), abs=1e-6)
    assert history.best_step == history.val_step[history.val_loss.index(min(history.val_loss))]


def test_ema_and_weight_decay_arguments_are_checked():
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine")
    for bad in (1.0, 0.0, True, "0.9"):
        with pytest.raises(ValueError, match="ema_decay must be a float in"):
            fit_amortized(linear_gaussian, guide, mode="forward", num_simulations=20,
                          ema_decay=bad, progress=False)
    with pytest.raises(ValueError, match="weight_decay must be a number >= 0"):
        fit_amortized(linear_gaussian, guide, mode="forward", num_simulations=20,
                      weight_decay=-1e-3, progress=False)
    with pytest.raises(ValueError, match="set the weight decay in that optimizer"):
        fit_amortized(linear_gaussian, guide, mode="forward", num_simulations=20,
                      weight_decay=1e-3, optim=pyro.optim.Adam({"lr": 1e-3}), progress=False)
    with pytest.raises(ValueError, match="belong to the forward phase"):
        fit_amortized(linear_gaussian, guide, mode="reverse", steps=2, ema_decay=0.9,
                      progress=False)


def _replay(history, every: int, cut_after: int,
            stop_after_cuts: int | None = 3) -> tuple[list[int], int]:
    """The lr cuts and the stopping step that the smoothed-validation rule implies, plus the
    stop after ``stop_after_cuts`` cuts since the best single check."""
    smooth, best, bad, since, cuts = None, math.inf, 0, 0, []
    raw_best, cuts_since_best = math.inf, 0
    for step, value in zip(history.val_step, history.val_loss, strict=True):
        if value < raw_best:
            raw_best, cuts_since_best = value, 0
        smooth = value if smooth is None else 0.3 * value + 0.7 * smooth
        if smooth < best:
            best, bad, since = smooth, 0, 0
            continue
        bad, since = bad + 1, since + 1
        if since >= cut_after:
            cuts.append(step)
            since, cuts_since_best = 0, cuts_since_best + 1
        if stop_after_cuts is not None and cuts_since_best >= stop_after_cuts:
            return cuts, step
        if bad >= history.patience_checks:
            return cuts, step
    return cuts, -1


def test_small_bank_patience_covers_min_patience_steps():
    # 1,000 pairs, 10 % validation, batch 256: a check every ceil(900 / 256) = 4 steps, so the
    # default floor of 400 steps raises patience 20 to 100 checks (lr cut after 25 checks)
    bank = _bank(1_000, seed=4)
    runs = {}
    for floor in (400, 0):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AmortizedKR(linear_gaussian, observed="y", map="affine", hidden_dims=())
        kwargs = {"stop_after_cuts": None} if floor == 400 else {"min_patience_steps": 0,
                                                                 "stop_after_cuts": None}
        runs[floor] = fit_amortized(linear_gaussian, guide, mode="forward", simulations=bank,
                                    batch_size=256, lr=0.05, seed=1, progress=False, **kwargs)
    assert runs[400].val_step[0] == runs[0].val_step[0] == 4
    assert runs[400].patience_checks == 100 and runs[0].patience_checks == 20
    for h, cut_after in ((runs[400], 25), (runs[0], 5)):
        assert h.lr_cuts  # a large lr: it plateaus and is cut
        # the cuts and the stop follow the patience in checks: cut after p // 4 checks without
        # improvement of the smoothed loss, stop after p (here 400 steps with the floor)
        cuts, stop = _replay(h, every=4, cut_after=cut_after, stop_after_cuts=None)
        assert h.lr_cuts == cuts
        # whether the run with the floor goes 100 checks without improvement before the step
        # limit depends on the float rounding of its jumpy trajectory (lr 0.05: it stops on
        # some CPUs, runs to the limit on others); either way the rule decides it
        assert h.stopped_early == (stop != -1)
        if h.stopped_early:
            assert h.steps == stop
    assert runs[0].stopped_early and runs[400].steps > runs[0].steps


@pytest.mark.filterwarnings("ignore:the guide misses part")  # 2 reverse steps only
def test_hybrid_forward_phase_uses_the_patience_floor():
    # 200 pairs, batch 32: 180 training pairs, a check every ceil(180 / 32) = 6 steps, so the
    # floor of 400 steps is ceil(400 / 6) = 67 checks; min_patience_steps=0 leaves 20
    bank = _bank(200, seed=6)
    for floor, expected in ((None, 67), (0, 20), (30, 20)):
        pyro.clear_param_store()
        guide = AmortizedKR(linear_gaussian, observed="y", map="affine", hidden_dims=())
        kwargs = {} if floor is None else {"min_patience_steps": floor}
        history = fit_amortized(linear_gaussian, guide, mode="hybrid", simulations=bank,
                                steps=12, reverse_steps=2, batch_size=32, progress=False,
                                **kwargs)
        assert history.val_step[0] == 6 and history.patience_checks == expected


def test_min_patience_steps_is_checked():
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine")
    for bad in (-1, 2.5, True, "400"):
        with pytest.raises(ValueError, match="min_patience_steps must be an int >= 0"):
            fit_amortized(linear_gaussian, guide, mode="forward", num_simulations=20,
                          min_patience_steps=bad, progress=False)


def test_stop_after_cuts_ends_the_run_early_with_the_same_kept_parameters():
    # 1,000 pairs, the default optimizer and lr, patience 20 checks: the lr is cut every 5
    # checks without improvement of the smoothed loss. The default stop_after_cuts ("auto":
    # 3 with the default lr) ends the run at the third cut after its best check; without it
    # the patience ends it later. The steps before the stop are the same run, so the same
    # best check is kept, to the bit.
    bank = _bank(1_000, seed=4)
    runs, kept = {}, {}
    for rule in ("auto", None):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AmortizedKR(linear_gaussian, observed="y", map="affine", hidden_dims=())
        kwargs = {} if rule == "auto" else {"stop_after_cuts": None}
        runs[rule] = fit_amortized(linear_gaussian, guide, mode="forward", simulations=bank,
                                   batch_size=256, seed=1, min_patience_steps=0,
                                   progress=False, **kwargs)
        kept[rule] = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    short, long = runs["auto"], runs[None]
    assert short.stop_after_cuts == 3 and long.stop_after_cuts is None
    assert short.stopped_early and long.stopped_early
    assert short.steps < long.steps  # the patience tail after the third cut is skipped
    # the stop is where the replayed rule puts it, on the longer run's own trace
    cuts, stop = _replay(long, every=4, cut_after=5, stop_after_cuts=3)
    assert short.steps == stop and short.lr_cuts == cuts
    assert short.loss == long.loss[: short.steps]
    assert short.val_loss == long.val_loss[: len(short.val_loss)]
    assert sum(c > short.best_step for c in short.lr_cuts) == 3
    # no better check came in the longer run's tail: the same parameters are kept
    assert short.best_step == long.best_step
    for name, value in kept[None].items():
        assert torch.equal(kept["auto"][name], value), name


def test_stop_after_cuts_auto_is_off_with_a_given_learning_rate():
    # lr=0.05 (25x the default): the cuts are what lets this run progress, and a new best
    # comes 3 cuts after the one before; "auto" leaves the patience alone, stop_after_cuts=3
    # forces the rule and keeps a worse check
    bank = _bank(1_000, seed=4)
    runs = {}
    for rule in ("auto", None, 3):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AmortizedKR(linear_gaussian, observed="y", map="affine", hidden_dims=())
        runs[rule] = fit_amortized(linear_gaussian, guide, mode="forward", simulations=bank,
                                   batch_size=256, lr=0.05, seed=1, min_patience_steps=0,
                                   stop_after_cuts=rule, progress=False)
    assert runs["auto"].stop_after_cuts is None and runs[3].stop_after_cuts == 3
    assert runs["auto"].loss == runs[None].loss and runs["auto"].steps == runs[None].steps
    assert runs[3].steps < runs[None].steps
    assert min(runs[3].val_loss) > min(runs[None].val_loss)


def test_stop_after_cuts_is_checked():
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine")
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="stop_after_cuts must be an int >= 1"):
            fit_amortized(linear_gaussian, guide, mode="forward", num_simulations=20,
                          stop_after_cuts=bad, progress=False)
