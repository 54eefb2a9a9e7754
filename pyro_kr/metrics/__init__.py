"""Distances between two sets of posterior draws, each with its noise floor.

Every function takes two sets of draws as ``(n, d)`` torch tensors or numpy arrays (``(n,)``
reads as ``d = 1``), or as dicts ``name -> (n, ...)`` flattened in the first dict's key order,
and returns a float or a small frozen dataclass. POT is imported only by the W2 functions.

- :func:`w2` (exact, POT ``emd2``; the Kerrigan et al. 2024 protocol) and :func:`sliced_w2`;
- :func:`mmd2` (unbiased, Gaussian kernel, median heuristic) and :func:`median_bandwidth`;
- :func:`c2st` (classifier two-sample test accuracy, a small torch MLP);
- :func:`moment_errors` (mean and sd errors in reference-sd units);
- :func:`noise_floor` and :func:`compare` (all metrics plus their floors; the bench uses it).

Example:
    >>> import torch
    >>> from pyro_kr import metrics
    >>> ref = torch.randn(2000, 2, dtype=torch.float64)
    >>> out = metrics.compare(ref[:1000] + 0.3, ref[1000:], metrics=("w2", "mmd2"))
    >>> sorted(out)
    ['mmd2', 'mmd2_noise_floor', 'n', 'w2', 'w2_noise_floor']
"""

from __future__ import annotations

from pyro_kr.metrics._inputs import Draws, as_draws, as_pair, flatten_names
from pyro_kr.metrics.c2st import c2st
from pyro_kr.metrics.compare import DEFAULT_METRICS, METRICS, compare, noise_floor
from pyro_kr.metrics.mmd import UNIT_KERNEL_BANDWIDTH, median_bandwidth, mmd2
from pyro_kr.metrics.moments import MomentErrors, moment_errors
from pyro_kr.metrics.wasserstein import sliced_w2, w2

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "UNIT_KERNEL_BANDWIDTH",
    "Draws",
    "MomentErrors",
    "as_draws",
    "as_pair",
    "c2st",
    "compare",
    "flatten_names",
    "median_bandwidth",
    "mmd2",
    "moment_errors",
    "noise_floor",
    "sliced_w2",
    "w2",
]
