"""``lotka_volterra``: the predator-prey inverse problem of Kerrigan et al. 2024 (sec. 7, app.
F.2).

Exactly the setting of docs/problems.md (and the public code of Kerrigan et al. 2024):

* parameters ``u = (alpha, beta, gamma, delta)`` with ``log u ~ N(m, 0.5 I)``,
  ``m = (-0.125, -3, -0.125, -3)`` (variance 0.5): each site is ``LogNormal(m_i, sqrt(0.5))``;
* ``dp1/dt = alpha p1 - beta p1 p2``, ``dp2/dt = -gamma p2 + delta p1 p2``, ``p(0) = (30, 1)``;
* ``z(u)``: the solution at the 11 times ``linspace(0, 20, 11)``, clamped below at ``1e-4``;
* ``log y ~ N(log z(u), 0.1 I)`` (variance 0.1): 22 numbers ordered time-major
  ``(prey(0), predator(0), prey(2), predator(2), ...)``.

The ODE is solved in log space, ``d log p1/dt = alpha - beta p2``, ``d log p2/dt = -gamma +
delta p1`` (same solution, always positive), by fixed-step classical RK4 with ``substeps``
steps per observation interval. The torch solver (batched, differentiable) and the PyTensor
solver of the PyMC twin (``pytensor.scan``) run the same discrete scheme, so the two log
densities agree to rounding. With the default 64 substeps (step 1/32) the relative error
against ``scipy.integrate.solve_ivp`` (rtol 1e-11) is about 1e-6 near the posterior.

**Stability guard.** Fixed-step RK4 is unstable when the interaction rates ``beta p2`` and
``delta p1`` (the entries of the log-space Jacobian) are large against ``1 / h``: for extreme
rates (``alpha`` in the hundreds, which a guide or a widened prior can propose) the states
overflow and the forward sensitivities become non-finite. Every twin therefore evaluates the
rates as ``exp(c(z))`` with ``z = log beta + log p2`` (and ``log delta + log p1``) and the
smooth cap ``c(z) = z`` for ``z <= GUARD_LEVEL``, ``GUARD_LEVEL + GUARD_WIDTH tanh((z -
GUARD_LEVEL) / GUARD_WIDTH)`` above (``C^2``: value, slope and curvature match at the knot).
The rates stay below ``exp(GUARD_LEVEL + GUARD_WIDTH)``, the largest Jacobian eigenvalue
times ``h`` below ``1.254 exp(GUARD_LEVEL) h = 2.1`` (inside RK4's stability interval
``2.83`` on the imaginary axis), so values and gradients are finite for any finite positive
rates. The guard is **inactive** wherever the reference posterior lives (there ``z <= 1.6`` at
every RK4 stage of all 25,000 reference draws; ``GUARD_LEVEL = 4``) and changes 0.2% of prior
draws, exactly those where the unguarded scheme was already far from the ODE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyro.distributions as dist
import torch
from torch.distributions import Distribution

from pyro_kr.bench.problems.base import Problem

__all__ = ["LotkaVolterra", "solve_lv_log", "solve_lv_log_autograd", "solve_lv_log_pytensor"]

PRIOR_LOC = (-0.125, -3.0, -0.125, -3.0)
PRIOR_VAR = 0.5
NOISE_VAR = 0.1
P0 = (30.0, 1.0)
T_END = 20.0
NUM_INTERVALS = 10
CLAMP = 1e-4
U_STAR = (0.83, 0.041, 1.08, 0.04)
GUARD_LEVEL = 4.0  # log-rate above which the stability guard bends the rates (see above)
GUARD_WIDTH = 1.0  # the rates saturate at exp(GUARD_LEVEL + GUARD_WIDTH)
_LOG2 = math.log(2.0)
Y_OBS = (
    22.7758, 1.0570, 176.1085, 26.7437, 1.9323, 38.7372, 2.7494, 4.2047, 10.1087, 0.9363,
    66.3670, 2.6623, 8.8260, 64.2704, 3.6616, 7.7439, 7.9582, 1.9387, 25.7259, 0.7588,
    53.5384, 46.6839,
)  # fmt: skip


def solve_lv_log(u: torch.Tensor, *, substeps: int = 64) -> torch.Tensor:
    """Log of the Lotka-Volterra solution at ``t = 0, 2, ..., 20`` (fixed-step RK4, batched).

    On CPU the scheme runs outside autograd with forward sensitivities (RK4 applied to the
    variational equations gives the exact derivative of the discrete solution) inside a
    ``torch.autograd.Function``: compiled by numba when it is installed (it ships with
    PyTensor), else vectorized numpy; both are much faster than taping every RK4 stage.
    Elsewhere (CUDA), or with ``torch.is_grad_enabled()`` and a graph needing second
    derivatives, use :func:`solve_lv_log_autograd`, which computes the same numbers.

    Args:
        u: parameters ``(alpha, beta, gamma, delta)``, shape ``(..., 4)``, positive.
        substeps: RK4 steps per observation interval of length 2.

    Returns:
        ``log p(t_k)`` of shape ``(..., 11, 2)`` (prey, predator), unclamped.

    Example:
        >>> import torch
        >>> u = torch.tensor([0.83, 0.041, 1.08, 0.04], dtype=torch.float64)
        >>> log_p = solve_lv_log(u)
        >>> tuple(log_p.shape), round(float(log_p[0, 0].exp()), 6)
        ((11, 2), 30.0)
    """
    if u.shape[-1:] != (4,):
        raise ValueError(f"expected u of shape (..., 4), got shape {tuple(u.shape)}")
    if u.device.type != "cpu":
        return solve_lv_log_autograd(u, substeps=substeps)
    return _LVSolve.apply(u, substeps)


def _guard_numpy(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The stability guard ``c(z)`` and ``log c'(z)`` (elementwise; identity below the knot)."""
    s = np.maximum(z - GUARD_LEVEL, 0.0) / GUARD_WIDTH
    above = z > GUARD_LEVEL
    c = np.where(above, GUARD_LEVEL + GUARD_WIDTH * np.tanh(s), z)
    log_slope = np.where(above, 2.0 * (_LOG2 - s - np.log1p(np.exp(-2.0 * s))), 0.0)
    return c, log_slope


