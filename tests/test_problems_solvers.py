"""ODE and PDE solvers of the benchmark problems against scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyro_kr.bench.problems import lotka_volterra as lv
from pyro_kr.bench.problems.darcy_2d import darcy_operator_indices, solve_darcy_2d
from pyro_kr.bench.problems.elliptic_1d import solve_elliptic_1d
from pyro_kr.bench.problems.lotka_volterra import solve_lv_log, solve_lv_log_autograd

scipy_integrate = pytest.importorskip("scipy.integrate")


def _lv_scipy(u: np.ndarray) -> np.ndarray:
    a, b, g, d = u
    sol = scipy_integrate.solve_ivp(
        lambda t, p: [a * p[0] - b * p[0] * p[1], -g * p[1] + d * p[0] * p[1]],
        (0.0, 20.0),
        [30.0, 1.0],
        t_eval=np.linspace(0.0, 20.0, 11),
        method="DOP853",
        rtol=1e-10,
        atol=1e-12,
    )
    return sol.y.T


def test_lotka_volterra_rk4_matches_solve_ivp():
    rng = np.random.default_rng(0)
    u_star = np.array([0.83, 0.041, 1.08, 0.04])
    us = np.stack([u_star] + [u_star * np.exp(0.1 * rng.standard_normal(4)) for _ in range(4)])
    ours = solve_lv_log(torch.as_tensor(us)).exp().numpy()  # batched over the 5 parameter sets
    assert ours.shape == (5, 11, 2)
    for i, u in enumerate(us):
        rel = np.abs(ours[i] / _lv_scipy(u) - 1.0).max()
        assert rel < 5e-6, f"parameter set {i}: relative error {rel:.2e}"


def test_lotka_volterra_rk4_gradient_is_finite_and_batched():
    u = torch.tensor([[0.83, 0.041, 1.08, 0.04]], dtype=torch.float64, requires_grad=True)
    out = solve_lv_log(u.expand(3, 4), substeps=8)
    out.sum().backward()
    assert out.shape == (3, 11, 2)
    assert torch.isfinite(u.grad).all() and (u.grad != 0).all()
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        solve_lv_log(torch.ones(3))


def test_lotka_volterra_fast_path_equals_autograd_path():
    gen = torch.Generator().manual_seed(0)
    u_star = torch.tensor([0.83, 0.041, 1.08, 0.04], dtype=torch.float64)
    u0 = u_star * torch.exp(0.2 * torch.randn(2, 3, 4, generator=gen, dtype=torch.float64))
    w = torch.randn(2, 3, 11, 2, generator=gen, dtype=torch.float64)
    values, grads = [], []
    for solve in (solve_lv_log, solve_lv_log_autograd):
        u = u0.clone().requires_grad_()
        out = solve(u, substeps=16)
        (out * w).sum().backward()
        values.append(out.detach())
        grads.append(u.grad)
    torch.testing.assert_close(values[0], values[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-10)
    # the numpy fallback (no numba) computes the same numbers as the dispatched kernel
    flat = u0.reshape(-1, 4).numpy()
    for a, b in zip(lv._rk4_numpy(flat, 16, True), lv._rk4(flat, 16, True), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


def _elliptic_exact(log_k, x: np.ndarray) -> np.ndarray:
    """p(x) = int_0^x (C - s) / k(s) ds with C fixing p(1) = 0 (source 1, scipy quad)."""
    quad = scipy_integrate.quad
    inv_k = lambda s: math.exp(-log_k(s))  # noqa: E731
    c = quad(lambda s: s * inv_k(s), 0, 1, epsabs=1e-13)[0] / quad(inv_k, 0, 1, epsabs=1e-13)[0]
    return np.array([quad(lambda s: (c - s) * inv_k(s), 0, xi, epsabs=1e-13)[0] for xi in x])


@pytest.mark.parametrize("n", [63, 127])
def test_elliptic_1d_second_order_against_quadrature(n):
    log_k = lambda s: 0.8 * math.sin(2 * math.pi * s) + 0.3 * math.cos(5 * s)  # noqa: E731
    h = 1.0 / (n + 1)
    mid = (np.arange(n + 1) + 0.5) * h
    k_mid = torch.as_tensor(np.exp([log_k(s) for s in mid]))
    p = solve_elliptic_1d(k_mid).numpy()
    x = np.arange(1, n + 1) * h
    err = np.abs(p - _elliptic_exact(log_k, x)).max() / np.abs(p).max()
    assert err < 2.0 * h**2  # second order, constant below 2
    # batched: two diffusivities in one call give the two single solves
    both = solve_elliptic_1d(torch.stack([k_mid, 2 * k_mid])).numpy()
    np.testing.assert_allclose(both[1], p / 2, rtol=1e-12)


def test_darcy_2d_matches_scipy_sparse_assembly():
    sparse = pytest.importorskip("scipy.sparse")
    spsolve = pytest.importorskip("scipy.sparse.linalg").spsolve
    n = 8
    rng = np.random.default_rng(1)
    kappa = np.exp(rng.standard_normal((n, n)))
    a = sparse.lil_matrix((n * n, n * n))
    for i in range(n):
        for j in range(n):
            c = i * n + j
            for di, dj in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                ii, jj = i + di, j + dj
                if 0 <= ii < n and 0 <= jj < n:
                    t = 2 * kappa[i, j] * kappa[ii, jj] / (kappa[i, j] + kappa[ii, jj])
                    a[c, c] += t
                    a[c, ii * n + jj] -= t
                else:
                    a[c, c] += 2 * kappa[i, j]  # boundary face at distance h / 2
    expected = spsolve(a.tocsr(), np.full(n * n, 1.0 / n**2)).reshape(n, n)
    ours = solve_darcy_2d(torch.as_tensor(kappa)).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=1e-14)
    first, second, boundary = darcy_operator_indices(n)
    assert len(first) == len(second) == 2 * n * (n - 1) and boundary.sum() == 4 * n


def test_darcy_2d_constant_permeability_scales_and_is_symmetric():
    p1 = solve_darcy_2d(torch.ones(2, 16, 16, dtype=torch.float64))
    p2 = solve_darcy_2d(torch.full((16, 16), 4.0, dtype=torch.float64))
    torch.testing.assert_close(p1[0] / 4, p2)
    torch.testing.assert_close(p1[0], p1[0].T)
    torch.testing.assert_close(p1[0], p1[0].flip(0))
    # -lap p = 1 on the unit square with p = 0 on the boundary: max p = 0.07367
    assert abs(float(p1[0].max()) - 0.07367) < 2e-3
