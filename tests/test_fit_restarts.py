"""``fit(..., restarts=K)``: K runs from one start, the one with the best held-out ELBO kept
(its parameters restored exactly), the choice logged and recorded, clear errors."""

from __future__ import annotations

import logging
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.optim import Adam

from pyro_kr import Annealing, AutoKR, NonFiniteLossError, TransportELBO, fit
from pyro_kr.restarts import heldout_elbo

DT = torch.float64
Y = torch.tensor([0.8, -0.3, 1.1], dtype=DT)
M = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, -1.0], [1.0, 0.0, 0.0]], dtype=DT)
SIGMA = 0.5


def model(y):
    a = pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=DT), 1.0))
    b = pyro.sample("b", dist.Normal(torch.zeros(2, dtype=DT), 1.0).to_event(1))
    z = torch.cat([a.unsqueeze(-1), b], -1)
    pyro.sample("y", dist.Normal(z @ M.T, SIGMA).to_event(1), obs=y)


def exact_posterior() -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of ``(a, b0, b1)``: prior N(0, I), ``y = M z + N(0, SIGMA^2)``."""
    cov = torch.linalg.inv(torch.eye(3, dtype=DT) + M.T @ M / SIGMA**2)
    return cov @ M.T @ Y / SIGMA**2, cov


def params() -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}


def test_the_restart_with_the_best_elbo_is_kept_and_its_parameters_restored(caplog):
    guide = AutoKR(model)
    finals = []

    def callback(step, record):
        if step == 29:
            finals.append(params())

    with caplog.at_level(logging.INFO, logger="pyro_kr.restarts"):
        history = fit(model, guide, Y, loss=TransportELBO(Annealing.over(30), num_particles=2),
                      steps=30, progress=False, restarts=3, restart_draws=200,
                      callback=callback, check=False)
    elbos = [r["elbo"] for r in history.restarts]
    assert [r["restart"] for r in history.restarts] == [0, 1, 2]
    assert len(finals) == 3 and len(set(elbos)) == 3  # three different runs
    assert history.chosen_restart == max(range(3), key=elbos.__getitem__)
    chosen = finals[history.chosen_restart]
    now = params()
    assert set(now) == set(chosen)
    for name, value in chosen.items():
        torch.testing.assert_close(now[name], value, rtol=0, atol=0)
    # the guide uses them: the held-out estimate of the restored guide is the chosen one's
    assert heldout_elbo(guide, model, (Y,), num_draws=200) == (
        elbos[history.chosen_restart], history.restarts[history.chosen_restart]["elbo_se"])
    assert history.steps == 30 and all(r["steps"] == 30 for r in history.restarts)
    assert history.seconds == pytest.approx(sum(r["seconds"] for r in history.restarts))
    text = caplog.text
    assert f"chose restart {history.chosen_restart + 1} of 3" in text
    assert text.count("held-out ELBO") == 4  # one line per restart and the choice


class Recording(Trace_ELBO):
    """Trace_ELBO that records the parameter values every step starts from."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, torch.Tensor]] = []

    def loss_and_grads(self, model, guide, *args, **kwargs):
        self.seen.append(params())
        return super().loss_and_grads(model, guide, *args, **kwargs)


def test_every_restart_starts_from_the_same_parameters_with_its_own_stream():
    loss = Recording()
    history = fit(model, AutoKR(model, map="affine"), Y, loss=loss, steps=5, progress=False,
                  restarts=2, restart_draws=50, check=False)
    assert len(loss.seen) == 10
    first, second = loss.seen[0], loss.seen[5]
    assert set(first) == set(second) and first
    for name, value in first.items():
        torch.testing.assert_close(second[name], value, rtol=0, atol=0)
        assert not torch.equal(loss.seen[1][name], value)  # training moved it
    elbos = [r["elbo"] for r in history.restarts]
    assert elbos[0] != elbos[1]  # other particles, another fit


def test_one_restart_is_the_plain_fit():
    def run(**options):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        h = fit(model, AutoKR(model, map="affine"), Y, steps=10, progress=False, check=False,
                **options)
        return h, params()

    plain, p_plain = run()
    one, p_one = run(restarts=1)
    assert one.loss == plain.loss and one.restarts == [] and one.chosen_restart is None
    for name, value in p_plain.items():
        torch.testing.assert_close(p_one[name], value, rtol=0, atol=0)


