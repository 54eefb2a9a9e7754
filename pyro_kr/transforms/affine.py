"""Lower-triangular affine maps ``T(x) = b + L x``: the exact KR map between Gaussians.

For ``mu = N(0, I)`` and ``nu = N(m, S)`` the Knothe-Rosenblatt map is ``x -> m + cholesky(S) x``
(docs/maps.md), so these maps are the closed-form reference for every other family.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from pyro.distributions import constraints
from pyro.distributions.conditional import ConditionalTransformModule
from pyro.distributions.torch_transform import TransformModule
from torch import nn
from torch.distributions import Transform
from torch.nn import functional as F

from pyro_kr._validation import check_dim, check_dtype, check_event
from pyro_kr.transforms._cache import ParameterAwareCache
from pyro_kr.transforms.tril_ops import TrilCache, tril_matmul, tril_solve

__all__ = ["ConditionalTriangularAffine", "TriangularAffine"]

_MIN_DIAG = 1e-6  # keeps the diagonal strictly positive when the softplus underflows
#: The smallest diagonal entry of ``L`` a :class:`TriangularAffine` represents: scales below
#: it cannot be set (see :meth:`TriangularAffine.set_scale_tril`).
MIN_DIAGONAL = _MIN_DIAG


def _softplus_inverse(value: float) -> float:
    return value + math.log(-math.expm1(-value))


def affine_forward(x: torch.Tensor, loc: torch.Tensor, scale_tril: torch.Tensor) -> torch.Tensor:
    """``loc + L @ x`` for ``x (..., d)``, ``loc (..., d)``, ``scale_tril = L (..., d, d)``."""
    if scale_tril.dim() == 2:  # one factor for the whole batch: a single matrix product
        return loc + x @ scale_tril.T
    return loc + (scale_tril @ x.unsqueeze(-1)).squeeze(-1)


def affine_inverse(y: torch.Tensor, loc: torch.Tensor, scale_tril: torch.Tensor) -> torch.Tensor:
    """Solve ``loc + scale_tril @ x = y`` by forward substitution (batched)."""
    diff = y - loc
    if scale_tril.dim() == 2:  # one factor: one solve with every batch row as a right side
        flat = diff.reshape(-1, diff.shape[-1])
        x = torch.linalg.solve_triangular(scale_tril, flat.T, upper=False).T
        return x.reshape(diff.shape)
    rhs = diff.unsqueeze(-1)
    batch = torch.broadcast_shapes(rhs.shape[:-2], scale_tril.shape[:-2])
    rhs = rhs.expand(batch + rhs.shape[-2:])
    scale_tril = scale_tril.expand(batch + scale_tril.shape[-2:])
    return torch.linalg.solve_triangular(scale_tril, rhs, upper=False).squeeze(-1)


def affine_log_det(scale_tril: torch.Tensor, batch_shape: torch.Size) -> torch.Tensor:
    """``sum(log(diag(L)))`` broadcast to ``batch_shape``."""
    log_det = scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return log_det.expand(torch.broadcast_shapes(batch_shape, log_det.shape))


class TriangularAffine(ParameterAwareCache, TransformModule):
    """Learnable lower-triangular affine map ``T(x) = loc + L x`` with ``diag(L) > 0``.

    Exact for Gaussian targets: ``TriangularAffine(d, loc=m, scale_tril=cholesky(S))`` pushes
    ``N(0, I)`` to ``N(m, S)`` and is the KR map between them (Baptista et al. 2025, sec. 2).

    Args:
        dim: event dimension ``d``.
        loc: optional initial shift, shape ``(d,)`` (default zeros).
        scale_tril: optional initial factor, shape ``(d, d)``, lower-triangular with positive
            diagonal (default ``init_scale * I``).
        init_scale: diagonal of the default initial factor.

    Shapes: input and output ``(..., d)``; ``log_abs_det_jacobian`` returns ``(...)``.

    Example:
        >>> import torch
        >>> S = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
        >>> t = TriangularAffine(2, loc=torch.ones(2), scale_tril=torch.linalg.cholesky(S))
        >>> x = torch.randn(5, 2)
        >>> torch.allclose(t.inv(t(x)), x, atol=1e-6)
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
        loc: torch.Tensor | None = None,
        scale_tril: torch.Tensor | None = None,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__(cache_size=1)
        self.dim = check_dim("dim", dim)
        if init_scale <= 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        self.loc = nn.Parameter(torch.zeros(dim))
        self.unconstrained_diag = nn.Parameter(torch.full((dim,), _softplus_inverse(init_scale)))
        self.off_diag = nn.Parameter(torch.zeros(dim, dim))
        self.register_buffer("_strict_lower", torch.ones(dim, dim).tril(-1), persistent=False)
        with torch.no_grad():
            if loc is not None:
                self.set_loc(loc)
            if scale_tril is not None:
                self.set_scale_tril(scale_tril)

    @property
    def scale_tril(self) -> torch.Tensor:
        """The factor ``L``, shape ``(d, d)``, lower-triangular with positive diagonal."""
        diag = F.softplus(self.unconstrained_diag) + _MIN_DIAG
        return self.off_diag * self._strict_lower + torch.diag_embed(diag)

    @torch.no_grad()
    def set_loc(self, loc: torch.Tensor) -> None:
        """Overwrite the shift with ``loc`` of shape ``(d,)``."""
        check_event("TriangularAffine.set_loc", torch.as_tensor(loc), self.dim, what="loc")
        self.loc.copy_(torch.as_tensor(loc))

    @torch.no_grad()
    def set_scale_tril(self, scale_tril: torch.Tensor) -> None:
        """Overwrite ``L`` with a lower-triangular ``(d, d)`` matrix with positive diagonal."""
        scale_tril = torch.as_tensor(scale_tril, dtype=self.loc.dtype, device=self.loc.device)
        if scale_tril.shape != (self.dim, self.dim):
            raise ValueError(
                f"scale_tril must have shape ({self.dim}, {self.dim}), "
                f"got {tuple(scale_tril.shape)}"
            )
        diag = scale_tril.diagonal()
        if bool(scale_tril.triu(1).abs().gt(0).any()):
            raise ValueError("scale_tril must be lower-triangular (zeros above the diagonal)")
        if not bool((diag > _MIN_DIAG).all()):
            raise ValueError(
                f"scale_tril's diagonal must exceed {_MIN_DIAG:g} (the smallest scale the map "
                f"represents), got a smallest entry of {float(diag.min()):.3g}"
            )
        self.unconstrained_diag.copy_(torch.log(torch.expm1(diag - _MIN_DIAG)))
        self.off_diag.copy_(scale_tril.tril(-1))

    def _check(self, x: torch.Tensor, what: str) -> None:
        check_event(type(self).__name__, x, self.dim, what=what)
        check_dtype(type(self).__name__, x, self.loc, what=what)

    def _diag_and_tril(self) -> tuple[torch.Tensor, torch.Tensor]:
        # No d x d temporary per call (see pyro_kr.transforms.tril_ops): the detached factor
        # is cached per parameter state, the gradients come from tril_matmul / tril_solve.
        diag = F.softplus(self.unconstrained_diag) + _MIN_DIAG
        if not hasattr(self, "_tril_cache"):
            self._tril_cache = TrilCache()
        return diag, self._tril_cache.get(self.off_diag, self.unconstrained_diag, diag)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, "input")
        diag, tril = self._diag_and_tril()
        return self.loc + tril_matmul(x, self.off_diag, diag, tril)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y, "value to invert")
        diag, tril = self._diag_and_tril()
        return tril_solve(y - self.loc, self.off_diag, diag, tril)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        diag = F.softplus(self.unconstrained_diag) + _MIN_DIAG
        log_det = diag.log().sum()
        return log_det.expand(x.shape[:-1])


