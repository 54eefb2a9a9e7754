"""fit_amortized(mode="hybrid"): forward KL on simulations, then reverse KL with the likelihood."""

from __future__ import annotations

import pyro
import pytest
from _amortized_models import linear_gaussian, linear_gaussian_errors

from pyro_kr import AmortizedKR, fit_amortized


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
    mean_error, cov_error = linear_gaussian_errors(guide)  # Monte Carlo sd of the mean 0.004
    assert mean_error < 0.05 and cov_error < 0.1


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
    mean_error, cov_error = linear_gaussian_errors(guide)
    assert mean_error < 0.05 and cov_error < 0.1
