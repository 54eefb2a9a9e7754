"""Monotone lower-triangular (Knothe-Rosenblatt) transport maps.

Every map here is bijective, has ``sign = +1`` and ``event_dim = 1``, keeps the given variable
order (no permutations), and has an exact log-determinant and a batched inverse.
:class:`ParameterAwareCache` is the transform cache a new map family builds on (it drops cached
values when the parameters change).
"""

from __future__ import annotations

from pyro_kr.transforms._cache import ParameterAwareCache
from pyro_kr.transforms.affine import ConditionalTriangularAffine, TriangularAffine
from pyro_kr.transforms.monotone import ConditionalMonotoneTriangular, MonotoneTriangular
from pyro_kr.transforms.stack import monotone_triangular_stack

__all__ = [
    "ConditionalMonotoneTriangular",
    "ConditionalTriangularAffine",
    "MonotoneTriangular",
    "ParameterAwareCache",
    "TriangularAffine",
    "monotone_triangular_stack",
]
