"""The closed-form component of the monotone maps: parameters, their head, the inverse's
scalar problems.

``ComponentParams`` evaluates ``T_k(x_<k, x_k) = f_k + a_k x_k + sum_j w_kj [sigmoid((x_k -
c_kj) / s_kj) - sigmoid(-c_kj / s_kj)]`` and its diagonal derivative (see
:mod:`pyro_kr.transforms.monotone` for the maths); ``ParamHead`` turns a MADE output into
those parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from pyro_kr._validation import check_dim
from pyro_kr.transforms.root_finding import ScalarFn

__all__ = ["ComponentParams", "MonotoneOptions", "ParamHead"]

_MIN_BUMP_SCALE = 1e-3


def _softplus_inverse(value: float) -> float:
    return value + math.log(-math.expm1(-value))


@dataclass(frozen=True)
class ComponentParams:
    """Per-component parameters, each of shape ``(..., d)`` or ``(..., d, K)`` for bumps."""

    shift: torch.Tensor
    slope: torch.Tensor
    weight: torch.Tensor
    center: torch.Tensor
    scale: torch.Tensor

    def value_and_derivative(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``T_k(x_<k, x_k)`` and ``dT_k/dx_k``, both ``(..., d)``, for ``x (..., d)``."""
        z = (x.unsqueeze(-1) - self.center) / self.scale
        s = torch.sigmoid(z)
        offset = torch.sigmoid(-self.center / self.scale)
        value = self.shift + self.slope * x + (self.weight * (s - offset)).sum(-1)
        derivative = self.slope + (self.weight * s * (1.0 - s) / self.scale).sum(-1)
        return value, derivative

    def scalar_problem(self, y: torch.Tensor) -> tuple[ScalarFn, torch.Tensor, torch.Tensor]:
        """Return ``fn``, ``lower``, ``upper`` for solving ``T_k(x_<k, t) = y_k`` in ``t``.

        ``fn(t)`` gives ``(T_k(x_<k, t), dT_k/dt)`` like :meth:`value_and_derivative`, with
        every quantity that does not depend on ``t`` computed once (this is the inner loop
        of the inverse). The bracket is exact up to rounding, widened by a few ulp of its
        inputs: the bumps add a value in ``[0, sum_j w_kj]`` to the linear part, and where
        every bump is saturated the root sits exactly on a bracket end.
        """
        inv_scale = self.scale.reciprocal()
        neg_center = -self.center * inv_scale  # z = t / s - c / s
        weighted_offset = (self.weight * torch.sigmoid(neg_center)).sum(-1)
        base = self.shift - weighted_offset
        weight_over_scale = self.weight * inv_scale
        slope, weight = self.slope, self.weight

        def fn(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            s = torch.sigmoid(torch.addcmul(neg_center, t.unsqueeze(-1), inv_scale))
            value = torch.addcmul(base, slope, t) + (weight * s).sum(-1)
            derivative = slope + (weight_over_scale * (s - s * s)).sum(-1)
            return value, derivative

        rest = y - base
        total = weight.sum(-1)
        lower, upper = (rest - total) / slope, rest / slope
        eps = torch.finfo(y.dtype).eps
        slack = 8 * eps * ((y.abs() + base.abs() + total) / slope + lower.abs() + upper.abs())
        return fn, lower - slack, upper + slack


@dataclass(frozen=True)
class MonotoneOptions:
    """Options shared by the unconditional and the conditional monotone maps."""

    num_bumps: int = 8
    min_slope: float = 1e-2
    init_weight: float = 1e-2
    center_range: float = 3.0

    def __post_init__(self) -> None:
        check_dim("num_bumps", self.num_bumps)
        if not 0 < self.min_slope < 1:
            raise ValueError(f"min_slope must be in (0, 1), got {self.min_slope}")
        if not self.init_weight > 0:
            raise ValueError(f"init_weight must be > 0, got {self.init_weight}")
        if not self.center_range > 0:
            raise ValueError(f"center_range must be > 0, got {self.center_range}")

    @property
    def num_params(self) -> int:
        return 2 + 3 * self.num_bumps


class ParamHead(nn.Module):
    """Turns the MADE output ``(..., 2 + 3K, d)`` into :class:`ComponentParams`.

    At initialization the raw output is near zero and the map is near the identity:
    ``f = 0``, ``a = 1``, bump weights ``init_weight``, centers spread over
    ``[-center_range, center_range]``.
    """

    def __init__(self, options: MonotoneOptions) -> None:
        super().__init__()
        k = options.num_bumps
        self.options = options
        spacing = 2 * options.center_range / max(k - 1, 1)
        centers = torch.linspace(-options.center_range, options.center_range, k)
        self.register_buffer("centers", centers)
        self.slope_offset = _softplus_inverse(1.0 - options.min_slope)
        self.weight_offset = _softplus_inverse(options.init_weight)
        self.scale_offset = _softplus_inverse(spacing)

    def forward(self, raw: torch.Tensor) -> ComponentParams:
        k, opts = self.options.num_bumps, self.options
        # One split, not five slices: the same values, and the backward pass concatenates the
        # five gradients once instead of zero-filling and adding five full-size tensors.
        shift, slope, weight, center, scale = raw.transpose(-1, -2).split([1, 1, k, k, k], -1)
        shift = shift.squeeze(-1)  # (..., d); the rest (..., d, K)
        slope = opts.min_slope + F.softplus(slope.squeeze(-1) + self.slope_offset)
        weight = F.softplus(weight + self.weight_offset)
        center = self.centers.to(raw) + center
        scale = _MIN_BUMP_SCALE + F.softplus(scale + self.scale_offset)
        return ComponentParams(shift, slope, weight, center, scale)
