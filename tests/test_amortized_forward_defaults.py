"""fit_amortized(mode="forward") with its defaults: steps from the bank size, plateau lr cuts."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from _amortized_models import SIGMA, A, exact_posterior, linear_gaussian

from pyro_kr import AmortizedKR, fit_amortized


def _unseen(n: int, seed: int) -> torch.Tensor:
    pyro.set_rng_seed(seed)
    return torch.stack([pyro.poutine.uncondition(linear_gaussian)() for _ in range(n)])


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
    ys = _unseen(10, seed=123)
    mean, chol = exact_posterior(ys)
    cov = chol @ chol.T
    torch.manual_seed(1)
    with torch.no_grad():
        draws = guide.posterior(ys).sample((20_000,))  # (n, 10, 2)
    q_mean = draws.mean(0)
    centred = draws - q_mean
    q_cov = torch.einsum("nbi,nbj->bij", centred, centred) / (len(draws) - 1)
    # Monte Carlo error of the mean: sd <= 0.6 / sqrt(20,000) = 0.004
    assert (q_mean - mean).abs().max() < 0.05
    assert (q_cov - cov).abs().max() < 0.1 * cov.abs().max()


def test_plateau_cuts_the_learning_rate_of_a_given_optimizer():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine")
    optim = pyro.optim.Adam({"lr": 0.05})  # too large: the validation loss stalls quickly
    history = fit_amortized(linear_gaussian, guide, mode="forward", steps=300, optim=optim,
                            num_simulations=400, batch_size=32, validate_every=5, patience=8,
                            progress=False)
    assert history.lr_cuts and set(history.lr_cuts) <= set(history.val_step)
    lrs = {g["lr"] for opt in optim.optim_objs.values() for g in opt.param_groups}
    assert lrs == {0.05 * 0.5 ** len(history.lr_cuts)}
    pyro.clear_param_store()
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine")
    optim = pyro.optim.Adam({"lr": 0.05})
    history = fit_amortized(linear_gaussian, guide, mode="forward", steps=300, optim=optim,
                            num_simulations=400, batch_size=32, validate_every=5, patience=8,
                            plateau_factor=None, progress=False)
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
