"""Load a script under ``benchmarks/`` as a module, so tests can call its functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(filename: str, module_name: str) -> ModuleType:
    """Import ``benchmarks/<filename>`` under ``module_name`` (registered in ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / filename)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