def test_the_whole_call_is_reproducible_from_the_seed():
    def run():
        pyro.clear_param_store()
        pyro.set_rng_seed(5)
        return fit(model, AutoKR(model, map="affine"), Y, steps=10, progress=False,
                   check=False, restarts=2, restart_draws=50)

    a, b = run(), run()
    def timeless(h):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in h.restarts]

    assert timeless(a) == timeless(b) and a.loss == b.loss and a.chosen_restart == b.chosen_restart


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"restarts": 0}, "restarts must be .auto. or a positive int, got 0"),
        ({"restarts": 2.0}, "restarts must be .auto. or a positive int"),
        ({"restarts": True}, "restarts must be .auto. or a positive int"),
        ({"restarts": 2, "restart_draws": 1}, "restart_draws must be an int >= 2"),
        ({"restarts": 2, "optim": Adam({"lr": 1e-2})}, "Pass lr= "),
        ({"restarts": 2, "checkpoint": "run.pt"}, "cannot be checkpointed"),
        ({"restarts": 2, "lr": -1.0}, "lr must be > 0"),
        ({"restarts": 2, "lr_decay": True}, "no annealing schedule"),
    ],
)
def test_bad_restart_arguments_are_refused_before_training(kwargs, match, tmp_path,
                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=match):
        fit(model, AutoKR(model), Y, steps=5, progress=False, **kwargs)
    assert list(pyro.get_param_store().keys()) == []  # nothing was built or trained
    assert not (tmp_path / "run.pt").exists()


def test_restarts_are_refused_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="not supported under torchrun"):
        fit(model, AutoKR(model), Y, steps=5, progress=False, restarts=2)


class NanOnce(Trace_ELBO):
    """Trace_ELBO whose loss is NaN at the steps listed (counted over the whole call)."""

    def __init__(self, bad: set[int]) -> None:
        super().__init__()
        self.bad, self.calls = bad, 0

    def loss_and_grads(self, model, guide, *args, **kwargs):
        value = super().loss_and_grads(model, guide, *args, **kwargs)
        self.calls += 1
        return math.nan if self.calls - 1 in self.bad else value


def test_a_restart_stopped_by_a_nan_loss_is_logged_and_left_out(caplog):
    with caplog.at_level(logging.WARNING, logger="pyro_kr.restarts"):
        history = fit(model, AutoKR(model, map="affine"), Y, loss=NanOnce({2}), steps=4,
                      progress=False, restarts=2, restart_draws=50, check=False)
    assert history.chosen_restart == 1
    first = history.restarts[0]
    assert first["elbo"] == -math.inf and "loss is nan at step 2" in first["error"]
    assert "restart 1 of 2 failed and is left out" in caplog.text
    assert history.steps == 4


def test_every_restart_failing_raises():
    with pytest.raises(NonFiniteLossError, match="every one of the 2 restarts"):
        fit(model, AutoKR(model, map="affine"), Y, loss=NanOnce({1, 3}), steps=2,
            progress=False, restarts=2, check=False)


def test_heldout_elbo_refuses_too_few_draws():
    with pytest.raises(ValueError, match="num_draws must be an int >= 2"):
        heldout_elbo(AutoKR(model), model, (Y,), num_draws=1)


@pytest.mark.slow
@pytest.mark.parametrize("map_kind", ["affine", "monotone"])
def test_gaussian_posterior_with_restarts_ends_at_the_exact_answer(map_kind):
    # the default recipe (AutoKR(model), Annealing.over, 8 particles, fit's defaults) with 2
    # restarts: 11 CPU-s (affine) and 23 CPU-s (monotone) on one thread
    mean, cov = exact_posterior()
    guide = AutoKR(model, map=map_kind)
    history = fit(model, guide, Y, loss=TransportELBO(Annealing.over(1500), num_particles=8),
                  steps=1500, progress=False, restarts=2)
    assert history.chosen_restart in (0, 1) and len(history.restarts) == 2
    draws = guide.sample_posterior(20_000, Y)
    x = torch.cat([draws["a"].unsqueeze(-1), draws["b"]], -1)
    sd = cov.diag().sqrt()
    assert ((x.mean(0) - mean) / sd).abs().max() < 0.05
    assert ((x.std(0) - sd) / sd).abs().max() < 0.05
    corr = cov / sd[:, None] / sd[None]
    assert (torch.corrcoef(x.T) - corr).abs().max() < 0.05
