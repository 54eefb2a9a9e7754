"""Vectorized inversion of monotone triangular maps.

Written by hand because neither torch nor Pyro offers a batched, bracketed scalar root
finder: every entry of the batch solves its own increasing scalar equation, with Newton
steps that fall back to bisection whenever they leave the current bracket.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ScalarFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def default_tolerance(dtype: torch.dtype) -> float:
    """Relative step tolerance of the inverse: 1e-12 in float64, 4 ulp in float32."""
    if dtype == torch.float64:
        return 1e-12
    return 4.0 * torch.finfo(dtype).eps


def solve_increasing(
    fn: ScalarFn,
    target: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    *,
    init: torch.Tensor | None = None,
    tol: float,
    max_iter: int = 100,
) -> torch.Tensor:
    """Solve ``fn(x) = target`` elementwise for an increasing ``fn`` with a known bracket.

    Args:
        fn: maps ``x`` to ``(value, derivative)``, both of the shape of ``x``; increasing.
        target: right-hand side, any shape.
        lower, upper: a bracket with ``fn(lower) <= target <= fn(upper)``, shape of ``target``.
        init: starting point (clamped into the bracket); the midpoint when ``None``.
        tol: stop once every step is below ``tol * (1 + |x|)``.
        max_iter: iteration cap; bisection halves the bracket each time it is used, so 100
            iterations reach machine precision from any finite bracket.

    Returns:
        ``x`` of the shape of ``target``.
    """
    x = 0.5 * (lower + upper) if init is None else torch.minimum(torch.maximum(init, lower), upper)
    for _ in range(max_iter):
        value, derivative = fn(x)
        residual = value - target
        lower = torch.where(residual < 0, x, lower)
        upper = torch.where(residual > 0, x, upper)
        newton = x - residual / derivative
        inside = (newton >= lower) & (newton <= upper) & torch.isfinite(newton)
        x_new = torch.where(inside, newton, 0.5 * (lower + upper))
        step = (x_new - x).abs()
        x = x_new
        if bool((step <= tol * (1.0 + x.abs())).all()):
            break
    return x


def invert_triangular(
    z: torch.Tensor,
    solve_sweep: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    *,
    tol: float,
) -> torch.Tensor:
    """Invert a lower-triangular map by Gauss-Jacobi sweeps, exact after at most ``dim`` sweeps.

    ``solve_sweep(x)`` evaluates the conditioner at the current iterate ``x`` (so coordinate
    ``k`` sees ``x_<k``) and solves every scalar equation ``T_k(x_<k, t) = z_k`` for ``t``.
    After sweep ``s`` the first ``s`` coordinates are exact, because coordinate ``k`` only
    depends on coordinates before it; the loop stops earlier once the iterate is a fixed point,
    which is the inverse itself. One batched pass of the network per sweep, instead of one pass
    per coordinate, is what makes the inverse cheap when the map is near a fixed point early.
    """
    x = z.clone()
    for _ in range(dim):
        x_new = solve_sweep(x)
        done = bool(((x_new - x).abs() <= tol * (1.0 + x_new.abs())).all())
        x = x_new
        if done:
            break
    return x