def _rk4_numpy(u: np.ndarray, substeps: int, sensitivities: bool):
    """RK4 in log space for ``u (B, 4)``: ``(B, 11, 2)`` states and ``(B, 11, 2, 4)`` d/du."""
    a, b, g, d = (u[:, i] for i in range(4))
    batch = u.shape[0]
    h = T_END / NUM_INTERVALS / substeps
    s = np.tile(np.log(np.asarray(P0)), (batch, 1))
    sens = np.zeros((batch, 2, 4))
    states, grads = [s], [sens]

    log_b, log_d = np.log(b), np.log(d)

    def field(x, dx):
        c1, l1 = _guard_numpy(log_d + x[:, 0])  # d p1 = exp(c1), d(d p1)/dz = exp(c1 + l1)
        c2, l2 = _guard_numpy(log_b + x[:, 1])
        f = np.stack([a - np.exp(c2), -g + np.exp(c1)], 1)
        if not sensitivities:
            return f, None
        df = np.empty_like(dx)
        df[:, 0] = (-np.exp(c2 + l2))[:, None] * dx[:, 1]
        df[:, 1] = np.exp(c1 + l1)[:, None] * dx[:, 0]
        df[:, 0, 0] += 1.0
        df[:, 0, 1] -= np.exp(c2 + l2 - log_b)
        df[:, 1, 2] -= 1.0
        df[:, 1, 3] += np.exp(c1 + l1 - log_d)
        return f, df

    for _ in range(NUM_INTERVALS):
        for _ in range(substeps):
            k1, q1 = field(s, sens)
            k2, q2 = field(s + (0.5 * h) * k1, sens + (0.5 * h) * q1 if sensitivities else None)
            k3, q3 = field(s + (0.5 * h) * k2, sens + (0.5 * h) * q2 if sensitivities else None)
            k4, q4 = field(s + h * k3, sens + h * q3 if sensitivities else None)
            s = s + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
            if sensitivities:
                sens = sens + (h / 6.0) * (q1 + 2.0 * q2 + 2.0 * q3 + q4)
        states.append(s)
        grads.append(sens)
    return np.stack(states, 1), np.stack(grads, 1)


