"""Pyro guides built on monotone triangular maps."""

from __future__ import annotations

from pyro_kr.guides.autokr import AutoKR
from pyro_kr.guides.laplace import LaplaceError
from pyro_kr.guides.queries import ConditionalPosterior

__all__ = ["AutoKR", "ConditionalPosterior", "LaplaceError"]
