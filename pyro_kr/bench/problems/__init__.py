"""Benchmark problems: a registry of Bayesian inverse problems with Pyro and PyMC twins.

Every problem provides a Pyro model, the same model written natively in PyMC, a batched
seeded prior-predictive simulator, fixed benchmark observations and reference posterior
draws (see ``docs/problems.md``).

Example:
    >>> import pyro_kr.bench.problems as problems
    >>> "lotka_volterra" in problems.names()
    True
    >>> p = problems.get("lotka_volterra")
    >>> p.param_names
    ['alpha', 'beta', 'gamma', 'delta']
"""

from __future__ import annotations

import importlib
from typing import Any

from pyro_kr.bench.problems.base import Problem

__all__ = ["Problem", "get", "names"]

# name -> "module:Class"; modules are imported on first use so the registry stays cheap.
_REGISTRY: dict[str, str] = {
    "linear_gaussian": "linear_gaussian:LinearGaussian",
    "banana": "banana:Banana",
    "funnel": "funnel:Funnel",
    "eight_schools": "eight_schools:EightSchools",
    "lotka_volterra": "lotka_volterra:LotkaVolterra",
    "elliptic_1d": "elliptic_1d:Elliptic1D",
    "darcy_2d": "darcy_2d:Darcy2D",
    "symmetric_modes": "symmetric_modes:SymmetricModes",
    "checkerboard": "joint2d_tasks:Checkerboard",
    "moons": "joint2d_tasks:Moons",
    "circles": "joint2d_tasks:Circles",
    "swissroll": "joint2d_tasks:SwissRoll",
}


def names() -> list[str]:
    """Return the registered problem names.

    Example:
        >>> import pyro_kr.bench.problems as problems
        >>> problems.names()[:2]
        ['linear_gaussian', 'banana']
    """
    return list(_REGISTRY)


def get(name: str, **config: Any) -> Problem:
    """Build the problem registered as ``name``; ``config`` overrides its keyword defaults.

    Args:
        name: one of :func:`names`.
        **config: keyword configuration of the problem's dataclass (e.g. ``substeps=100``).

    Raises:
        ValueError: for an unknown name (the message lists the valid ones).

    Example:
        >>> import pyro_kr.bench.problems as problems
        >>> problems.get("funnel").param_names
        ['v', 'x']
    """
    if not isinstance(name, str):
        raise TypeError(f"problem name must be a str, got {type(name).__name__}")
    if name not in _REGISTRY:
        raise ValueError(f"unknown problem {name!r}; valid names: {', '.join(_REGISTRY)}")
    module_name, cls_name = _REGISTRY[name].split(":")
    module = importlib.import_module(f"pyro_kr.bench.problems.{module_name}")
    return getattr(module, cls_name)(**config)
