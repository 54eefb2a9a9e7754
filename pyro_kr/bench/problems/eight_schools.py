"""``eight_schools``: the centered hierarchical model of Rubin (1981) / Gelman et al. (BDA).

Model: ``mu ~ N(0, 5^2)``, ``tau ~ HalfCauchy(5)``, ``theta_j ~ N(mu, tau^2)``,
``y_j ~ N(theta_j, sigma_j^2)`` for the eight schools, with the standard data
``y = (28, 8, -3, 7, -1, 1, 18, 12)``, ``sigma = (15, 10, 16, 11, 9, 11, 10, 18)``. The Pyro
model and the PyMC twin are centered (the hard geometry); the shipped reference is drawn by
NUTS on the non-centered version of the same posterior (see ``references.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyro.distributions as dist
import torch
from torch.distributions import Distribution

from pyro_kr.bench.problems.base import Problem, Site

__all__ = ["EightSchools"]

Y = (28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0)
SIGMA = (15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0)


@dataclass(frozen=True)
class EightSchools(Problem):
    """Centered eight schools; sites ``"mu"``, ``"tau"`` (scalars) and ``"theta"`` ``(8,)``.

    Example:
        >>> import pyro_kr.bench.problems as problems
        >>> problems.get("eight_schools").param_names
        ['mu', 'tau', 'theta']
    """

    name: ClassVar[str] = "eight_schools"

    @property
    def sigma(self) -> torch.Tensor:
        """Known standard errors ``sigma_j``, shape ``(8,)``."""
        return torch.tensor(SIGMA, dtype=torch.float64)

    @property
    def y_shape(self) -> tuple[int, ...]:
        return (8,)

    def latents(self, site: Site) -> dict[str, torch.Tensor]:
        zero = torch.zeros((), dtype=torch.float64)
        mu = site("mu", dist.Normal(zero, 5.0))
        tau = site("tau", dist.HalfCauchy(zero + 5.0))
        return {"mu": mu, "tau": tau, "theta": site("theta", self._theta_given(mu, tau))}

    def _theta_given(self, mu: torch.Tensor, tau: torch.Tensor) -> Distribution:
        loc = mu.unsqueeze(-1).expand(*mu.shape, 8)
        return dist.Normal(loc, tau.unsqueeze(-1).expand(*tau.shape, 8)).to_event(1)

    def likelihood(self, u: dict[str, torch.Tensor]) -> Distribution:
        return dist.Normal(u["theta"], self.sigma.to(u["theta"])).to_event(1)

    def observation_values(self) -> list[torch.Tensor]:
        return [torch.tensor(Y, dtype=torch.float64)]

    def pymc_model(self, y: Any) -> Any:
        import pymc as pm

        y = self._check_y(torch.as_tensor(np.asarray(y), dtype=torch.float64)).numpy()
        with pm.Model() as m:
            mu = pm.Normal("mu", 0.0, 5.0)
            tau = pm.HalfCauchy("tau", 5.0)
            theta = pm.Normal("theta", mu, tau, shape=(8,))
            pm.Normal("y", mu=theta, sigma=np.asarray(SIGMA), observed=y)
        return m

    def pymc_model_noncentered(self, y: Any) -> Any:
        """Non-centered PyMC model of the same posterior, with ``theta`` as a Deterministic."""
        import pymc as pm

        y = self._check_y(torch.as_tensor(np.asarray(y), dtype=torch.float64)).numpy()
        with pm.Model() as m:
            mu = pm.Normal("mu", 0.0, 5.0)
            tau = pm.HalfCauchy("tau", 5.0)
            eta = pm.Normal("eta", 0.0, 1.0, shape=(8,))
            theta = pm.Deterministic("theta", mu + tau * eta)
            pm.Normal("y", mu=theta, sigma=np.asarray(SIGMA), observed=y)
        return m
