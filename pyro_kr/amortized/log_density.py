"""Differentiable ``log q(z | y)`` of a conditioned KR map, for maximum-likelihood training.

``log q(z) = log N(T^{-1}(z)) - log|det DT(T^{-1}(z))|`` needs the inverse map. The affine
layer's inverse is a triangular solve (differentiable as is). A monotone layer's inverse is a
root finder that does not record gradients, so after it converges at ``x*`` we apply ``d``
differentiable Jacobi corrections

    x <- x - (T(x; theta) - z) / diag(DT(x))     (diagonal detached),

which leave the value at ``x*`` and, because ``I - D^{-1} DT`` is strictly lower triangular
(nilpotent), give after ``d`` steps exactly the implicit-function derivative
``dx*/dtheta = -DT^{-1} dT/dtheta`` (docs/maps.md: triangular Jacobians).
"""

from __future__ import annotations

import math

import torch
from torch.distributions import ComposeTransform, Transform

__all__ = ["conditioned_log_prob"]


def _layers(transform: Transform) -> list[Transform]:
    if isinstance(transform, ComposeTransform):
        return [p for part in transform.parts for p in _layers(part)]
    return [transform]


def _invert_layer(layer: Transform, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, log|det DT(x)|)`` with ``T(x) = z``, both differentiable in the parameters."""
    # ``_inverse`` is torch's Transform hook: the inverse without the transform's cache
    if not hasattr(layer, "value_and_derivative"):  # affine: exact, differentiable inverse
        x = layer._inverse(z)
        return x, layer.log_abs_det_jacobian(x, z)
    with torch.no_grad():
        x = layer._inverse(z.detach())
    for _ in range(z.shape[-1]):
        value, derivative = layer.value_and_derivative(x)
        x = x - (value - z) / derivative.detach()
    _, derivative = layer.value_and_derivative(x)
    return x, derivative.log().sum(-1)


def conditioned_log_prob(transform: Transform, z: torch.Tensor) -> torch.Tensor:
    """``log q(z)`` for ``q = transform # N(0, I)``; differentiable in the map's parameters.

    Args:
        transform: a conditioned pyro_kr map (a composition of conditioned monotone and affine
            layers), batched over contexts.
        z: packed latents ``(..., d)`` broadcasting with the context batch.

    Returns:
        ``(...)`` log densities.

    Example:
        >>> import torch
        >>> from pyro_kr import ConditionalTriangularAffine
        >>> t = ConditionalTriangularAffine(2, context_dim=1).condition(torch.zeros(3, 1))
        >>> conditioned_log_prob(t, torch.zeros(3, 2)).shape
        torch.Size([3])
    """
    log_det = torch.zeros((), dtype=z.dtype, device=z.device)
    x = z
    for layer in reversed(_layers(transform)):
        x, ld = _invert_layer(layer, x)
        log_det = log_det + ld
    d = x.shape[-1]
    base = -0.5 * (x**2).sum(-1) - 0.5 * d * math.log(2 * math.pi)
    return base - log_det
