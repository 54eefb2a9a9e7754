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

__all__ = [
    "block_triangular_score",
    "conditional_block_score",
    "is_triangular_map",
    "log_density_score",
    "transposed_jacobian_solve",
]


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


def conditional_block_score(
    context: torch.Tensor,
    x_l: torch.Tensor,
    z_l: torch.Tensor,
    log_det_l: torch.Tensor,
    weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The groups' part of :func:`block_triangular_score` for a subsample of the groups,
    sampled at a site of its own conditioned on the globals' reference coordinates.

    Under plate subsampling the guide's log-density is ``log q_g(z_g) + sum_j w_j log
    q_l(z_j | x_g)`` over the ``B`` groups drawn, ``w_j`` the site's Pyro scale ``N / B``
    (times its mask). Its score splits as in :func:`block_triangular_score`: group ``j``'s
    block is ``w_j B_j^{-T} r_j`` (``r_j = -x_j - grad_{x_j} log|det B_j|``), and the globals'
    is ``J_gg^{-T} (r_g - v)`` with

        v = grad_{x_g} sum_j w_j (log|det B_j| + z_j . B_j^{-T} r_j),

    one vector-Jacobian product through the groups' conditioner. This function returns the
    groups' unweighted scores ``B_j^{-T} r_j`` and ``v``; the globals' map supplies ``r_g`` and
    ``J_gg`` (:func:`transposed_jacobian_solve`).

    Args:
        context: ``(..., d_g)`` the globals' reference coordinates the groups' map reads, a
            tensor requiring grad.
        x_l: ``(..., B, d_l)`` the groups' reference coordinates, requiring grad.
        z_l: ``(..., B, d_l)`` their image, computed from ``x_l`` and ``context``.
        log_det_l: ``(..., B)`` each group's ``log|det B_j|``, computed from the leaves.
        weight: the groups' weights ``w_j``, broadcastable to ``(..., B)``.

    Returns:
        ``(score_l, v)``: ``(..., B, d_l)`` and ``context``'s shape, detached.

    Example:
        >>> import torch
        >>> c = torch.zeros(1, requires_grad=True)
        >>> x = torch.randn(3, 1, requires_grad=True)
        >>> z = 2 * x + c  # each group N(c, 4), shifted by the context
        >>> log_det = torch.full((3,), 2.0).log()
        >>> s, v = conditional_block_score(c, x, z, log_det, torch.ones(3))
        >>> torch.allclose(s, -(z - c).detach() / 4), torch.allclose(v, s.sum(0))
        (True, True)
    """
    grad_l = _grad_or_none(log_det_l.sum(), x_l)
    r_l = -x_l.detach() - (0.0 if grad_l is None else grad_l)
    score_l = _solve_transposed(_rows(z_l, x_l), r_l)
    total = (weight * (log_det_l + (z_l * score_l).sum(-1))).sum()
    v = _grad_or_none(total, context)
    v = torch.zeros_like(context) if v is None else v
    return score_l.detach(), v.detach()


def transposed_jacobian_solve(transform, x: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``DT(x)^{-T} rhs`` for a lower-triangular map ``T`` (``d`` backward passes of the map).

    Args:
        transform: a lower-triangular map with ``event_dim = 1``.
        x: ``(..., d)`` points.
        rhs: ``(..., d)`` right-hand sides.

    Returns:
        ``(..., d)``, detached.

    Example:
        >>> import torch
        >>> from pyro_kr.transforms import TriangularAffine
        >>> T = TriangularAffine(2)
        >>> T.set_scale_tril(torch.tensor([[2.0, 0.0], [1.0, 1.0]]))
        >>> w = transposed_jacobian_solve(T, torch.zeros(2), torch.tensor([2.0, 1.0]))
        >>> w.tolist()  # [[2, 1], [0, 1]] w = [2, 1]
        [0.5, 1.0]
    """
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        jac = _rows(transform(leaf), leaf)
    return _solve_transposed(jac, rhs).detach()


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
