"""The package surface: the public names of the issues, and a light ``import pyro_kr``."""

from __future__ import annotations

import subprocess
import sys

import pyro_kr

PUBLIC = [
    "AutoKR", "TransportELBO", "Annealing", "fit", "History", "NonFiniteLossError",
    "AmortizedKR", "fit_amortized", "COTFlowMatching", "simulate", "SimulationBank",
    "TriangularAffine", "MonotoneTriangular",
    "ConditionalTriangularAffine", "ConditionalMonotoneTriangular",
]  # fmt: skip


def test_public_names_are_at_the_top_level():
    for name in PUBLIC:
        assert name in pyro_kr.__all__ and hasattr(pyro_kr, name), name
    from pyro_kr.flow_matching import COTFlowMatching

    assert pyro_kr.COTFlowMatching is COTFlowMatching


def test_import_loads_no_heavy_optional_dependency():
    code = (
        "import sys, pyro_kr; "
        "print(','.join(m for m in ('ot', 'pymc', 'arviz', 'pytensor', 'matplotlib', 'ray') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == ""
