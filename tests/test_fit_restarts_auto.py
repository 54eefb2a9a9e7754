"""``fit(..., restarts="auto")`` (the default): the mode survey decides between one run and
``AUTO_RESTARTS`` restarts; one run is bit for bit ``restarts=1``; the survey touches neither
the random stream nor the guide; every case that cannot restart says why."""

from __future__ import annotations

import logging

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.optim import Adam

from pyro_kr import Annealing, AutoKR, TransportELBO, fit
from pyro_kr.guides.laplace import survey_modes
from pyro_kr.restarts import AUTO_RESTARTS

DT = torch.float64
Y = torch.tensor([0.8, -0.3, 1.1], dtype=DT)


def gaussian_model(y):
    z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=DT), 1.0).to_event(1))
    pyro.sample("y", dist.Normal(z.sum(-1, keepdim=True) + z[..., :1], 0.5).to_event(1),
                obs=y)


def two_mode_model(y):
    # y ~ N(z^2, 0.1^2) with y = 4: modes near z = +2 and z = -2, of equal mass
    z = pyro.sample("z", dist.Normal(torch.tensor(0.0, dtype=DT), 3.0))
    pyro.sample("y", dist.Normal(z**2, 0.1), obs=y)


FOUR = torch.tensor(4.0, dtype=DT)


def params() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


def test_the_survey_finds_both_modes_of_a_symmetric_posterior():
    survey = AutoKR(two_mode_model).survey_modes(FOUR)
    assert survey.several and survey.skipped is None
    points = sorted(float(m[0]) for m in survey.modes)
    # d/dz [-z^2 / 18 - (4 - z^2)^2 / 0.02] = 0  <=>  z^2 = 4 - 1/1800
    exact = (4 - 1 / 1800) ** 0.5
    assert points == pytest.approx([-exact, exact], abs=1e-6)
    assert survey.modes[0][2] == pytest.approx(survey.modes[1][2], abs=1e-6)  # equal mass


def test_the_survey_finds_one_mode_of_a_gaussian_posterior():
    survey = AutoKR(gaussian_model).survey_modes(Y[:1])
    assert not survey.several and len(survey.modes) == 1
    assert len(survey.searches) == 5 and all("mode 0" in s for s in survey.searches)


def test_a_mode_with_little_mass_does_not_count():
    # a mixture with a second component of weight 1e-4: two strict modes, one negligible
    weights = torch.tensor([1 - 1e-4, 1e-4], dtype=DT).log()
    centres = torch.tensor([-3.0, 3.0], dtype=DT)

    def model():
        z = pyro.sample("z", dist.Normal(torch.tensor(0.0, dtype=DT), 10.0))
        parts = weights + dist.Normal(centres, 0.5).log_prob(z.unsqueeze(-1))
        pyro.factor("mixture", parts.logsumexp(-1))

    guide = AutoKR(model)
    guide()  # set up
    start = torch.tensor([-3.0], dtype=DT)
    survey = survey_modes(guide, start, num_starts=8)
    assert len(survey.modes) == 1 and len(survey.minor) == 1
    # the prior N(0, 10^2) pulls each mode in by a factor 4 / (4 + 0.01)
    assert float(survey.modes[0][0]) == pytest.approx(-12 / 4.01, abs=1e-4)
    assert float(survey.minor[0][0]) == pytest.approx(12 / 4.01, abs=1e-4)
    both = survey_modes(guide, start, num_starts=8, min_mass=1e-6)
    assert both.several and len(both.minor) == 0


def test_no_strict_mode_is_not_several():
    # a centered funnel: the density grows without bound into the neck, no strict mode
    def funnel():
        v = pyro.sample("v", dist.Normal(torch.tensor(0.0, dtype=DT), 3.0))
        pyro.sample("x", dist.Normal(torch.zeros(3, dtype=DT), torch.exp(v / 2)).to_event(1))

    survey = AutoKR(funnel).survey_modes()
    assert not survey.several


def test_the_survey_leaves_the_stream_and_the_guide_untouched():
    guide = AutoKR(two_mode_model)
    pyro.set_rng_seed(7)
    guide.survey_modes(FOUR)
    after = torch.rand(3)
    pyro.set_rng_seed(7)
    assert torch.equal(after, torch.rand(3))
    assert guide.prototype_trace is None and list(pyro.get_param_store().keys()) == []


