"""The annealed objective ``lam * KL + c_eps`` and its schedules."""

from __future__ import annotations

from pyro_kr.objective.cost import reference_pairs, weighted_cost
from pyro_kr.objective.schedules import (
    Annealing,
    ConstantSchedule,
    CosineSchedule,
    GeometricSchedule,
    LinearSchedule,
    Schedule,
)
from pyro_kr.objective.transport_elbo import TransportELBO

__all__ = [
    "Annealing",
    "ConstantSchedule",
    "CosineSchedule",
    "GeometricSchedule",
    "LinearSchedule",
    "Schedule",
    "TransportELBO",
    "reference_pairs",
    "weighted_cost",
]
