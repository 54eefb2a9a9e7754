"""Lotka-Volterra stability guard: finite values and gradients wherever a guide can propose."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pyro_kr.bench.problems as problems
from pyro_kr.bench.problems import lotka_volterra as lv


def _widened_prior(n: int, sd: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    loc = torch.tensor(lv.PRIOR_LOC, dtype=torch.float64)
    return loc + sd * torch.randn(n, 4, generator=gen, dtype=torch.float64)


def test_widened_prior_gives_finite_values_and_gradients():
    # log-scale sd 2.5: 20 of these 4,000 draws gave a finite log-likelihood with a non-finite
    # gradient before the guard (states reached inf in the unguarded RK4)
    p = problems.get("lotka_volterra")
    log_u = _widened_prior(4000, 2.5).requires_grad_()
    u = dict(zip(p.param_names, log_u.exp().unbind(-1), strict=True))
    ll = p.likelihood(u).log_prob(p.observation(0))
    ll.sum().backward()
    assert torch.isfinite(ll).all()
    assert torch.isfinite(log_u.grad).all()
    # the guard is what acts on the extreme draws: without it the same scheme overflows
    extreme = log_u.detach()[log_u.detach()[:, 0] > 5.0].exp().numpy()
    assert len(extreme) > 0
    with np.errstate(all="ignore"):
        unguarded = _unguarded(lambda: lv._rk4_numpy(extreme, 64, True))
    assert not np.isfinite(unguarded[1]).all()


def _unguarded(fn):
    level = lv.GUARD_LEVEL
    lv.GUARD_LEVEL = math.inf
    try:
        return fn()
    finally:
        lv.GUARD_LEVEL = level


@pytest.mark.parametrize("scale", [10.0, 30.0])
def test_far_out_rates_stay_finite_in_every_twin(scale):
    log_u = _widened_prior(64, scale, seed=1).clamp(-60, 60)
    values, grads = [], []
    for solve in (lv.solve_lv_log, lv.solve_lv_log_autograd):
        u = log_u.exp().requires_grad_()
        out = solve(u, substeps=8)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(u.grad).all()
        values.append(out.detach())
        grads.append(u.grad)
    torch.testing.assert_close(values[0], values[1], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-7, atol=1e-9)
    flat = log_u.exp().numpy()
    for a, b in zip(lv._rk4_numpy(flat, 8, True), lv._rk4(flat, 8, True), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_guard_is_inactive_on_the_reference_posterior():
    p = problems.get("lotka_volterra")
    ref = p.reference(0)
    u = np.stack([np.asarray(ref[k]).reshape(-1) for k in p.param_names], -1)[::25]
    guarded = lv._rk4_numpy(u, 64, True)
    unguarded = _unguarded(lambda: lv._rk4_numpy(u, 64, True))
    for a, b in zip(guarded, unguarded, strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit: the guard is the identity there


def test_pymc_twin_applies_the_same_guard():
    pytest.importorskip("pymc")
    import pytensor.tensor as pt

    u = np.exp(np.array([[3.0, -1.0, 0.5, -2.0], [5.5, -6.0, 1.5, -5.0]]))  # guard active
    with np.errstate(all="ignore"):
        assert not np.isfinite(_unguarded(lambda: lv._rk4_numpy(u, 8, False))[0]).all()
    ours = lv.solve_lv_log(torch.as_tensor(u), substeps=8).numpy()
    for i in range(len(u)):
        theirs = lv.solve_lv_log_pytensor(*(pt.constant(v) for v in u[i]), substeps=8).eval()
        np.testing.assert_allclose(theirs, ours[i], rtol=1e-10, atol=1e-10)
