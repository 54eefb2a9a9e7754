"""Simulation banks: seeded prior-predictive pairs drawn in chunks, in-process or on Ray.

- :func:`simulate`: draw a bank (``backend="local"`` or ``"ray"``), optionally as resumable
  shard files (``path=``);
- :class:`SimulationBank`: the pairs, in memory or streamed shard by shard;
- :func:`chunk_seed`: the per-chunk seed that makes the pairs independent of the backend.

Ray is imported only when ``backend="ray"`` (the ``distributed`` extra).
"""

from __future__ import annotations

from pyro_kr.simulation.bank import SimulationBank
from pyro_kr.simulation.run import DEFAULT_CHUNK_SIZE, chunk_seed, simulate

__all__ = ["DEFAULT_CHUNK_SIZE", "SimulationBank", "chunk_seed", "simulate"]
