"""Monotone triangular maps built from an exactly integrated rectifier.

Component ``k`` of the map (Baptista et al. 2025, eq. 3; Baptista, Marzouk and Zahm's
integrated-rectifier form) is

    T_k(x) = f_k(x_<k) + int_0^{x_k} r_k(x_<k, t) dt,
    r_k(x_<k, t) = a_k(x_<k) + sum_j w_kj(x_<k) rho((t - c_kj(x_<k)) / s_kj(x_<k)) / s_kj(x_<k),

with ``a_k >= min_slope > 0``, ``w_kj >= 0``, ``s_kj > 0`` and ``rho`` the logistic density.
The integrand is positive, so ``T_k`` is strictly increasing in ``x_k`` by construction, its
tails are linear with slope ``a_k`` (bijective on R), and the integral has the closed form

    T_k(x) = f_k + a_k x_k + sum_j w_kj [sigmoid((x_k - c_kj)/s_kj) - sigmoid(-c_kj/s_kj)].

Why a closed-form integrand instead of Gauss-Legendre quadrature of ``softplus(g)``: the
derivative of a quadrature rule is not the integrand, so a quadrature map either reports a
log-determinant that disagrees with its own Jacobian or loses guaranteed monotonicity. Here
``log|det DT| = sum_k log r_k(x_<k, x_k)`` holds exactly, to floating-point rounding.

The functions ``f, a, w, c, s`` of ``x_<k`` (and of a context ``y`` for the conditional map)
come from one masked (MADE) network, Pyro's ``AutoRegressiveNN`` with the identity
permutation, so all ``d`` components are evaluated in one batched pass. The component
formula, its parameter head and the inverse's scalar problems live in
:mod:`pyro_kr.transforms.components`; the inverse's sweeps in
:mod:`pyro_kr.transforms.root_finding`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from pyro.distributions import constraints
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.torch_transform import TransformModule
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN
from torch import nn
from torch.distributions import Transform

from pyro_kr._validation import check_dim, check_dtype, check_event
from pyro_kr.transforms._cache import ParameterAwareCache
from pyro_kr.transforms.components import ComponentParams, MonotoneOptions, ParamHead
from pyro_kr.transforms.root_finding import (
    InverseStats,
    default_tolerance,
    invert_triangular,
    solve_increasing,
)

__all__ = [
    "ComponentParams",
    "ConditionalMonotoneTriangular",
    "MonotoneOptions",
    "MonotoneTriangular",
]


def _shrink_output_layer(made: nn.Module, factor: float = 1e-2) -> None:
    """Scale the MADE's output weights so the map starts near the identity."""
    linears = [m for m in made.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for layer in linears[-1:]:
            layer.weight.mul_(factor)
            layer.bias.zero_()
        if getattr(made, "skip_layer", None) is not None:
            made.skip_layer.weight.mul_(factor)


def _broadcast_batch(owner: str, x: torch.Tensor, context: torch.Tensor) -> torch.Size:
    """Broadcast the batch shapes of ``x (..., d)`` and ``context (..., c)`` or raise."""
    try:
        return torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"{owner} expected input and context with broadcastable batch shapes, got input "
            f"shape {tuple(x.shape)} and context shape {tuple(context.shape)}"
        ) from None


