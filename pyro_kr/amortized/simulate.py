"""Prior-predictive pairs for amortized training: re-exported from :mod:`pyro_kr.traces`.

``simulate_pairs``, ``plate_depth`` and ``site_names`` live in :mod:`pyro_kr.traces`, the one
trace-utilities module; this module keeps the old import path working.
"""

from __future__ import annotations

from pyro_kr.traces import plate_depth, simulate_pairs, site_names

__all__ = ["plate_depth", "simulate_pairs", "site_names"]
