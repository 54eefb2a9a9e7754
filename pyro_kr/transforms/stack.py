"""Depth: compositions of monotone triangular maps (still lower-triangular, no permutations)."""

from __future__ import annotations

from pyro.distributions.torch_transform import ComposeTransformModule

from pyro_kr._validation import check_dim
from pyro_kr.transforms.affine import TriangularAffine
from pyro_kr.transforms.monotone import MonotoneTriangular

__all__ = ["monotone_triangular_stack"]


def monotone_triangular_stack(
    dim: int, depth: int = 2, *, affine: bool = True, **options
) -> ComposeTransformModule:
    """Compose ``depth`` :class:`MonotoneTriangular` maps, optionally followed by an affine one.

    A composition of lower-triangular monotone maps is lower-triangular and monotone, so the
    result is again a KR-type map; the trailing :class:`TriangularAffine` carries location and
    scale so the nonlinear layers work on the reference scale.

    Args:
        dim: event dimension ``d``.
        depth: number of monotone layers (``>= 1``).
        affine: append a :class:`TriangularAffine` as the last (outermost) layer.
        **options: passed to every :class:`MonotoneTriangular`.

    Example:
        >>> import torch
        >>> t = monotone_triangular_stack(4, depth=3)
        >>> x = torch.randn(8, 4)
        >>> t(x).shape
        torch.Size([8, 4])
    """
    check_dim("depth", depth)
    parts = [MonotoneTriangular(dim, **options) for _ in range(depth)]
    if affine:
        parts.append(TriangularAffine(dim))
    return ComposeTransformModule(parts, cache_size=1)
