"""The benchmark: a registry of inference methods, a runner and a report writer.

``pyro-kr bench PROBLEM`` (see :mod:`pyro_kr.bench.cli`) drives these; they are usable from Python:

Example:
    >>> from pyro_kr.bench import BenchConfig, methods
    >>> BenchConfig().steps, "nuts" in methods.names()
    (1000, True)
"""

from __future__ import annotations

from pyro_kr.bench import methods
from pyro_kr.bench.methods import MethodResult
from pyro_kr.bench.report import write_report
from pyro_kr.bench.runner import BENCH_METRICS, BenchConfig, run

__all__ = ["BENCH_METRICS", "BenchConfig", "MethodResult", "methods", "run", "write_report"]
