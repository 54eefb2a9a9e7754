"""``fit(lr_decay_from=...)``: where the lr decay starts, as a fraction of the steps (issue 16:
the lr held to 85 % of the steps fixes a large hierarchy's log-tau lag). The default (``None``,
decay from the annealing ramp's end) is unchanged bit for bit."""

from __future__ import annotations

import importlib
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.optim import Adam

from pyro_kr import Annealing, AutoKR, TransportELBO, fit
from pyro_kr.fit import DECAY_TO

fit_module = importlib.import_module("pyro_kr.fit")
DT = torch.float64
Y = torch.tensor([0.8, -0.3, 1.1], dtype=DT)
LR = 1e-2
LAST = {}  # the History of the last _run


def model(y):
    a = pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=DT), 1.0))
    b = pyro.sample("b", dist.Normal(torch.zeros(2, dtype=DT), 1.0).to_event(1))
    loc = torch.stack([a + b[..., 0], b[..., 0] - b[..., 1], a], -1)
    pyro.sample("y", dist.Normal(loc, 0.5).to_event(1), obs=y)


def _run(monkeypatch, steps=200, loss=None, **options):
    """Train an affine AutoKR; return (lr of every step, losses, final params, optimizers)."""
    made = []

    def recording_adam(args):
        made.append(Adam(args))
        return made[-1]

    monkeypatch.setattr(fit_module, "Adam", recording_adam)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoKR(model, map="affine")
    if loss is None:
        loss = TransportELBO(Annealing.over(steps), num_particles=2)
    lrs = []

    def callback(step, record):  # the lr fit set before this step
        lrs.append({g["lr"] for o in made[-1].optim_objs.values() for g in o.param_groups})

    history = fit(model, guide, Y, loss=loss, steps=steps, lr=LR, progress=False, check=False,
                  callback=callback, **options)
    assert all(len(s) == 1 for s in lrs)  # every parameter at the same lr
    LAST["history"] = history
    final = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    return [s.pop() for s in lrs], history.loss, final, made


def _expected(steps, start):
    return [LR * DECAY_TO ** (0.0 if k < start else (k - start) / (steps - start))
            for k in range(steps)]


def test_the_default_still_decays_from_the_ramp_end_and_0_7_is_the_same(monkeypatch):
    lrs, losses, final, _ = _run(monkeypatch)  # Annealing.over(200): ramp of 140 steps
    assert lrs == _expected(200, 140)
    assert LAST["history"].lr_decay_start == 140
    assert lrs[139] == LR and lrs[141] < LR
    assert lrs[-1] == pytest.approx(LR * DECAY_TO ** (59 / 60))
    same, same_losses, same_final, _ = _run(monkeypatch, lr_decay_from=0.7)
    assert same == lrs and same_losses == losses
    for name, value in final.items():
        assert torch.equal(same_final[name], value), name


def test_the_decay_starts_where_asked(monkeypatch):
    default_lrs, default_losses, _, _ = _run(monkeypatch)
    lrs, losses, _, _ = _run(monkeypatch, lr_decay_from=0.85)
    assert lrs == _expected(200, 170) and LAST["history"].lr_decay_start == 170
    assert set(lrs[:171]) == {LR} and lrs[171] < LR
    ratios = [b / a for a, b in zip(lrs[170:-1], lrs[171:], strict=True)]
    assert ratios == pytest.approx([DECAY_TO ** (1 / 30)] * 29, rel=1e-12)  # geometric
    # the same run as the default until the default's decay starts, another one after it
    assert losses[:141] == default_losses[:141] and losses[141:] != default_losses[141:]


def test_lr_decay_from_without_a_schedule_decays_too(monkeypatch):
    lrs, _, _, _ = _run(monkeypatch, steps=20, loss=Trace_ELBO(), lr_decay_from=0.5)
    assert lrs == _expected(20, 10)
    constant, _, _, _ = _run(monkeypatch, steps=20, loss=Trace_ELBO())
    assert set(constant) == {LR}  # the default without a schedule: a constant lr, as before


def test_restarts_pass_it_on(monkeypatch):
    lrs, _, _, _ = _run(monkeypatch, steps=10, lr_decay_from=0.5, restarts=2, restart_draws=2)
    assert lrs == _expected(10, 5) * 2  # each restart's own Adam, decayed from step 5


@pytest.mark.parametrize("bad", [0, 1, 0.0, 1.0, -0.2, 1.5, math.nan, math.inf])
def test_values_outside_0_1_are_refused_with_the_fix(bad):
    pyro.clear_param_store()
    guide = AutoKR(model, map="affine")
    with pytest.raises(ValueError, match=r"lr_decay_from must lie in \(0, 1\).*0\.85"):
        fit(model, guide, Y, steps=5, progress=False, lr_decay_from=bad)
    with pytest.raises(ValueError, match=r"lr_decay_from must lie in \(0, 1\)"):
        fit(model, guide, Y, steps=5, progress=False, lr_decay_from=bad, restarts=2)
    assert not list(pyro.get_param_store().keys())  # refused before anything was built


@pytest.mark.parametrize("bad", [True, torch.tensor(0.85), [0.85]])
def test_non_numbers_are_refused(bad):
    guide = AutoKR(model, map="affine")
    with pytest.raises(TypeError, match="lr_decay_from must be None or a float.*'plateau'"):
        fit(model, guide, Y, steps=5, progress=False, lr_decay_from=bad)


@pytest.mark.parametrize("bad", ["0.85", "Plateau", "auto", ""])
def test_unknown_rules_are_refused_with_the_choices(bad):
    pyro.clear_param_store()
    guide = AutoKR(model, map="affine")
    with pytest.raises(ValueError, match=r"not a known rule: pass 'plateau'.*0\.85"):
        fit(model, guide, Y, steps=5, progress=False, lr_decay_from=bad)
    with pytest.raises(ValueError, match="not a known rule"):
        fit(model, guide, Y, steps=5, progress=False, lr_decay_from=bad, restarts=2)
    assert not list(pyro.get_param_store().keys())


def test_contradictions_are_refused():
    guide = AutoKR(model, map="affine")
    loss = TransportELBO(Annealing.over(5))
    with pytest.raises(ValueError, match="lr_decay=False keeps the lr constant"):
        fit(model, guide, Y, loss=loss, steps=5, progress=False, lr_decay=False,
            lr_decay_from=0.85)
    with pytest.raises(ValueError, match="decays fit's own Adam.*LambdaLR"):
        fit(model, guide, Y, loss=loss, steps=5, progress=False, optim=Adam({"lr": LR}),
            lr_decay_from=0.85)
    with pytest.raises(ValueError, match="lr_decay=False keeps the lr constant"):
        fit(model, guide, Y, loss=loss, steps=5, progress=False, lr_decay=False,
            lr_decay_from="plateau")
    with pytest.raises(ValueError, match="decays fit's own Adam"):
        fit(model, guide, Y, loss=loss, steps=5, progress=False, optim=Adam({"lr": LR}),
            lr_decay_from="plateau")
