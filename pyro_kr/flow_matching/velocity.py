"""Block-triangular velocity fields ``v(t, y, u)``: only ``u`` moves, ``y`` is held fixed.

Every velocity model here (and any user ``nn.Module`` with the same call signature) is called as
``velocity(t, y, u)`` with ``t`` of shape ``(..., 1)``, ``y`` of shape ``(..., dim_y)`` and ``u``
of shape ``(..., dim_u)``, and returns the ``u``-velocity of shape ``(..., dim_u)``. The ``y``
velocity is zero by construction, which makes the flow map block-triangular
``(y, u) -> (y, T(y, u))`` (Kerrigan et al. 2024, sec. 6, eq. 8; docs/flow_matching.md).
"""

from __future__ import annotations

import torch
from torch import nn

from pyro_kr._validation import check_dim

__all__ = ["TriangularVelocity", "VelocityMLP", "call_velocity"]


def call_velocity(
    velocity: nn.Module, t: torch.Tensor | float, y: torch.Tensor, u: torch.Tensor
) -> torch.Tensor:
    """Broadcast ``t`` and ``y`` against ``u`` and evaluate ``velocity(t, y, u)``.

    Args:
        velocity: a velocity module (see the module docstring).
        t: time, a float or a tensor broadcastable to ``u.shape[:-1]``.
        y: data, shape broadcastable to ``(..., dim_y)`` with ``u.shape[:-1]``.
        u: parameters, shape ``(..., dim_u)``.

    Returns:
        The ``u``-velocity, shape ``u.shape``.

    Example:
        >>> v = VelocityMLP(2, 1, width=8, depth=2)
        >>> call_velocity(v, 0.5, torch.zeros(1), torch.zeros(4, 2)).shape
        torch.Size([4, 2])
    """
    batch = torch.broadcast_shapes(u.shape[:-1], y.shape[:-1])
    u = u.expand(batch + u.shape[-1:])
    y = y.expand(batch + y.shape[-1:])
    t = torch.as_tensor(t, dtype=u.dtype, device=u.device).expand(batch).unsqueeze(-1)
    return velocity(t, y, u)


class VelocityMLP(nn.Module):
    """MLP ``v(t, y, u)`` on the concatenation ``(u, y, t)`` with SeLU activations (Kerrigan et
    al. 2024, F).

    Args:
        dim_u: dimension of ``u`` (the output dimension).
        dim_y: dimension of ``y``.
        width: hidden width.
        depth: number of hidden layers.
        activation: activation module class (``nn.SELU`` as in the paper).

    Example:
        >>> v = VelocityMLP(2, 3, width=16, depth=2)
        >>> v(torch.zeros(5, 1), torch.zeros(5, 3), torch.zeros(5, 2)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        dim_u: int,
        dim_y: int,
        *,
        width: int = 256,
        depth: int = 4,
        activation: type[nn.Module] = nn.SELU,
    ) -> None:
        super().__init__()
        self.dim_u = check_dim("dim_u", dim_u)
        self.dim_y = check_dim("dim_y", dim_y)
        check_dim("width", width)
        check_dim("depth", depth)
        layers: list[nn.Module] = []
        size = dim_u + dim_y + 1
        for _ in range(depth):
            layers += [nn.Linear(size, width), activation()]
            size = width
        layers.append(nn.Linear(size, dim_u))
        self.net = nn.Sequential(*layers)

    def forward(self, t: torch.Tensor, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Return the ``u``-velocity ``(..., dim_u)`` for ``t (..., 1)``, ``y``, ``u``."""
        return self.net(torch.cat([u, y, t], dim=-1))


class TriangularVelocity(nn.Module):
    """Lower-triangular velocity in ``u``: component ``k`` depends on ``u_1..u_k``, ``t``, ``y``.

    A MADE (``pyro.nn.ConditionalAutoRegressiveNN``, identity permutation, context ``(t, y)``)
    is applied to ``(u_1, ..., u_d, 0)``; its output at position ``k`` (0-based) sees inputs at
    positions ``< k``, so outputs ``1..d`` give the velocity of ``u_k`` from ``u_1..u_k``: the
    Jacobian ``dv/du`` is lower-triangular *with* its diagonal (a strictly
    autoregressive field could only translate ``u_k`` and never rescale it). The flow it
    generates is then a Knothe-Rosenblatt map in ``u`` as well as block-triangular in ``(y, u)``.

    Args:
        dim_u: dimension of ``u``.
        dim_y: dimension of ``y``.
        width: hidden width (at least ``dim_u + 1`` so every degree is represented).
        depth: number of hidden layers.
        activation: activation module class.

    Example:
        >>> v = TriangularVelocity(3, 1, width=16, depth=2)
        >>> v(torch.zeros(4, 1), torch.zeros(4, 1), torch.zeros(4, 3)).shape
        torch.Size([4, 3])
    """

    def __init__(
        self,
        dim_u: int,
        dim_y: int,
        *,
        width: int = 256,
        depth: int = 4,
        activation: type[nn.Module] = nn.SELU,
    ) -> None:
        super().__init__()
        from pyro.nn import ConditionalAutoRegressiveNN

        self.dim_u = check_dim("dim_u", dim_u)
        self.dim_y = check_dim("dim_y", dim_y)
        check_dim("width", width, minimum=dim_u + 1)
        check_dim("depth", depth)
        self.made = ConditionalAutoRegressiveNN(
            dim_u + 1,
            dim_y + 1,
            [width] * depth,
            param_dims=[1],
            permutation=torch.arange(dim_u + 1),
            nonlinearity=activation(),
        )

    def forward(self, t: torch.Tensor, y: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Return the ``u``-velocity ``(..., dim_u)`` for ``t (..., 1)``, ``y``, ``u``."""
        padded = torch.cat([u, torch.zeros_like(u[..., :1])], dim=-1)
        context = torch.cat([t, y], dim=-1)
        return self.made(padded, context)[..., 1:]
