"""``symmetric_modes``: a 2-d posterior with four modes of equal mass (sign symmetry).

Model: ``theta1, theta2 ~ N(0, 1)`` independently; ``y[j, k] ~ N(theta_k^2, sigma^2)`` for
``j = 1..num_y``, ``k = 1, 2``, with ``sigma = 0.3``. The data inform only the squares, so the
posterior is symmetric under ``theta_k -> -theta_k``: with the benchmark observation
(simulated at ``theta* = (1, 0.8)``) it has four well-separated modes near ``(+-1, +-0.8)``,
each holding a quarter of the mass. This is the symmetry of inverse problems whose forward
map depends on squares (or magnitudes) of the parameters.

The reference is exact: the posterior factorizes, ``p(theta | y) = p(theta1 | y[:, 0])
p(theta2 | y[:, 1])``, and each 1-d factor is sampled by inverse-CDF on a fine grid of the
positive half-line with a random sign (the factor is even in ``theta_k``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import pyro.distributions as dist
import torch
from torch.distributions import Distribution

from pyro_kr.bench.problems.base import Problem

__all__ = ["SymmetricModes", "mode_shares"]

_GRID = 200_001
_GRID_MAX = 8.0


def mode_shares(theta1: Any, theta2: Any) -> dict[str, float]:
    """Share of draws in each sign quadrant (mode): keys ``"++", "+-", "-+", "--"``.

    Example:
        >>> mode_shares([1.0, -1.0], [0.5, 0.5])
        {'++': 0.5, '+-': 0.0, '-+': 0.5, '--': 0.0}
    """
    a, b = np.asarray(theta1) >= 0, np.asarray(theta2) >= 0
    return {
        "++": float(np.mean(a & b)),
        "+-": float(np.mean(a & ~b)),
        "-+": float(np.mean(~a & b)),
        "--": float(np.mean(~a & ~b)),
    }


@dataclass(frozen=True)
class SymmetricModes(Problem):
    """Four-mode 2-d posterior; scalar latent sites ``"theta1"``, ``"theta2"``.

    Args:
        num_y: observations per coordinate.
        noise_sd: observation noise standard deviation.

    Example:
        >>> import pyro_kr.bench.problems as problems
        >>> p = problems.get("symmetric_modes")
        >>> p.observation(0).shape
        torch.Size([5, 2])
        >>> shares = mode_shares(**p.reference(0, num_samples=4000))
        >>> all(abs(s - 0.25) < 0.03 for s in shares.values())
        True
    """

    name: ClassVar[str] = "symmetric_modes"
    num_y: int = 5
    noise_sd: float = 0.3

    def __post_init__(self) -> None:
        if self.num_y < 1 or self.noise_sd <= 0:
            raise ValueError(
                f"need num_y >= 1 and noise_sd > 0, got {self.num_y}, {self.noise_sd}"
            )

    @property
    def y_shape(self) -> tuple[int, ...]:
        return (self.num_y, 2)

    def prior(self) -> dict[str, Distribution]:
        zero = torch.zeros((), dtype=torch.float64)
        return {"theta1": dist.Normal(zero, 1.0), "theta2": dist.Normal(zero, 1.0)}

    def likelihood(self, u: dict[str, torch.Tensor]) -> Distribution:
        squares = torch.stack([u["theta1"] ** 2, u["theta2"] ** 2], dim=-1)
        loc = squares.unsqueeze(-2).expand(*squares.shape[:-1], self.num_y, 2)
        return dist.Normal(loc, self.noise_sd).to_event(2)

    @cached_property
    def _observations(self) -> list[torch.Tensor]:
        rng = np.random.default_rng(11)
        truth = np.array([1.0, 0.8])
        y = truth**2 + self.noise_sd * rng.standard_normal((self.num_y, 2))
        return [torch.as_tensor(np.round(y, 6), dtype=torch.float64)]

    def observation_values(self) -> list[torch.Tensor]:
        return self._observations

    def reference(
        self, index: int = 0, *, num_samples: int | None = 20_000, seed: int = 0
    ) -> dict[str, np.ndarray]:
        """Exact draws (see the module docstring): ``{"theta1": (n,), "theta2": (n,)}``."""
        y = self.observation(index).numpy()
        n = 20_000 if num_samples is None else num_samples
        rng = np.random.default_rng(seed)
        grid = np.linspace(0.0, _GRID_MAX, _GRID)
        out = {}
        for k, name in enumerate(("theta1", "theta2")):
            log_density = -0.5 * grid**2 - 0.5 * np.sum(
                (y[:, k][:, None] - grid[None] ** 2) ** 2, axis=0
            ) / self.noise_sd**2
            density = np.exp(log_density - log_density.max())
            cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]))])
            magnitude = np.interp(rng.uniform(0.0, cdf[-1], n), cdf, grid)
            out[name] = np.where(rng.uniform(size=n) < 0.5, -magnitude, magnitude)
        return out

    def pymc_model(self, y: Any) -> Any:
        import pymc as pm

        y = self._check_y(torch.as_tensor(np.asarray(y), dtype=torch.float64)).numpy()
        with pm.Model() as m:
            t1 = pm.Normal("theta1", 0.0, 1.0)
            t2 = pm.Normal("theta2", 0.0, 1.0)
            pm.Normal("y", mu=pm.math.stack([t1**2, t2**2]), sigma=self.noise_sd, observed=y)
        return m