def _rk4_scalar_kernel(u, substeps, sensitivities, states, grads):  # pragma: no cover (numba)
    """Scalar-loop twin of :func:`_rk4_numpy` for numba (same arithmetic, one set at a time)."""
    h = T_END / NUM_INTERVALS / substeps
    ks = np.empty((4, 2))
    qs = np.empty((4, 2, 4))
    x = np.empty(2)
    dx = np.empty((2, 4))
    for i in range(u.shape[0]):
        a, b, g, d = u[i, 0], u[i, 1], u[i, 2], u[i, 3]
        log_b, log_d = math.log(b), math.log(d)
        s0, s1 = math.log(P0[0]), math.log(P0[1])
        sens = np.zeros((2, 4))
        states[i, 0, 0], states[i, 0, 1] = s0, s1
        grads[i, 0] = sens
        for k in range(NUM_INTERVALS):
            for _ in range(substeps):
                for stage in range(4):
                    c = 0.0 if stage == 0 else (h if stage == 3 else 0.5 * h)
                    if stage == 0:
                        x[0], x[1] = s0, s1
                    else:
                        x[0] = s0 + c * ks[stage - 1, 0]
                        x[1] = s1 + c * ks[stage - 1, 1]
                    z1, z2 = log_d + x[0], log_b + x[1]  # the guard, inlined for numba
                    c1, l1, c2, l2 = z1, 0.0, z2, 0.0
                    if z1 > GUARD_LEVEL:
                        t = (z1 - GUARD_LEVEL) / GUARD_WIDTH
                        c1 = GUARD_LEVEL + GUARD_WIDTH * math.tanh(t)
                        l1 = 2.0 * (_LOG2 - t - math.log1p(math.exp(-2.0 * t)))
                    if z2 > GUARD_LEVEL:
                        t = (z2 - GUARD_LEVEL) / GUARD_WIDTH
                        c2 = GUARD_LEVEL + GUARD_WIDTH * math.tanh(t)
                        l2 = 2.0 * (_LOG2 - t - math.log1p(math.exp(-2.0 * t)))
                    ks[stage, 0] = a - math.exp(c2)
                    ks[stage, 1] = -g + math.exp(c1)
                    if sensitivities:
                        for r in range(2):
                            for p in range(4):
                                dx[r, p] = sens[r, p] + (c * qs[stage - 1, r, p] if stage else 0.0)
                        j1, j2 = math.exp(c1 + l1), math.exp(c2 + l2)
                        for p in range(4):
                            qs[stage, 0, p] = -j2 * dx[1, p]
                            qs[stage, 1, p] = j1 * dx[0, p]
                        qs[stage, 0, 0] += 1.0
                        qs[stage, 0, 1] -= math.exp(c2 + l2 - log_b)
                        qs[stage, 1, 2] -= 1.0
                        qs[stage, 1, 3] += math.exp(c1 + l1 - log_d)
                s0 = s0 + (h / 6.0) * (ks[0, 0] + 2.0 * ks[1, 0] + 2.0 * ks[2, 0] + ks[3, 0])
                s1 = s1 + (h / 6.0) * (ks[0, 1] + 2.0 * ks[1, 1] + 2.0 * ks[2, 1] + ks[3, 1])
                if sensitivities:
                    for r in range(2):
                        for p in range(4):
                            sens[r, p] = sens[r, p] + (h / 6.0) * (
                                qs[0, r, p] + 2.0 * qs[1, r, p] + 2.0 * qs[2, r, p] + qs[3, r, p]
                            )
            states[i, k + 1, 0], states[i, k + 1, 1] = s0, s1
            grads[i, k + 1] = sens


_KERNEL: list[Any] = []  # the numba-compiled kernel, once tried (empty list: not yet)


def _rk4(u: np.ndarray, substeps: int, sensitivities: bool):
    """Dispatch to the numba kernel when numba is installed, else to :func:`_rk4_numpy`."""
    if not _KERNEL:
        try:
            import numba

            _KERNEL.append(numba.njit(cache=True)(_rk4_scalar_kernel))
        except ImportError:  # numba ships with pytensor; without it use numpy
            _KERNEL.append(None)
    if _KERNEL[0] is None:
        return _rk4_numpy(u, substeps, sensitivities)
    states = np.empty((u.shape[0], NUM_INTERVALS + 1, 2))
    grads = np.zeros((u.shape[0], NUM_INTERVALS + 1, 2, 4))
    _KERNEL[0](np.ascontiguousarray(u), substeps, sensitivities, states, grads)
    return states, grads


