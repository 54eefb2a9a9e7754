"""The conditional distribution ``q(u | y)`` defined by a trained velocity field."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution, constraints

from pyro_kr.flow_matching.ode import flow_log_prob, rk4_flow

__all__ = ["FlowPosterior"]


class FlowPosterior(Distribution):
    """``q(u | y)``: push ``N(0, I)`` through the flow of ``v(t, y, .)`` from ``t = 0`` to ``1``.

    Batched over many observations: ``y`` of shape ``(*batch, dim_y)`` gives ``batch_shape =
    batch`` and ``event_shape = (dim_u,)``. Sampling integrates the ODE with fixed-step RK4;
    ``log_prob`` integrates it backwards with the exact divergence (instantaneous change of
    variables). An affine standardisation (``u = u_loc + u_scale * u_std``, ``y_std = (y -
    y_loc) / y_scale``) is undone here, with its log-determinant in ``log_prob``.

    Args:
        velocity: velocity module called as ``velocity(t, y_std, u_std)``.
        y: observations, shape ``(*batch, dim_y)`` (original scale).
        y_loc, y_scale: standardisation of ``y``, shape ``(dim_y,)``.
        u_loc, u_scale: standardisation of ``u``, shape ``(dim_u,)``.
        ode_steps: RK4 steps for ``sample`` and ``log_prob``.

    Example:
        >>> from pyro_kr.flow_matching.velocity import VelocityMLP
        >>> v = VelocityMLP(2, 1, width=8, depth=1)
        >>> one, zero = torch.ones(2), torch.zeros(2)
        >>> q = FlowPosterior(v, torch.zeros(3, 1), torch.zeros(1), torch.ones(1), zero, one)
        >>> q.sample((5,)).shape, q.batch_shape
        (torch.Size([5, 3, 2]), torch.Size([3]))
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(
        self,
        velocity: nn.Module,
        y: torch.Tensor,
        y_loc: torch.Tensor,
        y_scale: torch.Tensor,
        u_loc: torch.Tensor,
        u_scale: torch.Tensor,
        *,
        ode_steps: int = 50,
    ) -> None:
        self.velocity = velocity
        self.y_std = (y - y_loc) / y_scale
        self.u_loc = u_loc
        self.u_scale = u_scale
        self.ode_steps = ode_steps
        super().__init__(
            batch_shape=y.shape[:-1], event_shape=u_loc.shape, validate_args=False
        )

    @property
    def mean(self) -> torch.Tensor:  # pragma: no cover - no closed form
        raise NotImplementedError("FlowPosterior has no closed-form mean; average .sample()")

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        """Draw samples of shape ``(*sample_shape, *batch_shape, dim_u)`` (no gradient)."""
        shape = torch.Size(sample_shape) + self.batch_shape + self.event_shape
        with torch.no_grad():
            u0 = torch.randn(shape, dtype=self.u_loc.dtype, device=self.u_loc.device)
            u1 = rk4_flow(self.velocity, u0, self.y_std, steps=self.ode_steps)
        return self.u_loc + self.u_scale * u1

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Log-density of ``value`` of shape ``(..., *batch_shape, dim_u)`` (no gradient)."""
        if value.shape[-1:] != self.event_shape:
            raise ValueError(
                f"FlowPosterior.log_prob expected values of shape (..., {self.event_shape[0]}), "
                f"got {tuple(value.shape)}"
            )
        u_std = (value - self.u_loc) / self.u_scale
        log_q = flow_log_prob(self.velocity, u_std, self.y_std, steps=self.ode_steps)
        return log_q - self.u_scale.log().sum()

    def __repr__(self) -> str:
        return (
            f"FlowPosterior(batch_shape={tuple(self.batch_shape)}, "
            f"event_shape={tuple(self.event_shape)}, ode_steps={self.ode_steps})"
        )

