"""``AutoKR(order="auto")``, the default, and :func:`pyro_kr.guides.order.auto_order`."""

import logging

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_kr
from pyro_kr.bench import problems
from pyro_kr.guides import order as order_module
from pyro_kr.guides.order import MAX_SITES, OrderUndecided, auto_order, non_gaussianity


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
    with pytest.raises(ValueError, match="'auto' or 'model'"):
        pyro_kr.AutoKR(centered, order="automatic")


def _banana_guide(**options):
    problem = problems.get("banana")
    y = problem.observation(0)
    pyro.clear_param_store()
    guide = pyro_kr.AutoKR(problem.model, **options)
    guide.sample_posterior(2, y=y)  # sets the guide up
    return guide, problem


def test_default_order_is_auto_and_picks_the_structure_order_on_banana():
    guide, problem = _banana_guide()
    # the model samples theta1 first; theta2 | theta1 is bimodal, theta1 | theta2 Gaussian
    assert list(problem.kr_order) == ["theta2", "theta1"]
    assert guide.order == ["theta2", "theta1"]
    assert guide.order_choice == "auto"


@pytest.mark.parametrize("spelling", ["model", None])
def test_order_model_keeps_the_model_order(spelling):
    guide, _ = _banana_guide(order=spelling)
    assert guide.order == ["theta1", "theta2"]
    assert guide.order_choice == "model"
    given, _ = _banana_guide(order=["theta1"])
    assert given.order == ["theta1", "theta2"] and given.order_choice == "given"


def test_marginal_follows_the_chosen_order():
    guide, _ = _banana_guide()
    assert guide.marginal("theta2", 3)["theta2"].shape == (3,)
    with pytest.raises(ValueError, match="lead the KR order"):
        guide.marginal("theta1", 3)  # exact marginals are those of the chosen order's head


def test_auto_order_is_deterministic_whatever_the_global_seed():
    problem = problems.get("eight_schools")
    y = problem.observation(0)
    orders = []
    for seed in (0, 1, 2):
        pyro.set_rng_seed(seed)
        orders.append(auto_order(problem.model, (), {"y": y}))
    assert orders[0] == orders[1] == orders[2]
    assert orders[0][0] == "tau"


def _many_sites(n):
    def model():
        total = 0.0
        for i in range(n):
            total = total + pyro.sample(f"z{i}", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(total, 1.0), obs=torch.tensor(0.5))

    return model


def test_too_many_sites_keeps_the_model_order_and_logs_why(caplog):
    model = _many_sites(MAX_SITES + 1)
    with pytest.raises(OrderUndecided, match="MAX_SITES"):
        auto_order(model)
    pyro.clear_param_store()
    guide = pyro_kr.AutoKR(model, map="affine")
    with caplog.at_level(logging.INFO, logger="pyro_kr.guides.packing"):
        guide()
    assert guide.order == [f"z{i}" for i in range(MAX_SITES + 1)]
    assert guide.order_choice.startswith("model (order='auto' could not decide")
    assert f"the model has {MAX_SITES + 1}" in caplog.text and "model's order" in caplog.text


def test_untraceable_dependencies_keep_the_model_order_with_a_warning(caplog, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("provenance lost")

    monkeypatch.setattr(order_module, "get_dependencies", fail)
    pyro.clear_param_store()
    guide = pyro_kr.AutoKR(locals_first, map="affine")
    with caplog.at_level(logging.WARNING, logger="pyro_kr.guides.packing"):
        guide(Y)
    assert guide.order == ["raw", "mu", "tau"]
    assert "could not trace the model's dependencies (RuntimeError: provenance lost)" in (
        caplog.text
    )
    assert "could not trace" in guide.order_choice


def test_structure_plates_puts_globals_first_after_auto():
    # auto gives [tau, raw, mu]; the sparse map needs the globals first: [tau, mu, raw]
    pyro.clear_param_store()
    guide = pyro_kr.AutoKR(locals_first, structure="plates")
    guide(Y)
    assert guide.order == ["tau", "mu", "raw"]
    assert guide.order_choice == "auto, then the global sites first (structure='plates')"
    assert guide.structure_plan is not None

