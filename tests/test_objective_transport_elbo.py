"""TransportELBO: Trace_ELBO plus ``c_eps / lam`` on the guide's reference draws."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoNormal
from pyro.optim import Adam

from pyro_kr import Annealing, AutoKR, TransportELBO
from pyro_kr.objective import weighted_cost

DT = torch.float64
Y = torch.tensor([0.8, -0.3, 1.1], dtype=DT)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def model(y):
    a = pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=DT), 1.0))
    b = pyro.sample("b", dist.Normal(torch.zeros(2, dtype=DT), 1.0).to_event(1))
    loc = torch.stack([a + b[..., 0], b[..., 0] - b[..., 1], a], -1)
    pyro.sample("y", dist.Normal(loc, 0.5).to_event(1), obs=y)


def _guide(**kwargs):
    guide = AutoKR(model, **kwargs)
    guide(Y)  # set up the parameters
    with torch.no_grad():  # move away from the identity-like initialization
        for p in guide.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return guide


def _grads(guide) -> list[torch.Tensor]:
    return [p.grad.clone() for p in guide.parameters()]


@pytest.mark.parametrize("num_particles", [1, 4])
@pytest.mark.parametrize("schedule", [None, "lam_inf"])
def test_without_a_finite_lam_it_is_exactly_trace_elbo(num_particles, schedule):
    guide = _guide()
    sched = Annealing(eps=0.5, lam=math.inf, steps=3) if schedule == "lam_inf" else None
    ours = TransportELBO(sched, num_particles=num_particles)
    theirs = Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1)
    pyro.set_rng_seed(3)
    value = ours.loss(model, guide, Y)
    pyro.set_rng_seed(3)
    expected = theirs.loss(model, guide, Y)
    assert value == expected
    assert ours.last["cost"] == 0.0 and ours.last["lam"] == math.inf

    pyro.set_rng_seed(4)
    ours_value = ours.loss_and_grads(model, guide, Y)
    ours_grads = _grads(guide)
    guide.zero_grad()
    pyro.set_rng_seed(4)
    theirs_value = theirs.loss_and_grads(model, guide, Y)
    assert ours_value == theirs_value
    for g1, g2 in zip(ours_grads, _grads(guide), strict=True):
        torch.testing.assert_close(g1, g2, rtol=0, atol=0)


def _draw_and_cost(guide, eps: float, seed: int) -> tuple[float, float]:
    """Replay one particle by hand: ``-ELBO`` and ``c_eps(x, T(x))`` at the same draw."""
    pyro.set_rng_seed(seed)
    guide_trace = poutine.trace(guide).get_trace(Y)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(Y)
    neg_elbo = guide_trace.log_prob_sum() - model_trace.log_prob_sum()
    z = guide_trace.nodes["_AutoKR_latent"]["value"]
    x = guide.get_transform().inv(z)
    return neg_elbo.item(), weighted_cost(x, z, eps).item()


@pytest.mark.parametrize("order", [None, ["b", "a"]])
def test_finite_lam_adds_the_weighted_cost_over_lam(order):
    guide = _guide(order=order)
    eps, lam = 0.1, 5.0
    loss = TransportELBO(Annealing(eps=eps, lam=lam, steps=0))
    pyro.set_rng_seed(11)
    value = loss.loss(model, guide, Y)
    neg_elbo, cost = _draw_and_cost(guide, eps, 11)
    assert cost > 0
    assert loss.last["cost"] == pytest.approx(cost, rel=1e-10)
    assert loss.last["elbo"] == pytest.approx(-neg_elbo, rel=1e-10)
    assert value == pytest.approx(neg_elbo + cost / lam, rel=1e-10)


def test_cost_weights_follow_the_kr_order():
    """With ``order=["b", "a"]`` the packed vector is (b1, b2, a): b1 gets weight eps^0."""
    guide = _guide(order=["b", "a"])
    pyro.set_rng_seed(5)
    guide_trace = poutine.trace(guide).get_trace(Y)
    z = guide_trace.nodes["_AutoKR_latent"]["value"]
    b = guide_trace.nodes["b"]["value"]
    torch.testing.assert_close(z[:2], b)
    loss = TransportELBO(Annealing(eps=1e-3, lam=1.0, steps=0))
    pyro.set_rng_seed(5)
    loss.loss(model, guide, Y)
    x = guide.get_transform().inv(z)
    assert loss.last["cost"] == pytest.approx(weighted_cost(x, z, 1e-3).item(), rel=1e-10)


def test_gradient_of_the_cost_term():
    """``differentiable_loss`` backpropagates through ``-ELBO + c_eps / lam``."""
    guide = _guide()
    eps, lam = 0.5, 2.0
    loss = TransportELBO(Annealing(eps=eps, lam=lam, steps=0))
    pyro.set_rng_seed(2)
    (loss.differentiable_loss(model, guide, Y)).backward()
    with_cost = _grads(guide)
    guide.zero_grad()
    pyro.set_rng_seed(2)
    Trace_ELBO().differentiable_loss(model, guide, Y).backward()
    elbo_grads = _grads(guide)
    guide.zero_grad()
    pyro.set_rng_seed(2)
    guide_trace = poutine.trace(guide).get_trace(Y)
    z = guide_trace.nodes["_AutoKR_latent"]["value"]
    x = guide.get_transform().inv(z).detach()
    (weighted_cost(x, z, eps) / lam).backward()
    for g, ge, gc in zip(with_cost, elbo_grads, _grads(guide), strict=True):
        torch.testing.assert_close(g, ge + gc)


def test_schedule_advances_once_per_training_call_and_not_on_evaluation():
    guide = _guide()
    schedule = Annealing(eps=(1.0, 1e-2), lam=(1.0, 1e2), steps=4)
    loss = TransportELBO(schedule, num_particles=2)
    loss.loss(model, guide, Y)
    assert schedule.step_count == 0
    svi = SVI(model, guide, Adam({"lr": 1e-2}), loss)
    seen = []
    for _ in range(3):
        svi.step(Y)
        seen.append((loss.last["eps"], loss.last["lam"]))
    assert schedule.step_count == 3
    assert seen == [pytest.approx(schedule.values(k)) for k in range(3)]
    loss.differentiable_loss(model, guide, Y)
    assert schedule.step_count == 4


def test_works_with_a_pyro_flow_guide():
    guide = AutoIAFNormal(model, num_transforms=1)
    loss = TransportELBO(Annealing(eps=0.5, lam=1.0, steps=0))
    value = loss.loss(model, guide, Y)
    assert math.isfinite(value)
    assert loss.last["cost"] > 0
    assert value == pytest.approx(-loss.last["elbo"] + loss.last["cost"], rel=1e-12)


def test_guide_without_a_reference_draw_is_a_clear_error():
    loss = TransportELBO(Annealing(steps=10))
    with pytest.raises(ValueError, match="standard normal reference draw") as info:
        loss.loss(model, AutoNormal(model), Y)
    assert "Trace_ELBO" in str(info.value)
    # ...but schedule=None needs no reference draw: it is Trace_ELBO for any guide
    assert math.isfinite(TransportELBO().loss(model, AutoNormal(model), Y))


def test_schedule_type_is_checked():
    with pytest.raises(TypeError, match="pyro_kr.Annealing or None, got tuple"):
        TransportELBO((1.0, 1e-3))


def test_current_reports_eps_and_lam():
    assert TransportELBO().current() == (1.0, math.inf)
    assert TransportELBO(Annealing(eps=(1.0, 0.1), lam=(2.0, 20.0), steps=5)).current() == (
        1.0,
        2.0,
    )
