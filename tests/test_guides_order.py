"""``AutoKR(order="auto")`` and :func:`pyro_kr.guides.order.auto_order` (issue 18)."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_kr
from pyro_kr.bench import problems
from pyro_kr.guides.order import auto_order, non_gaussianity


def centered(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("groups", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def locals_first(y):
    """The model samples the local offsets before the global scale and mean."""
    with pyro.plate("groups", len(y)):
        raw = pyro.sample("raw", dist.Normal(0.0, 1.0))
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.LogNormal(0.0, 1.0))
    with pyro.plate("groups2", len(y)):
        pyro.sample("y", dist.Normal(mu + tau * raw, 1.0), obs=y)


Y = torch.tensor([2.0, -1.0, 0.5, 3.0])


def test_hierarchical_scale_and_global_before_locals():
    assert auto_order(centered, (Y,)) == ["tau", "mu", "theta"]


def test_scale_moves_ahead_of_locals_sampled_first():
    # no prior dependency binds raw, mu, tau: the non-Gaussian scale leads, then model order
    assert auto_order(locals_first, (Y,)) == ["tau", "raw", "mu"]


def test_banana_matches_the_structure_order():
    problem = problems.get("banana")
    y = problem.observation(0)
    assert auto_order(problem.model, (), {"y": y}) == list(problem.kr_order)
    scores = non_gaussianity(problem.model, (), {"y": y})
    assert scores["theta1"] < 1e-6 and scores["theta2"] > 1.0  # theta1 | theta2 is Gaussian


def test_funnel_scale_first():
    problem = problems.get("funnel")
    assert auto_order(problem.model, (), {"y": problem.observation(0)})[0] == "v"


def test_autokr_order_auto_uses_it_and_keeps_the_rng_stream():
    problem = problems.get("banana")
    y = problem.observation(0)
    values = []
    for order in ("auto", list(problem.kr_order)):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        guide = pyro_kr.AutoKR(problem.model, order=order)
        draws = guide.sample_posterior(5, y=y)
        assert guide.order == list(problem.kr_order)
        values.append(draws["theta2"])
    torch.testing.assert_close(values[0], values[1])  # same map and draws as the hand order


def test_bad_order_string_is_refused():
    with pytest.raises(ValueError, match="'auto'"):
        pyro_kr.AutoKR(centered, order="automatic")

