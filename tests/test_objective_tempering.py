"""Likelihood tempering: the ``beta`` ramp of ``Annealing`` and its use in ``TransportELBO``."""

from __future__ import annotations

import functools
import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.optim import ClippedAdam

from pyro_kr import Annealing, AutoKR, TransportELBO, fit
from pyro_kr.objective.tempering import TemperMessenger, tempered

DT = torch.float64
Y = torch.tensor([0.8, -0.3, 1.1], dtype=DT)


def model(y):
    z = pyro.sample("z", dist.Normal(torch.tensor(0.0, dtype=DT), 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(z, 0.5), obs=y)


def model_by_hand(y, beta):
    # the tempered joint written out: prior + beta * log likelihood, as a factor
    z = pyro.sample("z", dist.Normal(torch.tensor(0.0, dtype=DT), 1.0))
    with pyro.plate("data", len(y)):
        pyro.factor("lik", beta * dist.Normal(z, 0.5).log_prob(y))


def test_messenger_scales_observed_sites_only():
    trace = pyro.poutine.trace(TemperMessenger(0.3)(model)).get_trace(Y)
    assert trace.nodes["y"]["scale"] == pytest.approx(0.3)
    assert trace.nodes["z"]["scale"] == 1.0
    torch.testing.assert_close(
        trace.log_prob_sum(),
        trace.nodes["z"]["log_prob_sum"] + 0.3 * dist.Normal(trace.nodes["z"]["value"], 0.5)
        .log_prob(Y).sum(),
    )
    assert tempered(model, 1.0) is model
    with pytest.raises(ValueError, match="beta must lie in"):
        TemperMessenger(0.0)


def test_annealing_beta_ramp_and_validation():
    a = Annealing(steps=2, beta=(1e-2, 1.0))
    assert [round(a.beta_schedule(s), 6) for s in range(4)] == [0.01, 0.1, 1.0, 1.0]
    assert Annealing(steps=5).beta == 1.0
    over = Annealing.over(10, beta=(0.1, 1.0))  # the beta ramp shares the 70 % ramp
    assert over.steps == 7 and over.beta_schedule.steps == 7 and over.beta == 0.1
    assert "beta=" in repr(a) and "beta=" not in repr(Annealing(steps=5))
    for bad, match in [((0.0, 1.0), "beta must lie in"), ((0.1, 0.5), "must end at 1"),
                       (0.5, "end at 1"), ((1.0, 0.1), "must end at 1")]:
        with pytest.raises(ValueError, match=match):
            Annealing(steps=5, beta=bad)


def test_the_default_recipe_tempers_and_the_constructor_does_not():
    from pyro_kr.objective.schedules import DEFAULT_BETA

    over = Annealing.over(1000)  # the default recipe: beta 1e-2 -> 1 on the 700-step ramp
    assert DEFAULT_BETA == (1e-2, 1.0)
    assert over.beta == pytest.approx(1e-2)
    assert over.beta_schedule == Annealing.over(1000, beta=DEFAULT_BETA).beta_schedule
    assert over.beta_schedule(350) == pytest.approx(0.1) and over.beta_schedule(700) == 1.0
    assert Annealing.over(1000, beta=1.0).beta == 1.0  # the untempered recipe, explicitly
    assert Annealing(steps=1000).beta == 1.0  # the constructor builds what is written


def test_transport_elbo_targets_the_tempered_joint():
    pyro.clear_param_store()
    guide = AutoNormal(model)
    loss = TransportELBO(Annealing(eps=0.5, lam=math.inf, steps=4, beta=(0.25, 1.0)),
                         num_particles=3)
    theirs = Trace_ELBO(num_particles=3, vectorize_particles=True)
    for step, beta in enumerate([0.25, 0.25**0.75]):
        pyro.set_rng_seed(step)
        ours = loss.differentiable_loss(model, guide, Y).item()
        assert loss.last["beta"] == pytest.approx(beta)
        pyro.set_rng_seed(step)
        by_hand = theirs.loss(functools.partial(model_by_hand, beta=beta), guide, Y)
        assert ours == pytest.approx(by_hand, rel=1e-10)


def test_tempering_ends_at_the_untempered_posterior():
    # conjugate closed form: z | y ~ N(m, s^2), 1/s^2 = 1 + n/0.25, m = s^2 * sum(y)/0.25
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoKR(model, map="affine")
    loss = TransportELBO(Annealing(steps=300, beta=(1e-2, 1.0)), num_particles=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(model, guide, Y, loss=loss, steps=600, progress=False, check=False,
        optim=ClippedAdam({"lr": 1e-2, "lrd": 0.995}))
    prec = 1.0 + len(Y) / 0.25
    mean, sd = (Y.sum() / 0.25 / prec).item(), prec**-0.5
    draws = guide.sample_posterior(20_000, Y)["z"]
    assert abs(draws.mean().item() - mean) < 0.1 * sd
    assert abs(draws.std().item() - sd) < 0.1 * sd


def test_a_subclass_with_its_own_objective_refuses_a_beta_ramp():
    class OwnObjective(TransportELBO):
        def _objective(self, model, guide, args, kwargs):  # pragma: no cover - never called
            raise AssertionError

    with pytest.raises(ValueError, match="does not apply the schedule's likelihood tempering"):
        OwnObjective(Annealing(steps=5, beta=(0.1, 1.0)))
    OwnObjective(Annealing(steps=5))  # no ramp: fine
