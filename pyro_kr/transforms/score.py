"""The score ``grad_z log q(z)`` of a pushforward ``q = T#N(0, I)`` by a triangular map.

For ``z = T(x)`` with ``x ~ N(0, I)``, ``log q(z) = log N(x) - log|det DT(x)|`` with
``x = T^{-1}(z)``, so by the chain rule (``dx/dz = DT(x)^{-1}``)

    grad_z log q(z) = DT(x)^{-T} (-x - grad_x log|det DT(x)|).

``DT`` is lower triangular, so the solve is a back substitution. It is what the
path-derivative ("sticking the landing") gradient of :class:`~pyro_kr.TransportELBO` needs:
no inverse map is evaluated, only the forward map and vector-Jacobian products.

:func:`block_triangular_score` does the linear algebra for the block structure of the sparse
map of a hierarchy (``d_g`` global coordinates; ``n`` groups of ``d_l`` coordinates, each
depending on the globals and on itself), which costs one backward pass through the whole map
plus passes through the globals' map alone and through the groups' own coordinates, whatever
``n``; a dense map is the case ``n = 0`` (``d + 1`` passes).
:func:`log_density_score` applies it to a map: a map with its own ``log_density_score`` method
(:class:`~pyro_kr.guides.sparse.SparseKRMap`) uses it, any other triangular map is dense.
"""

from __future__ import annotations

import torch
from torch.distributions import ComposeTransform

from pyro_kr.transforms.affine import TriangularAffine
from pyro_kr.transforms.monotone import MonotoneTriangular

__all__ = ["block_triangular_score", "is_triangular_map", "log_density_score"]


def _rows(out: torch.Tensor, wrt: torch.Tensor) -> torch.Tensor:
    """``J[..., k, m] = d out[..., k] / d wrt[..., m]`` for a map acting on the last axis
    (one backward pass per output coordinate, batched over the leading axes)."""
    rows = []
    for k in range(out.shape[-1]):
        (row,) = torch.autograd.grad(out[..., k].sum(), wrt, retain_graph=True)
        rows.append(row)
    return torch.stack(rows, dim=-2)


def _grad_or_none(out: torch.Tensor, wrt: torch.Tensor) -> torch.Tensor | None:
    """``d out / d wrt``, or ``None`` where ``out`` does not depend on ``wrt`` (a constant
    log-determinant, as an affine map's)."""
    if not out.requires_grad:
        return None
    (grad,) = torch.autograd.grad(out, wrt, retain_graph=True, allow_unused=True)
    return grad


