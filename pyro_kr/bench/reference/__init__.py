"""Reference posteriors by MCMC: PyMC NUTS on a problem's PyMC twin or on any Pyro model.

Importing this package loads neither PyMC nor ArviZ; they are imported when a function runs.

Example:
    >>> from pyro_kr.bench import reference
    >>> sorted(reference.METHODS)
    ['demetropolisz', 'nuts']
"""

from __future__ import annotations

from pyro_kr.bench.reference._cache import ENV_VAR, cache_key, default_cache_dir
from pyro_kr.bench.reference.nuts import (
    METHODS,
    ReferenceNotCachedError,
    ReferenceQualityError,
    check_quality,
    nuts,
    summary,
    to_draws,
)
from pyro_kr.bench.reference.pyro_model import PyroPotential, nuts_from_pyro

__all__ = [
    "ENV_VAR",
    "METHODS",
    "PyroPotential",
    "ReferenceNotCachedError",
    "ReferenceQualityError",
    "cache_key",
    "check_quality",
    "default_cache_dir",
    "nuts",
    "nuts_from_pyro",
    "summary",
    "to_draws",
]
