"""``fit(lr_decay=...)``: Adam's lr held until the annealing ramp ends, then decayed to
``DECAY_TO`` of its start by the last step; exact resume inside the decay; clear errors."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.optim import Adam

from pyro_kr import Annealing, AutoKR, TransportELBO, fit
from pyro_kr.fit import DECAY_TO

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


def _moves(lr_decay, steps=200, ramp=100, path=None, stop_at=None, every=100):
    """Train an affine AutoKR; return the per-step size of the largest parameter move."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoKR(model, map="affine")
    loss = TransportELBO(Annealing(steps=ramp), num_particles=2)
    last, moves = {}, []

    def callback(step, record):
        now = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
        if last:
            moves.append(max(float((now[k] - last[k]).abs().max()) for k in now))
        last.update(now)
        if step == stop_at:
            raise KeyboardInterrupt

    fit(model, guide, Y, loss=loss, steps=steps, lr=1e-2, progress=False, check=False,
        lr_decay=lr_decay, callback=callback, checkpoint=path, checkpoint_every=every)
    final = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    return moves, final


def test_decay_holds_the_lr_through_the_ramp_then_shrinks_the_steps():
    constant, _ = _moves(False)
    decayed, _ = _moves(True)
    # identical until the ramp ends (same seed, same lr) ...
    assert decayed[:98] == pytest.approx(constant[:98], rel=0, abs=0)
    # ... then Adam's steps (about lr per step) shrink with the lr: 1 % at the last step
    assert max(constant[-10:]) > 3e-3
    assert max(decayed[-10:]) < 3 * DECAY_TO * max(constant[-10:])


def test_resume_inside_the_decay_phase_is_exact(tmp_path):
    _, full = _moves(True, steps=60, ramp=30)
    path = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        _moves(True, steps=60, ramp=30, path=path, stop_at=47, every=10)  # file at step 40
    assert torch.load(path, weights_only=False)["step"] == 40
    _, resumed = _moves(True, steps=60, ramp=30, path=path)
    for name, value in full.items():
        assert torch.equal(resumed[name], value), name


def test_lr_decay_errors_name_the_fix():
    guide = AutoKR(model, map="affine")
    with pytest.raises(ValueError, match="no annealing schedule"):
        fit(model, guide, Y, loss=Trace_ELBO(), steps=5, progress=False, lr_decay=True)
    with pytest.raises(ValueError, match="ClippedAdam"):
        fit(model, guide, Y, loss=TransportELBO(Annealing(steps=3)), steps=5, progress=False,
            optim=Adam({"lr": 1e-2}), lr_decay=True)
    with pytest.raises(TypeError, match="lr_decay must be"):
        fit(model, guide, Y, steps=5, progress=False, lr_decay="yes")
    with pytest.raises(ValueError, match="nothing is left to decay"):
        fit(model, guide, Y, loss=TransportELBO(Annealing(steps=5)), steps=5, progress=False,
            lr_decay=True)


def test_the_default_decays_after_a_ramp_and_only_then():
    # lr_decay=None (fit's default) is lr_decay=True when fit owns the Adam and the ramp ends
    # before the last step ...
    auto, auto_final = _moves(None)
    decayed, decayed_final = _moves(True)
    assert auto == decayed
    for name, value in decayed_final.items():
        assert torch.equal(auto_final[name], value), name
    # ... and a constant lr when the ramp lasts the whole run
    auto, _ = _moves(None, steps=100, ramp=100)
    constant, _ = _moves(False, steps=100, ramp=100)
    assert auto == constant


def test_the_default_keeps_a_given_optimizer_and_plain_losses_constant():
    guide = AutoKR(model, map="affine")
    optim = Adam({"lr": 1e-2})
    fit(model, guide, Y, loss=TransportELBO(Annealing(steps=3)), steps=6, optim=optim,
        progress=False, check=False)
    assert {g["lr"] for o in optim.optim_objs.values() for g in o.param_groups} == {1e-2}
    fit(model, guide, Y, loss=Trace_ELBO(), steps=6, progress=False, check=False)  # no error
