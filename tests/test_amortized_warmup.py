"""Reverse mode's forward warm-up on fresh simulations (``fit_amortized(warmup_steps=...)``)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from _amortized_models import SIGMA, A, linear_gaussian, linear_gaussian_errors

from pyro_kr import AmortizedKR, fit_amortized
from pyro_kr.amortized import SimulatedForwardLoss

LOG_PROBS = {"n": 0}


class CountingNormal(dist.Normal):
    """A Normal that counts its ``log_prob`` calls: the model evaluations."""

    def log_prob(self, value):
        LOG_PROBS["n"] += 1
        return super().log_prob(value)


def counted_model(y=None):
    z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))
    return pyro.sample("y", CountingNormal(z @ A.T, SIGMA).to_event(1), obs=y)


def _guide(model=linear_gaussian):
    return AmortizedKR(model, observed="y", map="affine", hidden_dims=(), embedding_dim=8,
                       embedding_hidden=(16,))


def test_default_is_no_warmup_bit_for_bit():
    losses = []
    for extra in ({}, {"warmup_steps": 0}):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        h = fit_amortized(linear_gaussian, _guide(), mode="reverse", steps=5, batch_size=16,
                          progress=False, **extra)
        assert h.forward_steps is None and h.simulations == 5 * 16
        losses.append(h.loss)
    assert losses[0] == losses[1]


def test_warmup_evaluates_no_model_density_and_counts_its_simulations():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    seen = []
    LOG_PROBS["n"] = 0
    h = fit_amortized(counted_model, _guide(counted_model), mode="reverse", warmup_steps=4,
                      warmup_batch_size=32, steps=3, batch_size=8, progress=False,
                      callback=lambda step, record: seen.append((step, LOG_PROBS["n"])))
    assert [s for s, _ in seen] == list(range(7))  # the reverse steps continue the count
    assert all(n == 0 for s, n in seen if s < 4)  # warm-up: no log p(u, y) evaluated
    assert seen[4][1] > 0  # the first reverse step evaluates the likelihood
    assert h.forward_steps == 4 and h.steps == 7 and len(h.loss) == 7
    assert h.simulations == 4 * 32 + 3 * 8
    assert h.model_evaluations == 3 * 8  # reverse phase only (one particle)
    # the reverse phase is a refinement: the default schedule's cost starts small (lam 1e2)
    assert h.lam[4] == pytest.approx(100.0)


def test_warmup_alone_recovers_the_exact_linear_gaussian_posterior():
    # forward KL on fresh pairs: the affine family contains the posterior, so the warm-up's
    # optimum is exact; the reverse phase after it barely moves (lr 1e-6)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = _guide()
    fit_amortized(linear_gaussian, guide, mode="reverse", warmup_steps=1500, warmup_lr=2e-2,
                  steps=1, schedule=None, lr=1e-6, progress=False)
    mean_error, cov_error = linear_gaussian_errors(guide)
    assert mean_error < 0.05 and cov_error < 0.1


def test_simulated_forward_loss_is_the_batch_mean_nll():
    pyro.clear_param_store()
    guide = _guide()
    guide.setup()
    loss = SimulatedForwardLoss(linear_gaussian, guide, (), {}, batch_size=64)
    state = torch.random.get_rng_state()
    value = loss(None, None)
    torch.random.set_rng_state(state)  # the same draws, simulated by hand
    z = dist.Normal(torch.zeros(64, 2, dtype=torch.float64), 1.0).sample()
    y = dist.Normal(z @ A.T, SIGMA).sample()
    expected = -guide.log_prob(z, {"y": y}).mean()
    assert torch.allclose(value, expected)
    assert loss.simulations == 64
    assert loss.last["forward_nll"] == pytest.approx(float(value.detach()))


def test_a_callback_stop_in_the_warmup_skips_the_reverse_phase():
    pyro.clear_param_store()
    h = fit_amortized(linear_gaussian, _guide(), mode="reverse", warmup_steps=5, steps=3,
                      batch_size=8, progress=False, callback=lambda step, record: step == 1)
    assert h.steps == 2 and h.forward_steps == 2 and h.model_evaluations == 0
    assert h.simulations == 2 * 256


@pytest.mark.parametrize("kwargs, match", [
    ({"warmup_steps": -1}, "warmup_steps must be an int >= 0"),
    ({"warmup_steps": 2.5}, "warmup_steps must be an int >= 0"),
    ({"warmup_steps": True}, "warmup_steps must be an int >= 0"),
    ({"warmup_batch_size": 64}, "pass warmup_steps > 0 too"),
    ({"warmup_lr": 1e-3}, "pass warmup_steps > 0 too"),
    ({"warmup_steps": 2, "warmup_batch_size": 0}, "warmup_batch_size must be an int >= 1"),
    ({"warmup_steps": 2, "warmup_lr": 0.0}, "warmup_lr must be a number > 0"),
    ({"warmup_optim": "adam"}, "pass warmup_steps > 0 too"),
    ({"warmup_steps": 2, "warmup_lr": 1e-3,
      "warmup_optim": pyro.optim.ClippedAdam({"lr": 1e-3})}, "not both"),
    ({"warmup_steps": 2, "checkpoint": "ck.pt"}, "does not checkpoint its two phases"),
    ({"warmup_steps": 2, "mode": "hybrid", "num_simulations": 20},
     "warmup_steps belongs to mode='reverse'"),
    ({"warmup_steps": 2, "mode": "forward", "num_simulations": 20},
     "warmup_steps belongs to mode='reverse'"),
])
def test_warmup_arguments_are_checked(kwargs, match):
    kwargs = {"mode": "reverse", **kwargs}
    with pytest.raises(ValueError, match=match):
        fit_amortized(linear_gaussian, _guide(), steps=2, progress=False, **kwargs)


def test_warmup_optim_is_the_warmups_optimizer():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    optim = pyro.optim.ClippedAdam({"lr": 1e-3, "lrd": 0.01 ** (1 / 5)})
    history = fit_amortized(linear_gaussian, _guide(), mode="reverse", warmup_steps=5,
                            warmup_batch_size=8, warmup_optim=optim, steps=2, batch_size=4,
                            progress=False)
    assert history.forward_steps == 5 and optim.optim_objs  # it stepped the parameters
    lrs = [g["lr"] for o in optim.optim_objs.values() for g in o.param_groups]
    assert lrs and all(lr == pytest.approx(1e-3 * 0.01) for lr in lrs)  # its own 100x decay


def test_warmup_optim_must_be_a_pyro_optimizer():
    with pytest.raises(TypeError, match="warmup_optim must be a pyro.optim optimizer"):
        fit_amortized(linear_gaussian, _guide(), mode="reverse", steps=2, warmup_steps=2,
                      warmup_optim=torch.optim.Adam, progress=False)
