"""Fixed-step RK4 integration of ``du/dt = v(t, y, u)`` and of the log-density along the flow.

The density of ``u_1`` obtained by flowing ``u_0 ~ N(0, I)`` follows the instantaneous change of
variables ``d/dt log p_t(u_t) = -div_u v(t, y, u_t)``; the divergence is computed exactly (one
autograd pass per coordinate), which is affordable for the small ``dim_u`` of posteriors.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pyro_kr._validation import check_dim
from pyro_kr.flow_matching.velocity import call_velocity

__all__ = ["divergence", "flow_log_prob", "rk4_flow"]


def rk4_flow(
    velocity: nn.Module,
    u: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int = 50,
    t0: float = 0.0,
    t1: float = 1.0,
) -> torch.Tensor:
    """Integrate ``du/dt = v(t, y, u)`` from ``t0`` to ``t1`` with ``steps`` RK4 steps.

    Args:
        velocity: velocity module called as ``velocity(t, y, u)``.
        u: initial state, shape ``(..., dim_u)``.
        y: data held fixed, broadcastable to ``(..., dim_y)``.
        steps: number of RK4 steps.
        t0: start time.
        t1: end time (``t1 < t0`` integrates backwards).

    Returns:
        The state at ``t1``, shape of ``u`` broadcast with ``y``'s batch shape.

    Example:
        >>> class Shift(nn.Module):
        ...     def forward(self, t, y, u):
        ...         return torch.ones_like(u)
        >>> rk4_flow(Shift(), torch.zeros(2, 1), torch.zeros(1), steps=4)
        tensor([[1.],
                [1.]])
    """
    check_dim("steps", steps)
    h = (t1 - t0) / steps
    for k in range(steps):
        t = t0 + k * h
        k1 = call_velocity(velocity, t, y, u)
        k2 = call_velocity(velocity, t + h / 2, y, u + h / 2 * k1)
        k3 = call_velocity(velocity, t + h / 2, y, u + h / 2 * k2)
        k4 = call_velocity(velocity, t + h, y, u + h * k3)
        u = u + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return u


def divergence(
    velocity: nn.Module, t: float, y: torch.Tensor, u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(v, div_u v)`` at ``(t, y, u)``, the trace computed exactly by autograd.

    Args:
        velocity: velocity module.
        t: time.
        y: data, broadcastable to ``(..., dim_y)``.
        u: state, shape ``(..., dim_u)``.

    Returns:
        ``v`` of shape ``(..., dim_u)`` and the divergence of shape ``(...)`` (both detached).

    Example:
        >>> class Scale(nn.Module):
        ...     def forward(self, t, y, u):
        ...         return 2 * u
        >>> divergence(Scale(), 0.0, torch.zeros(1), torch.ones(3, 2))[1]
        tensor([4., 4., 4.])
    """
    with torch.enable_grad():
        u = u.detach().requires_grad_(True)
        v = call_velocity(velocity, t, y, u)
        div = torch.zeros(v.shape[:-1], dtype=v.dtype, device=v.device)
        dim = v.shape[-1]
        if v.requires_grad:
            for k in range(dim):
                (grad,) = torch.autograd.grad(
                    v[..., k].sum(), u, retain_graph=k < dim - 1, allow_unused=True
                )
                if grad is not None:
                    div = div + grad[..., k]
    return v.detach(), div.detach()


def flow_log_prob(
    velocity: nn.Module, u1: torch.Tensor, y: torch.Tensor, *, steps: int = 50
) -> torch.Tensor:
    """Log-density of ``u1`` under the flow of ``N(0, I)`` through ``v`` from ``t = 0`` to ``1``.

    Integrates the augmented system ``(u, l)' = (v, div v)`` backwards from ``t = 1`` with RK4;
    then ``log q(u1 | y) = log N(u0; 0, I) - int_0^1 div v(t, y, u_t) dt``.

    Args:
        velocity: velocity module.
        u1: points, shape ``(..., dim_u)``.
        y: data, broadcastable to ``(..., dim_y)``.
        steps: number of RK4 steps.

    Returns:
        Log-density, shape ``(...)``.

    Example:
        >>> class Zero(nn.Module):
        ...     def forward(self, t, y, u):
        ...         return torch.zeros_like(u)
        >>> flow_log_prob(Zero(), torch.zeros(1, 1), torch.zeros(1), steps=2)
        tensor([-0.9189])
    """
    check_dim("steps", steps)
    h = -1.0 / steps
    u = u1.detach()
    batch = torch.broadcast_shapes(u.shape[:-1], y.shape[:-1])
    integral = torch.zeros(batch, dtype=u.dtype, device=u.device)
    for k in range(steps):
        t = 1.0 + k * h
        k1, d1 = divergence(velocity, t, y, u)
        k2, d2 = divergence(velocity, t + h / 2, y, u + h / 2 * k1)
        k3, d3 = divergence(velocity, t + h / 2, y, u + h / 2 * k2)
        k4, d4 = divergence(velocity, t + h, y, u + h * k3)
        u = u + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        integral = integral + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
    # integral = int_1^0 div dt = -int_0^1 div dt
    dim = u.shape[-1]
    log_base = -0.5 * u.square().sum(-1) - 0.5 * dim * math.log(2 * math.pi)
    return log_base + integral
