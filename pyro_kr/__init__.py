"""pyro_kr: monotone triangular (Knothe-Rosenblatt) transport maps for Pyro.

Importing :mod:`pyro_kr` loads only torch and Pyro. Optional heavy pieces (PyMC, ArviZ,
POT, matplotlib) are imported inside the modules that need them.
"""

from __future__ import annotations

from pyro_kr import transforms
from pyro_kr.amortized import AmortizedKR, fit_amortized
from pyro_kr.fit import History, NonFiniteLossError, fit
from pyro_kr.flow_matching import COTFlowMatching
from pyro_kr.guides import AutoKR
from pyro_kr.history import TrainingHistory
from pyro_kr.objective import Annealing, TransportELBO
from pyro_kr.polishing import PolishResult, polish
from pyro_kr.posterior_protocol import AmortizedPosterior, FixedObservation
from pyro_kr.simulation import SimulationBank, simulate
from pyro_kr.transforms import (
    ConditionalMonotoneTriangular,
    ConditionalTriangularAffine,
    MonotoneTriangular,
    TriangularAffine,
    monotone_triangular_stack,
)

__version__ = "0.1.0"

__all__ = [
    "AmortizedKR",
    "AmortizedPosterior",
    "Annealing",
    "AutoKR",
    "COTFlowMatching",
    "FixedObservation",
    "History",
    "NonFiniteLossError",
    "PolishResult",
    "SimulationBank",
    "TrainingHistory",
    "TransportELBO",
    "fit",
    "fit_amortized",
    "polish",
    "simulate",
    "ConditionalMonotoneTriangular",
    "ConditionalTriangularAffine",
    "MonotoneTriangular",
    "TriangularAffine",
    "monotone_triangular_stack",
    "transforms",
]