class _LVSolve(torch.autograd.Function):
    """RK4 solve with exact forward-sensitivity gradients (numpy, CPU)."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, substeps: int) -> torch.Tensor:  # type: ignore[override]
        flat = u.detach().reshape(-1, 4).to(torch.float64).numpy()
        states, grads = _rk4(flat, substeps, u.requires_grad)
        ctx.batch_shape = u.shape[:-1]
        ctx.save_for_backward(torch.as_tensor(grads, dtype=u.dtype))
        return torch.as_tensor(states, dtype=u.dtype).reshape(*u.shape[:-1], 11, 2)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (grads,) = ctx.saved_tensors
        g = torch.einsum("btk,btkp->bp", grad_out.reshape(-1, 11, 2), grads)
        return g.reshape(*ctx.batch_shape, 4), None


def _guard_torch(z: torch.Tensor) -> torch.Tensor:
    """The stability guard ``c(z)`` (identity below ``GUARD_LEVEL``, smooth cap above)."""
    bent = GUARD_LEVEL + GUARD_WIDTH * torch.tanh((z - GUARD_LEVEL).clamp_min(0) / GUARD_WIDTH)
    return torch.where(z > GUARD_LEVEL, bent, z)


def solve_lv_log_autograd(u: torch.Tensor, *, substeps: int = 64) -> torch.Tensor:
    """:func:`solve_lv_log` taped by torch autograd (any device, higher derivatives).

    Example:
        >>> import torch
        >>> u = torch.tensor([0.83, 0.041, 1.08, 0.04], dtype=torch.float64)
        >>> bool(torch.allclose(solve_lv_log_autograd(u, substeps=4), solve_lv_log(u, substeps=4)))
        True
    """
    if u.shape[-1:] != (4,):
        raise ValueError(f"expected u of shape (..., 4), got shape {tuple(u.shape)}")
    a, b, g, d = u.unbind(-1)
    c0 = torch.stack([a, -g], -1)  # constant part of the log-space vector field
    log_c1 = torch.stack([b, d], -1).log()  # log-coefficient of exp(other species)
    sign = torch.tensor([-1.0, 1.0], dtype=u.dtype, device=u.device)
    s = torch.tensor(P0, dtype=u.dtype, device=u.device).log().expand(*u.shape[:-1], 2)
    h = T_END / NUM_INTERVALS / substeps

    def field(state: torch.Tensor) -> torch.Tensor:
        return c0 + sign * _guard_torch(log_c1 + state.flip(-1)).exp()

    out = [s]
    for _ in range(NUM_INTERVALS):
        for _ in range(substeps):
            k1 = field(s)
            k2 = field(s + (0.5 * h) * k1)
            k3 = field(s + (0.5 * h) * k2)
            k4 = field(s + h * k3)
            s = s + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        out.append(s)
    return torch.stack(out, -2)


def solve_lv_log_pytensor(alpha: Any, beta: Any, gamma: Any, delta: Any, *, substeps: int = 64):
    """The same RK4 scheme as :func:`solve_lv_log` for scalar PyTensor variables.

    Returns:
        A PyTensor matrix ``(11, 2)`` of ``log p(t_k)``.

    Example:
        >>> import pytensor.tensor as pt
        >>> a = pt.constant(0.83)
        >>> solve_lv_log_pytensor(a, a * 0.05, a * 1.3, a * 0.05).eval().shape
        (11, 2)
    """
    import pytensor
    import pytensor.tensor as pt

    h = T_END / NUM_INTERVALS / substeps

    def guard(z):  # the stability guard c(z) of solve_lv_log
        bent = GUARD_LEVEL + GUARD_WIDTH * pt.tanh(pt.maximum(z - GUARD_LEVEL, 0) / GUARD_WIDTH)
        return pt.switch(z > GUARD_LEVEL, bent, z)

    def step(s1, s2, a, b, g, d):
        log_b, log_d = pt.log(b), pt.log(d)

        def field(x1, x2):
            return a - pt.exp(guard(log_b + x2)), -g + pt.exp(guard(log_d + x1))

        k1 = field(s1, s2)
        k2 = field(s1 + 0.5 * h * k1[0], s2 + 0.5 * h * k1[1])
        k3 = field(s1 + 0.5 * h * k2[0], s2 + 0.5 * h * k2[1])
        k4 = field(s1 + h * k3[0], s2 + h * k3[1])
        s1 = s1 + (h / 6.0) * (k1[0] + 2.0 * k2[0] + 2.0 * k3[0] + k4[0])
        s2 = s2 + (h / 6.0) * (k1[1] + 2.0 * k2[1] + 2.0 * k3[1] + k4[1])
        return s1, s2

    s0 = [pt.as_tensor_variable(np.float64(math.log(p))) for p in P0]
    s1, s2 = pytensor.scan(
        step,
        outputs_info=s0,
        non_sequences=[pt.as_tensor_variable(v) for v in (alpha, beta, gamma, delta)],
        n_steps=NUM_INTERVALS * substeps,
        return_updates=False,
    )
    states = pt.stack([s1, s2], axis=1)[substeps - 1 :: substeps]
    return pt.concatenate([pt.stack(s0)[None, :], states], axis=0)


@dataclass(frozen=True)
class LotkaVolterra(Problem):
    """Lotka-Volterra parameter inference; scalar sites ``alpha, beta, gamma, delta``.

    Args:
        substeps: RK4 steps per observation interval (both twins use the same value).

    Example:
        >>> import pyro_kr.bench.problems as problems
        >>> p = problems.get("lotka_volterra")
        >>> u, y = p.simulate(2, seed=0)
        >>> tuple(u["alpha"].shape), tuple(y.shape)
        ((2,), (2, 22))
    """

    name: ClassVar[str] = "lotka_volterra"
    substeps: int = 64

    def __post_init__(self) -> None:
        if isinstance(self.substeps, bool) or not isinstance(self.substeps, int):
            raise TypeError(f"substeps must be an int, got {type(self.substeps).__name__}")
        if self.substeps < 1:
            raise ValueError(f"substeps must be >= 1, got {self.substeps}")

    @property
    def y_shape(self) -> tuple[int, ...]:
        return (2 * (NUM_INTERVALS + 1),)

    def prior(self) -> dict[str, Distribution]:
        scale = math.sqrt(PRIOR_VAR)
        return {
            k: dist.LogNormal(torch.tensor(m, dtype=torch.float64), scale)
            for k, m in zip(("alpha", "beta", "gamma", "delta"), PRIOR_LOC, strict=True)
        }

    def log_solution(self, u: dict[str, torch.Tensor]) -> torch.Tensor:
        """``log z(u)``: clamped log solution, time-major, shape ``(*batch, 22)``."""
        stacked = torch.stack(torch.broadcast_tensors(*(u[k] for k in self.param_names)), -1)
        log_p = solve_lv_log(stacked, substeps=self.substeps)
        return log_p.clamp_min(math.log(CLAMP)).flatten(-2)

    def likelihood(self, u: dict[str, torch.Tensor]) -> Distribution:
        return dist.LogNormal(self.log_solution(u), math.sqrt(NOISE_VAR)).to_event(1)

    def observation_values(self) -> list[torch.Tensor]:
        return [torch.tensor(Y_OBS, dtype=torch.float64)]

    def pymc_model(self, y: Any) -> Any:
        import pymc as pm
        import pytensor.tensor as pt

        y = self._check_y(torch.as_tensor(np.asarray(y), dtype=torch.float64)).numpy()
        scale = math.sqrt(PRIOR_VAR)
        with pm.Model() as m:
            sites = [
                pm.LogNormal(k, mu=loc, sigma=scale)
                for k, loc in zip(self.param_names, PRIOR_LOC, strict=True)
            ]
            log_p = solve_lv_log_pytensor(*sites, substeps=self.substeps)
            log_z = pt.maximum(log_p, math.log(CLAMP)).flatten()
            pm.LogNormal("y", mu=log_z, sigma=math.sqrt(NOISE_VAR), observed=y)
        return m