@pytest.mark.parametrize("loss", ["transport", "trace"])
def test_one_mode_trains_once_bit_for_bit_as_restarts_1(loss):
    def run(**options):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        elbo = (TransportELBO(Annealing.over(20), num_particles=4) if loss == "transport"
                else Trace_ELBO(num_particles=4, vectorize_particles=True))
        h = fit(gaussian_model, AutoKR(gaussian_model), Y[:1], loss=elbo, steps=20,
                progress=False, check=False, **options)
        return h, params()

    auto, p_auto = run()
    one, p_one = run(restarts=1)
    assert auto.loss == one.loss and auto.restarts == [] and auto.chosen_restart is None
    assert auto.restarts_choice.startswith("one run: 1 distinct mode")
    assert one.restarts_choice is None
    for name, value in p_one.items():
        torch.testing.assert_close(p_auto[name], value, rtol=0, atol=0)


def test_several_modes_train_auto_restarts_as_the_explicit_call_would(caplog):
    def run(**options):
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        return fit(two_mode_model, AutoKR(two_mode_model), FOUR,
                   loss=TransportELBO(Annealing.over(10), num_particles=2), steps=10,
                   progress=False, check=False, restart_draws=50, **options)

    with caplog.at_level(logging.WARNING, logger="pyro_kr.restarts"):
        auto = run()
    assert len(auto.restarts) == AUTO_RESTARTS and auto.chosen_restart is not None
    assert auto.restarts_choice.startswith(f"{AUTO_RESTARTS} restarts")
    assert "the posterior has several modes (2 distinct mode(s)" in caplog.text
    assert "pass restarts=1 to train once" in caplog.text
    explicit = run(restarts=AUTO_RESTARTS)
    assert [r["elbo"] for r in auto.restarts] == [r["elbo"] for r in explicit.restarts]
    assert auto.loss == explicit.loss


@pytest.mark.parametrize(
    "guide_options, fit_options, says",
    [
        ({"map": "affine"}, {}, "map='affine' holds one mode"),
        ({}, {"optim": Adam({"lr": 1e-2})}, "pass lr= instead of optim="),
    ],
)
def test_several_modes_that_cannot_restart_train_once_and_say_why(guide_options, fit_options,
                                                                  says, caplog):
    with caplog.at_level(logging.WARNING, logger="pyro_kr.restarts"):
        h = fit(two_mode_model, AutoKR(two_mode_model, **guide_options), FOUR, steps=3,
                progress=False, check=False, **fit_options)
    assert h.restarts == [] and says in h.restarts_choice and says in caplog.text
    assert "several modes" in h.restarts_choice


def test_no_survey_with_a_checkpoint_another_guide_or_plates(tmp_path):
    h = fit(two_mode_model, AutoKR(two_mode_model), FOUR, steps=2, progress=False,
            check=False, checkpoint=tmp_path / "run.pt")
    assert h.restarts == [] and "checkpoint= given" in h.restarts_choice
    pyro.clear_param_store()
    h = fit(two_mode_model, AutoNormal(two_mode_model), FOUR, steps=2, progress=False,
            check=False)
    assert h.restarts == [] and "AutoNormal is not an AutoKR" in h.restarts_choice
    survey = AutoKR(two_mode_model, structure="plates").survey_modes(FOUR)
    assert not survey.several and "structure='plates'" in survey.skipped


def test_bad_restarts_are_refused():
    with pytest.raises(ValueError, match="restarts must be 'auto' or a positive int, got 'al"):
        fit(two_mode_model, AutoKR(two_mode_model), FOUR, steps=2, progress=False,
            restarts="always")


@pytest.mark.slow
def test_the_default_fit_holds_every_mode_of_symmetric_modes():
    # fit's defaults with the default recipe (AutoKR(model), Annealing.over(2000), 8
    # particles): the survey finds several modes, 8 restarts; seed 0 of the suite's
    # benchmarks/results/suite_restarts_auto.json (share error 0.054); 85 CPU-s on one thread
    import warnings

    from pyro_kr.bench import methods, problems
    from pyro_kr.bench.problems.symmetric_modes import mode_shares

    torch.set_num_threads(1)
    problem = problems.get("symmetric_modes")
    y = problem.observation(0)
    with methods.float64():
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoKR(problem.model)
        loss = TransportELBO(Annealing.over(2000), num_particles=8, vectorize_particles=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            history = fit(problem.model, guide, y=y, loss=loss, steps=2000, progress=False)
        draws = guide.sample_posterior(4000, y=y)
    assert len(history.restarts) == AUTO_RESTARTS
    shares = mode_shares(draws["theta1"].numpy(), draws["theta2"].numpy())
    assert max(abs(s - 0.25) for s in shares.values()) <= 0.1, shares