class _MonotoneTriangularMap(ParameterAwareCache, Transform):
    """Stateless monotone triangular map around ``(x, context) -> ComponentParams``.

    ``params_fn`` receives ``x`` and ``context`` with equal batch shapes (``context`` is
    ``None`` for an unconditional map) and returns the component parameters of that batch.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = +1

    def __init__(
        self,
        params_fn: Callable[[torch.Tensor, torch.Tensor | None], ComponentParams],
        dim: int,
        owner: str,
        reference: torch.Tensor,
        *,
        context: torch.Tensor | None = None,
        watched: tuple[torch.Tensor, ...] = (),
    ) -> None:
        super().__init__(cache_size=1)
        self._params_fn, self._dim, self._owner, self._reference = params_fn, dim, owner, reference
        self._context, self._watched = context, watched
        self._cached_log_det: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last_inverse_stats: InverseStats | None = None

    def _watched_tensors(self) -> tuple[torch.Tensor, ...]:
        return self._watched

    def _check(self, x: torch.Tensor, what: str) -> None:
        check_event(self._owner, x, self._dim, what=what)
        check_dtype(self._owner, x, self._reference, what=what)

    def _broadcast(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x`` and the context expanded to their common batch shape."""
        if self._context is None:
            return x, None
        batch = _broadcast_batch(self._owner, x, self._context)
        context = self._context.expand(batch + self._context.shape[-1:])
        return x.expand(batch + x.shape[-1:]), context

    def value_and_derivative(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(T(x), diag DT(x))``, both ``(..., d)`` and differentiable in the parameters."""
        x, context = self._broadcast(x)
        return self._params_fn(x, context).value_and_derivative(x)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, "input")
        y, derivative = self.value_and_derivative(x)
        self._cached_log_det = (x, derivative.log().sum(-1))
        return y

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y, "value to invert")
        tol = default_tolerance(y.dtype)
        stats = InverseStats()
        with torch.no_grad():
            y_b, context = self._broadcast(y.detach())
            batch = y_b.shape[:-1]
            targets = y_b.reshape(-1, self._dim)
            if context is not None:
                context = context.reshape(-1, context.shape[-1])

            def sweep(x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
                z = targets if rows is None else targets[rows]
                ctx = context if context is None or rows is None else context[rows]
                fn, lower, upper = self._params_fn(x, ctx).scalar_problem(z)
                return solve_increasing(fn, z, lower, upper, init=x, tol=tol, stats=stats)

            x = invert_triangular(targets, sweep, self._dim, tol=tol, stats=stats)
        self.last_inverse_stats = stats
        return x.reshape(batch + (self._dim,))

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._refresh_cache()
        cached = self._cached_log_det
        if cached is not None and cached[0] is x:
            return cached[1]
        _, derivative = self.value_and_derivative(x)
        return derivative.log().sum(-1)


class MonotoneTriangular(ParameterAwareCache, TransformModule):
    """Learnable monotone lower-triangular map (integrated rectifier, exact log-det).

    ``T(x) = (T_1(x_1), T_2(x_1, x_2), ..., T_d(x_1..x_d))`` with ``dT_k/dx_k >= min_slope``;
    see the module docstring for the component form. The variable order is fixed (no
    permutation), so stacking several maps keeps the composition lower-triangular.

    Args:
        dim: event dimension ``d``.
        hidden_dims: widths of the MADE conditioner (default ``(max(32, 4d),) * 2``).
        num_bumps: logistic bumps ``K`` per component.
        min_slope: lower bound of every diagonal derivative; also the slope floor in the tails.
        init_weight: initial weight of each bump (small: the map starts near the identity).
        center_range: initial bump centers are spread over ``[-center_range, center_range]``.

    Shapes: input and output ``(..., d)``; ``log_abs_det_jacobian`` returns ``(...)``.
    The inverse is vectorized over the batch, safeguarded (bracketed Newton with bisection),
    and not differentiable; after each call ``last_inverse_stats`` holds the number of
    Gauss-Jacobi sweeps and inner iterations it used.

    Example:
        >>> import torch
        >>> t = MonotoneTriangular(3)
        >>> x = torch.randn(100, 3)
        >>> y = t(x)
        >>> t.log_abs_det_jacobian(x, y).shape
        torch.Size([100])
        >>> bool((t.inv(y) - x).abs().max() < 1e-4)
        True
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = +1

    def __init__(
        self,
        dim: int,
        *,
        hidden_dims: Sequence[int] | None = None,
        num_bumps: int = 8,
        min_slope: float = 1e-2,
        init_weight: float = 1e-2,
        center_range: float = 3.0,
    ) -> None:
        super().__init__(cache_size=1)
        self.dim = check_dim("dim", dim)
        self.options = MonotoneOptions(num_bumps, min_slope, init_weight, center_range)
        hidden = list(hidden_dims) if hidden_dims is not None else [max(32, 4 * dim)] * 2
        with warnings.catch_warnings():  # d = 1 is a valid (if trivial) KR map
            warnings.filterwarnings("ignore", message=".*input_dim = 1.*")
            self.made = AutoRegressiveNN(
                dim,
                hidden,
                param_dims=[self.options.num_params],
                permutation=torch.arange(dim),
                nonlinearity=nn.ELU(),
            )
        _shrink_output_layer(self.made)
        self.head = ParamHead(self.options)
        self.last_inverse_stats: InverseStats | None = None

    def _params(self, x: torch.Tensor, context: torch.Tensor | None = None) -> ComponentParams:
        raw = self.made(x)
        if self.options.num_params == 1:  # pragma: no cover - num_params >= 5 always
            raw = raw.unsqueeze(-2)
        return self.head(raw)

    def _map(self) -> _MonotoneTriangularMap:
        reference = next(self.parameters())
        return _MonotoneTriangularMap(self._params, self.dim, type(self).__name__, reference)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        m = self._map()
        y = m._call(x)
        self._cached_log_det = m._cached_log_det
        return y

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        m = self._map()
        x = m._inverse(y)
        self.last_inverse_stats = m.last_inverse_stats
        return x

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._refresh_cache()
        cached = getattr(self, "_cached_log_det", None)
        if cached is not None and cached[0] is x:
            return cached[1]
        return self._map().log_abs_det_jacobian(x, y)


class ConditionalMonotoneTriangular(ConditionalTransformModule):
    """Monotone triangular map in ``x`` whose every component also depends on a context ``y``.

    ``T(x; y)_k = T_k(y, x_1..x_k)``: the block-triangular map ``(y, x) -> (y, T(x; y))`` of
    docs/amortized.md. ``.condition(y)`` with ``y`` of shape ``(..., c)`` returns a Transform
    batched over the contexts (shapes of ``x`` and ``y`` broadcast, as in Pyro).

    Args:
        dim: event dimension ``d`` of ``x``.
        context_dim: dimension ``c`` of the context.
        hidden_dims, num_bumps, min_slope, init_weight, center_range: as in
            :class:`MonotoneTriangular`.

    Example:
        >>> import torch
        >>> t = ConditionalMonotoneTriangular(2, context_dim=3)
        >>> y = torch.randn(50, 3)
        >>> x = torch.randn(50, 2)
        >>> t.condition(y)(x).shape
        torch.Size([50, 2])
    """

    def __init__(
        self,
        dim: int,
        context_dim: int,
        *,
        hidden_dims: Sequence[int] | None = None,
        num_bumps: int = 8,
        min_slope: float = 1e-2,
        init_weight: float = 1e-2,
        center_range: float = 3.0,
    ) -> None:
        super().__init__()
        self.dim = check_dim("dim", dim)
        self.context_dim = check_dim("context_dim", context_dim)
        self.options = MonotoneOptions(num_bumps, min_slope, init_weight, center_range)
        default_width = max(32, 4 * (dim + context_dim))
        hidden = list(hidden_dims) if hidden_dims is not None else [default_width] * 2
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input_dim = 1.*")
            self.made = ConditionalAutoRegressiveNN(
                dim,
                context_dim,
                hidden,
                param_dims=[self.options.num_params],
                permutation=torch.arange(dim),
                nonlinearity=nn.ELU(),
            )
        _shrink_output_layer(self.made)
        self.head = ParamHead(self.options)

    def condition(self, context: torch.Tensor) -> Transform:
        owner = type(self).__name__
        reference = next(self.parameters())
        check_event(owner, context, self.context_dim, what="context")
        check_dtype(owner, context, reference, what="context")

        def params_fn(x: torch.Tensor, ctx: torch.Tensor | None) -> ComponentParams:
            return self.head(self.made(x, context=ctx))

        return _MonotoneTriangularMap(
            params_fn,
            self.dim,
            owner,
            reference,
            context=context,
            watched=tuple(self.parameters()),
        )
