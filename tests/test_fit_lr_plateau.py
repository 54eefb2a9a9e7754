"""``fit(lr_decay_from="plateau")``: the lr decay starts once the annealing ramp has ended and
the loss has stopped improving (``loss_plateaued``), at the latest at ``PLATEAU_LATEST`` of the
steps (issue 16). Synthetic loss sequences make the start predictable; a real fit decayed from
the chosen step is the same run as the fixed rule started there; resume is exact."""

from __future__ import annotations

import importlib
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_kr import Annealing, AutoKR, TransportELBO, fit
from pyro_kr.fit import (
    DECAY_TO,
    PLATEAU_LATEST,
    PLATEAU_MIN_WINDOW,
    PLATEAU_WINDOW,
    PLATEAU_Z,
    loss_plateaued,
)

fit_module = importlib.import_module("pyro_kr.fit")
DT = torch.float64
Y = torch.tensor([0.8, -0.3, 1.1], dtype=DT)
LR = 1e-2
STEPS = 200
WINDOW = max(PLATEAU_MIN_WINDOW, math.ceil(PLATEAU_WINDOW * STEPS))  # 5
LATEST = int(PLATEAU_LATEST * STEPS)  # 170


def model(y):
    a = pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=DT), 1.0))
    b = pyro.sample("b", dist.Normal(torch.zeros(2, dtype=DT), 1.0).to_event(1))
    loc = torch.stack([a + b[..., 0], b[..., 0] - b[..., 1], a], -1)
    pyro.sample("y", dist.Normal(loc, 0.5).to_event(1), obs=y)


class Scripted(Trace_ELBO):
    """Trains for real (``Trace_ELBO``'s gradients) but reports the scripted loss values; a
    ``schedule`` attribute (never stepped) gives ``fit`` an annealing ramp to wait for."""

    def __init__(self, values, schedule=None):
        super().__init__()
        self.values, self.schedule = list(values), schedule

    def loss_and_grads(self, model, guide, *args, **kwargs):
        super().loss_and_grads(model, guide, *args, **kwargs)
        return self.values.pop(0)


