"""fit_amortized(forward_weight=w): reverse KL plus the forward NLL of the step's own pairs."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from _amortized_models import linear_gaussian, linear_gaussian_errors
from torch import nn

from pyro_kr import AmortizedKR, fit_amortized
from pyro_kr.amortized import ForwardAnchoredLoss


def scalar_model(y=None):
    """``z ~ N(0, 1)``, ``y ~ N(z, 1)``: posterior variance 1/2, posterior mean ``y / 2``."""
    z = pyro.sample("z", dist.Normal(torch.zeros(1, dtype=torch.float64), 1.0).to_event(1))
    return pyro.sample("y", dist.Normal(z, 1.0).to_event(1), obs=y)


class Blind(nn.Module):
    """An embedding that ignores ``y``: the network cannot place ``q`` at all."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return torch.zeros(y.shape[:-1] + (1,), dtype=y.dtype)


def _blind_variance(weight: float) -> float:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AmortizedKR(scalar_model, observed="y", map="affine", embedding=Blind())
    steps = 800
    optim = pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.01 ** (1 / steps)})
    fit_amortized(scalar_model, guide, mode="reverse", steps=steps, batch_size=256,
                  schedule=None, optim=optim, forward_weight=weight, progress=False)
    with torch.no_grad():
        torch.manual_seed(1)
        draws = guide.posterior(torch.zeros(1, dtype=torch.float64)).sample((200_000,))
    return float(draws.var())


@pytest.mark.parametrize(
    ("weight", "expected"),
    [(0.0, 0.5), (1.0, math.sqrt(0.5)), (9.0, None)],
)
def test_anchor_widens_a_blind_guide_as_the_gaussian_formula_says(weight, expected):
    # q cannot depend on y: reverse KL gives the posterior variance s^2 = 1/2 (confidently wrong
    # for every y), forward KL the prior's 1 = s^2 + Var(E[z|y]) (calibrated). The anchored
    # optimum solves t^4 / s^2 + (w - 1) t^2 = w (s^2 + delta^2) with s^2 + delta^2 = 1.
    if expected is None:  # w = 9: t^2 = s^2 (-(w-1) + sqrt((w-1)^2 + 4w/s^2)) / 2
        s2 = 0.5
        expected = s2 * (-(weight - 1) + math.sqrt((weight - 1) ** 2 + 4 * weight / s2)) / 2
    assert abs(_blind_variance(weight) - expected) < 0.04 * expected


def test_anchored_reverse_recovers_the_exact_linear_gaussian_posterior():
    # the exact posterior map is in the family, so both terms share the optimum: the anchor
    # must not bias a guide that the network can place exactly
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine", hidden_dims=(),
                        embedding_dim=8, embedding_hidden=(16,))
    steps = 1000
    optim = pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.01 ** (1 / steps)})
    history = fit_amortized(linear_gaussian, guide, mode="reverse", steps=steps,
                            batch_size=128, schedule=None, optim=optim, forward_weight=1.0,
                            progress=False)
    assert history.model_evaluations == steps * 128  # the anchor evaluates no model density
    mean_error, cov_error = linear_gaussian_errors(guide)
    assert mean_error < 0.05 and cov_error < 0.1


def test_anchor_arguments_are_checked():
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine")
    with pytest.raises(ValueError, match="forward_weight must be a number >= 0"):
        fit_amortized(linear_gaussian, guide, mode="reverse", steps=2, forward_weight=-1.0,
                      progress=False)
    with pytest.raises(ValueError, match="leave forward_weight at 0"):
        fit_amortized(linear_gaussian, guide, mode="forward", steps=2, num_simulations=20,
                      forward_weight=1.0, progress=False)
    with pytest.raises(ValueError, match="forward_weight must be >= 0"):
        ForwardAnchoredLoss(pyro.infer.Trace_ELBO(), guide, dict, -0.5)


def test_anchor_records_the_forward_nll():
    pyro.clear_param_store()
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine")
    seen = []
    fit_amortized(linear_gaussian, guide, mode="reverse", steps=3, batch_size=8,
                  forward_weight=0.5, progress=False,
                  callback=lambda step, record: seen.append(record))
    assert len(seen) == 3 and all(math.isfinite(r["forward_nll"]) for r in seen)


def test_rws_recovers_the_exact_linear_gaussian_posterior():
    # the wake-phase update's fixed point is the exact posterior when the family contains it
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine", hidden_dims=(),
                        embedding_dim=8, embedding_hidden=(16,), init_scale=1.0)
    steps = 1000
    optim = pyro.optim.ClippedAdam({"lr": 0.02, "lrd": 0.01 ** (1 / steps)})
    history = fit_amortized(linear_gaussian, guide, mode="reverse", objective="rws",
                            steps=steps, batch_size=32, schedule=None, optim=optim,
                            progress=False)
    assert history.model_evaluations == steps * 32 * 8  # 8 particles by default
    mean_error, cov_error = linear_gaussian_errors(guide)
    assert mean_error < 0.05 and cov_error < 0.1


def test_rws_needs_several_particles():
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine")
    with pytest.raises(ValueError, match="num_particles must be >= 2"):
        fit_amortized(linear_gaussian, guide, mode="reverse", objective="rws",
                      num_particles=1, steps=2, progress=False)


def test_hybrid_passes_the_anchor_and_rws_to_its_reverse_phase():
    pyro.clear_param_store()
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine")
    seen = []
    history = fit_amortized(linear_gaussian, guide, mode="hybrid", steps=4, reverse_steps=3,
                            num_simulations=40, validate_every=2, batch_size=8,
                            objective="rws", num_particles=2, forward_weight=1.0,
                            progress=False, callback=lambda step, record: seen.append(record))
    reverse = seen[history.forward_steps:]
    assert len(reverse) == 3 and all("forward_nll" in r and "ess" in r for r in reverse)
    assert history.model_evaluations == 3 * 8 * 2