class _TriangularAffineMap(ParameterAwareCache, Transform):
    """``T(x) = loc + L x`` with ``loc (..., d)`` and ``L (..., d, d)`` computed from a context.

    ``params_fn()`` returns ``(loc, L)``; it runs lazily and again whenever the watched
    parameters change (an optimizer step) or the grad mode flips, so a conditioned map that is
    kept across training steps follows the network, like the conditional monotone map.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = +1

    def __init__(
        self,
        params_fn: Callable[[], tuple[torch.Tensor, torch.Tensor]],
        context_batch: torch.Size,
        owner: str,
        watched: tuple[torch.Tensor, ...],
    ) -> None:
        super().__init__(cache_size=1)
        self._params_fn, self._context_batch = params_fn, context_batch
        self._owner, self._watched = owner, watched
        self._cached_params: tuple[torch.Tensor, torch.Tensor] | None = None

    def _watched_tensors(self) -> tuple[torch.Tensor, ...]:
        return self._watched

    @property
    def loc(self) -> torch.Tensor:
        """The shift for every context, shape ``(..., d)``."""
        return self._params()[0]

    @property
    def scale_tril(self) -> torch.Tensor:
        """The factor for every context, shape ``(..., d, d)``."""
        return self._params()[1]

    def _params(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._refresh_cache()
        if self._cached_params is None:
            self._cached_params = self._params_fn()
        return self._cached_params

    def _check(self, x: torch.Tensor, what: str) -> None:
        loc = self.loc
        check_event(self._owner, x, loc.shape[-1], what=what)
        check_dtype(self._owner, x, loc, what=what)
        try:
            torch.broadcast_shapes(x.shape[:-1], self._context_batch)
        except RuntimeError:
            raise ValueError(
                f"{self._owner} expected {what} with a batch shape that broadcasts with the "
                f"context batch shape {tuple(self._context_batch)}, got shape {tuple(x.shape)}"
            ) from None

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, "input")
        return affine_forward(x, *self._params())

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y, "value to invert")
        return affine_inverse(y, *self._params())

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return affine_log_det(self.scale_tril, x.shape[:-1])


class ConditionalTriangularAffine(ConditionalTransformModule):
    """Affine KR map whose shift and factor are functions of a context ``y``.

    ``T(x; y) = loc(y) + L(y) x`` with ``L(y)`` lower-triangular and positive on the diagonal,
    computed by an MLP of the context. ``.condition(y)`` with ``y`` of shape ``(..., c)``
    returns a :class:`~torch.distributions.Transform` batched over the contexts.

    Args:
        dim: event dimension ``d``.
        context_dim: context dimension ``c``.
        hidden_dims: widths of the MLP's hidden layers.
        init_scale: diagonal of ``L`` at initialization (the MLP output starts near zero).

    Example:
        >>> import torch
        >>> t = ConditionalTriangularAffine(3, context_dim=2)
        >>> y = torch.randn(10, 2)  # 10 contexts
        >>> x = torch.randn(10, 3)
        >>> t.condition(y)(x).shape
        torch.Size([10, 3])
    """

    def __init__(
        self,
        dim: int,
        context_dim: int,
        *,
        hidden_dims: Sequence[int] = (64, 64),
        init_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.dim = check_dim("dim", dim)
        self.context_dim = check_dim("context_dim", context_dim)
        if init_scale <= 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        num_off = dim * (dim - 1) // 2
        widths = [context_dim, *hidden_dims, 2 * dim + num_off]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(widths) - 2:
                layers.append(nn.ELU())
        self.net = nn.Sequential(*layers)
        with torch.no_grad():
            self.net[-1].weight.mul_(1e-2)
            self.net[-1].bias.zero_()
            self.net[-1].bias[dim : 2 * dim].fill_(_softplus_inverse(init_scale))
        rows, cols = torch.tril_indices(dim, dim, offset=-1)
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)

    def loc_and_scale_tril(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``loc (..., d)`` and ``L (..., d, d)`` for ``context (..., c)``."""
        check_event(type(self).__name__, context, self.context_dim, what="context")
        check_dtype(type(self).__name__, context, self.net[-1].bias, what="context")
        out = self.net(context)
        d = self.dim
        loc, diag, off = out[..., :d], out[..., d : 2 * d], out[..., 2 * d :]
        scale_tril = torch.diag_embed(F.softplus(diag) + _MIN_DIAG)
        scale_tril[..., self._rows, self._cols] = off
        return loc, scale_tril

    def condition(self, context: torch.Tensor) -> Transform:
        """The map ``x -> loc(y) + L(y) x`` for contexts ``y`` of shape ``(..., c)``."""
        owner = type(self).__name__
        check_event(owner, context, self.context_dim, what="context")
        check_dtype(owner, context, self.net[-1].bias, what="context")
        watched = tuple(self.parameters())
        return _TriangularAffineMap(
            lambda: self.loc_and_scale_tril(context), context.shape[:-1], owner, watched
        )
