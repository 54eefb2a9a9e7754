"""fit_amortized(mode="hybrid"): forward KL on simulations, then reverse KL with the likelihood."""

from __future__ import annotations

import pyro
import pytest
import torch
from _amortized_models import exact_posterior, linear_gaussian

from pyro_kr import AmortizedKR, fit_amortized


def _unseen(n: int, seed: int) -> torch.Tensor:
    pyro.set_rng_seed(seed)
    return torch.stack([pyro.poutine.uncondition(linear_gaussian)() for _ in range(n)])


def test_hybrid_recovers_the_exact_linear_gaussian_posterior_with_default_settings():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    # a linear conditioner (hidden_dims=()) puts the exact posterior map in the family; the
    # training settings are fit_amortized's defaults
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine", hidden_dims=())
    history = fit_amortized(linear_gaussian, guide, mode="hybrid", steps=1000,
                            num_simulations=4000, progress=False)
    assert history.mode == "hybrid"
    assert history.forward_steps is not None and history.forward_steps <= 1000
    assert history.steps == history.forward_steps + 500  # reverse_steps = steps // 2
    assert history.simulations == 4000 + 500 * 128
    assert history.model_evaluations == 500 * 128
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


def test_hybrid_arguments_are_checked():
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine")
    with pytest.raises(ValueError, match="belong to mode='hybrid'"):
        fit_amortized(linear_gaussian, guide, mode="reverse", steps=2, reverse_steps=3)
    with pytest.raises(ValueError, match="need num_simulations"):
        fit_amortized(linear_gaussian, guide, mode="hybrid", steps=2, progress=False)
    with pytest.raises(ValueError, match="does not checkpoint"):
        fit_amortized(linear_gaussian, guide, mode="hybrid", steps=2, num_simulations=20,
                      checkpoint="x.pt", progress=False)
    with pytest.raises(ValueError, match="reverse_steps"):
        fit_amortized(linear_gaussian, guide, mode="hybrid", steps=2, num_simulations=20,
                      reverse_steps=0, progress=False)
    with pytest.raises(ValueError, match="reverse_batch_size belong to mode='hybrid'"):
        fit_amortized(linear_gaussian, guide, mode="reverse", steps=2, reverse_batch_size=4)
    with pytest.raises(ValueError, match="reverse_batch_size must be >= 1"):
        fit_amortized(linear_gaussian, guide, mode="hybrid", steps=2, num_simulations=20,
                      reverse_batch_size=0, progress=False)


def test_hybrid_reverse_batch_size_sets_the_refinement_batch_and_its_counts():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine", hidden_dims=())
    history = fit_amortized(linear_gaussian, guide, mode="hybrid", steps=20, batch_size=64,
                            num_simulations=400, objective="rws", reverse_steps=3,
                            reverse_batch_size=4, progress=False)
    assert history.steps == history.forward_steps + 3
    assert history.simulations == 400 + 3 * 4  # not 3 * 64: the refinement's own batch
    assert history.model_evaluations == 3 * 4 * 8


@pytest.mark.slow
def test_hybrid_rws_refinement_with_its_own_batch_recovers_the_exact_posterior():
    # the calibrated refinement as one call: forward at batch 128, then objective="rws"
    # (8 particles) + forward_weight=1 on 16 datasets per step
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine", hidden_dims=())
    history = fit_amortized(linear_gaussian, guide, mode="hybrid", steps=1000,
                            num_simulations=4000, objective="rws", forward_weight=1.0,
                            reverse_steps=500, reverse_batch_size=16, progress=False)
    assert history.steps == history.forward_steps + 500
    assert history.simulations == 4000 + 500 * 16  # the reverse phase's fresh y
    assert history.model_evaluations == 500 * 16 * 8
    ys = _unseen(10, seed=123)
    mean, chol = exact_posterior(ys)
    cov = chol @ chol.T
    torch.manual_seed(1)
    with torch.no_grad():
        draws = guide.posterior(ys).sample((20_000,))
    centred = draws - draws.mean(0)
    q_cov = torch.einsum("nbi,nbj->bij", centred, centred) / (len(draws) - 1)
    assert (draws.mean(0) - mean).abs().max() < 0.05
    assert (q_cov - cov).abs().max() < 0.1 * cov.abs().max()