def _solve_transposed(jac: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``w`` with ``jac^T w = rhs`` for lower-triangular ``jac`` (``(..., k, k)``)."""
    w = torch.linalg.solve_triangular(jac.transpose(-1, -2), rhs.unsqueeze(-1), upper=True)
    return w.squeeze(-1)


def block_triangular_score(
    x_g: torch.Tensor,
    z_g: torch.Tensor,
    log_det: torch.Tensor,
    x_l: torch.Tensor | None = None,
    z_l: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``grad_z log q(z)`` for a map with the sparse block structure of a hierarchy.

    The map sends the leaves ``x_g`` (globals) and ``x_l`` (groups) to ``z_g`` (a function
    of ``x_g`` only, lower triangular) and ``z_l`` (group ``j``'s row a function of ``x_g`` and
    of ``x_l[..., j, :]`` only, lower triangular in the latter). With ``r = -x - grad_x
    log|det DT|``, the solve ``DT^T w = r`` splits into one small triangular solve per group
    and one over the globals:

        w_l = B^{-T} r_l,        w_g = J_gg^{-T} (r_g - J_lg^T w_l),

    ``B`` being each group's own block. ``r_l`` and ``B`` differentiate only the groups' own
    paths; ``grad_g log|det| + J_lg^T w_l`` is one vector-Jacobian product through the whole
    map, and ``J_gg`` needs ``d_g`` passes through the globals' map alone.

    Args:
        x_g: ``(..., d_g)`` reference coordinates of the globals, a tensor requiring grad.
        z_g: ``(..., d_g)`` their image, computed from ``x_g``.
        log_det: ``(...,)`` ``log|det DT(x)|`` of the whole map, computed from the leaves.
        x_l: ``(..., n, d_l)`` reference coordinates of the groups (requiring grad), or
            ``None`` for a dense map.
        z_l: ``(..., n, d_l)`` their image.

    Returns:
        ``(score_g, score_l)``: ``(..., d_g)`` and ``(..., n, d_l)`` (``None`` without
        groups), detached.

    Example:
        >>> import torch
        >>> L = torch.tensor([[2.0, 0.0], [1.0, 0.5]])
        >>> x = torch.randn(3, 2, requires_grad=True)
        >>> z = x @ L.T
        >>> log_det = L.diagonal().log().sum().expand(3)
        >>> s, _ = block_triangular_score(x, z, log_det)
        >>> cov = L @ L.T  # q = N(0, L L^T): the score is -cov^{-1} z
        >>> torch.allclose(s, -z.detach() @ torch.linalg.inv(cov), atol=1e-5)
        True
    """
    extra = 0.0
    score_l = None
    if x_l is not None:
        # the groups' own terms: only the groups' own (elementwise) paths are differentiated,
        # so these passes skip the conditioner on the globals
        grad_l = _grad_or_none(log_det.sum(), x_l)
        r_l = -x_l.detach() - (0.0 if grad_l is None else grad_l)
        score_l = _solve_transposed(_rows(z_l, x_l), r_l)
        extra = (z_l * score_l).sum()  # its gradient in x_g is J_lg^T w_l
    # one pass through the whole map: grad_g log|det| + J_lg^T w_l
    grad_g = _grad_or_none(log_det.sum() + extra, x_g)
    r_g = -x_g.detach() - (0.0 if grad_g is None else grad_g)
    score_g = _solve_transposed(_rows(z_g, x_g), r_g)
    return score_g.detach(), None if score_l is None else score_l.detach()


def is_triangular_map(transform) -> bool:
    """Whether :func:`log_density_score` applies: a map with its own ``log_density_score``
    (the sparse map), a :class:`~pyro_kr.transforms.TriangularAffine` or
    :class:`~pyro_kr.transforms.MonotoneTriangular`, or a composition of these (the dense
    ``AutoKR`` map). Pyro's autoregressive flows permute their inputs, so they are not."""
    if callable(getattr(transform, "log_density_score", None)):
        return True
    if isinstance(transform, TriangularAffine | MonotoneTriangular):
        return True
    if isinstance(transform, ComposeTransform):
        return all(is_triangular_map(part) for part in transform.parts)
    return False


def log_density_score(transform, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``z = T(x)`` and ``grad_z log q(z)`` for ``q = T#N(0, I)``, ``T`` lower triangular.

    A map with a ``log_density_score(x)`` method supplies its own (the sparse map of a
    hierarchy); any other is treated as dense: its ``d x d`` Jacobian costs ``d`` backward
    passes of the map per call.

    Args:
        transform: a lower-triangular ``torch.distributions.Transform`` with ``event_dim = 1``
            and an exact ``log_abs_det_jacobian``.
        x: ``(..., d)`` reference draws.

    Returns:
        ``(z, score)``, both ``(..., d)``; ``z`` carries the graph to the map's parameters
        (``x`` itself is detached first), ``score`` is detached.

    Example:
        >>> import torch
        >>> from pyro_kr.transforms import TriangularAffine
        >>> T = TriangularAffine(2)
        >>> z, s = log_density_score(T, torch.randn(4, 2))
        >>> torch.allclose(s, -z.detach(), atol=1e-6)  # the identity map: q = N(0, I)
        True
    """
    own = getattr(transform, "log_density_score", None)
    if own is not None:
        return own(x)
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        z = transform(leaf)
        log_det = transform.log_abs_det_jacobian(leaf, z)
        score, _ = block_triangular_score(leaf, z, log_det)
    return z, score