def _lrs(loss, steps=STEPS, **options):
    """Train an affine AutoKR; return (lr of every step, History)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoKR(model, map="affine")
    lrs = []

    def callback(step, record):
        optim = guide_optim[-1]
        lrs.append({g["lr"] for o in optim.optim_objs.values() for g in o.param_groups})

    guide_optim = []
    real_adam = fit_module.Adam

    def recording_adam(args):
        guide_optim.append(real_adam(args))
        return guide_optim[-1]

    fit_module.Adam = recording_adam
    try:
        history = fit(model, guide, Y, loss=loss, steps=steps, lr=LR, progress=False,
                      check=False, callback=callback, **options)
    finally:
        fit_module.Adam = real_adam
    assert all(len(s) == 1 for s in lrs)
    return [s.pop() for s in lrs], history


def _decayed_from(start, steps=STEPS):
    return [LR * DECAY_TO ** (0.0 if k < start else (k - start) / (steps - start))
            for k in range(steps)]


def test_the_constants_are_as_documented():
    assert (PLATEAU_WINDOW, PLATEAU_MIN_WINDOW, PLATEAU_Z, PLATEAU_LATEST) == (
        0.025, 5, 1.0, 0.85)
    assert (WINDOW, LATEST) == (5, 170)


def test_loss_plateaued_by_hand():
    # falling by 1 per step: the windows' means differ by 5, each variance is 2.5, se = 1
    assert not loss_plateaued([10.0, 9, 8, 7, 6, 5, 4, 3, 2, 1], window=5)
    # the same fall with z = 6 standard errors is "no improvement"
    assert loss_plateaued([10.0, 9, 8, 7, 6, 5, 4, 3, 2, 1], window=5, z=6.0)
    assert loss_plateaued([3.0] * 10, window=5)  # constant: a - b = 0 <= 0
    assert loss_plateaued([1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10], window=5)  # rising
    # noisy but flat: means 1.0 and 0.9, se = sqrt((1 + 1) / 4) = 0.71 > 0.1
    assert loss_plateaued([100.0, 0, 2, 1, 0, 2, 1, -0.4, 1.6, 0.6], window=4)
    # only the last 2 * window values count
    assert loss_plateaued([50.0, 40.0] + [3.0] * 10, window=5)


@pytest.mark.parametrize("window, n", [(1, 10), (0, 10), (True, 10), (2.5, 10), (5, 9)])
def test_loss_plateaued_refuses_bad_windows(window, n):
    with pytest.raises(ValueError, match="window must be an int >= 2|pass at least 10"):
        loss_plateaued([1.0] * n, window=window)


def test_a_flat_loss_decays_two_windows_after_the_ramp():
    # Annealing.over(200): ramp of 140 steps; a flat loss plateaus at the first test,
    # 140 + 2 * 5 = 150, never before the ramp ends
    loss = Scripted([7.0] * STEPS, schedule=Annealing.over(STEPS))
    lrs, history = _lrs(loss, lr_decay_from="plateau")
    assert history.lr_decay_start == 150
    assert lrs == _decayed_from(150)


def test_a_falling_loss_decays_at_the_latest_start():
    loss = Scripted([1000.0 - k for k in range(STEPS)], schedule=Annealing.over(STEPS))
    lrs, history = _lrs(loss, lr_decay_from="plateau")
    assert history.lr_decay_start == LATEST
    assert lrs == _decayed_from(LATEST)


def test_a_fall_that_levels_off_decays_where_the_test_first_holds():
    # no schedule: tested from step 2 * 5; a loss falling by 1 per step to step 80, then
    # flat with a zero-mean period-5 wiggle (every window of 5 has mean 20 and variance 2.5)
    wiggle = [1.0, -2.0, 2.0, -1.0, 0.0]
    values = [100.0 - k if k <= 80 else 20.0 + wiggle[k % 5] for k in range(STEPS)]
    lrs, history = _lrs(Scripted(values), lr_decay_from="plateau")
    first = next(t for t in range(2 * WINDOW, STEPS) if loss_plateaued(values[:t], WINDOW))
    assert history.lr_decay_start == first
    assert 80 < first <= 81 + 2 * WINDOW  # after the fall, once its last value has left
    assert lrs == _decayed_from(first)


def test_the_real_fit_is_the_fixed_rule_started_at_the_chosen_step():
    loss = TransportELBO(Annealing.over(STEPS), num_particles=2)
    lrs, history = _lrs(loss, lr_decay_from="plateau")
    start = history.lr_decay_start
    assert 140 + 2 * WINDOW <= start <= LATEST
    assert lrs == _decayed_from(start)
    plateau = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    fixed_lrs, fixed = _lrs(TransportELBO(Annealing.over(STEPS), num_particles=2),
                            lr_decay_from=(start + 0.5) / STEPS)
    assert fixed.lr_decay_start == start and fixed_lrs == lrs
    assert fixed.loss == history.loss
    for name, value in pyro.get_param_store().named_parameters():
        assert torch.equal(value.detach(), plateau[name]), name


def test_the_default_is_untouched_by_the_rule():
    loss = TransportELBO(Annealing.over(STEPS), num_particles=2)
    lrs, history = _lrs(loss)
    assert history.lr_decay_start == 140 and lrs == _decayed_from(140)


def test_restarts_decide_each_run_on_its_own():
    values = [7.0] * 40
    lrs, history = _lrs(Scripted(values, schedule=Annealing.over(20)), steps=20,
                        lr_decay_from="plateau", restarts=2, restart_draws=2)
    # ramp 14, window 5: the first test, 14 + 10 = 24, is past the latest start int(0.85 * 20)
    assert history.lr_decay_start == 17
    assert lrs == _decayed_from(17, steps=20) * 2


@pytest.mark.parametrize("stop_at", [147, 178])  # checkpoints at 140 (undecided) and 170
def test_resume_is_exact(tmp_path, stop_at):
    def run(path=None, stop=None):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoKR(model, map="affine")

        def callback(step, record):
            if step == stop:
                raise KeyboardInterrupt

        history = fit(model, guide, Y, loss=TransportELBO(Annealing.over(STEPS), num_particles=2),
                      steps=STEPS, lr=LR, progress=False, check=False, callback=callback,
                      checkpoint=path, checkpoint_every=10, lr_decay_from="plateau")
        params = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
        return history, params

    full, full_params = run()
    path = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        run(path, stop_at)
    saved = torch.load(path, weights_only=False)
    assert saved["step"] == stop_at // 10 * 10
    resumed, params = run(path)
    assert resumed.lr_decay_start == full.lr_decay_start and resumed.loss == full.loss
    for name, value in full_params.items():
        assert torch.equal(params[name], value), name
