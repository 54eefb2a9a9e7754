"""``banana``: a 2-d posterior concentrated on a parabola (non-identifiable sum).

Model: ``theta1, theta2 ~ N(0, 1)`` independently, ``y_j ~ N(theta1 + theta2^2, sigma^2)`` for
``j = 1..10`` with ``sigma = 0.5``. The data only inform ``theta1 + theta2^2``, so the
posterior lies along the curve ``theta1 = ybar - theta2^2`` with width ``sigma / sqrt(10) = 0.16``
across it and ~4 units along it: strongly curved, a classic failure case of Gaussian guides.
The benchmark observation is simulated at ``theta* = (0, 1)`` with a fixed seed.
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

__all__ = ["Banana"]


@dataclass(frozen=True)
class Banana(Problem):
    """Curved 2-d posterior; scalar latent sites ``"theta1"``, ``"theta2"``.

    Args:
        num_y: number of observations.
        noise_sd: observation noise standard deviation.

    Example:
        >>> import pyro_kr.bench.problems as problems
        >>> problems.get("banana").observation(0).shape
        torch.Size([10])
    """

    name: ClassVar[str] = "banana"
    # theta1 | theta2 is Gaussian around ybar - theta2^2 (a shift, easy for a triangular map);
    # theta2 | theta1 is bimodal (+-sqrt(ybar - theta1)), which a monotone map bends badly.
    kr_order: ClassVar[tuple[str, ...]] = ("theta2", "theta1")
    num_y: int = 10
    noise_sd: float = 0.5

    def __post_init__(self) -> None:
        if self.num_y < 1 or self.noise_sd <= 0:
            raise ValueError(
                f"need num_y >= 1 and noise_sd > 0, got {self.num_y}, {self.noise_sd}"
            )

    @property
    def y_shape(self) -> tuple[int, ...]:
        return (self.num_y,)

    def prior(self) -> dict[str, Distribution]:
        zero = torch.zeros((), dtype=torch.float64)
        return {"theta1": dist.Normal(zero, 1.0), "theta2": dist.Normal(zero, 1.0)}

    def likelihood(self, u: dict[str, torch.Tensor]) -> Distribution:
        loc = (u["theta1"] + u["theta2"] ** 2).unsqueeze(-1).expand(*u["theta1"].shape, self.num_y)
        return dist.Normal(loc, self.noise_sd).to_event(1)

    @cached_property
    def _observations(self) -> list[torch.Tensor]:
        rng = np.random.default_rng(7)
        y = 0.0 + 1.0**2 + self.noise_sd * rng.standard_normal(self.num_y)
        return [torch.as_tensor(np.round(y, 6), dtype=torch.float64)]

    def observation_values(self) -> list[torch.Tensor]:
        return self._observations

    def pymc_model(self, y: Any) -> Any:
        import pymc as pm

        y = self._check_y(torch.as_tensor(np.asarray(y), dtype=torch.float64)).numpy()
        with pm.Model() as m:
            t1 = pm.Normal("theta1", 0.0, 1.0)
            t2 = pm.Normal("theta2", 0.0, 1.0)
            pm.Normal("y", mu=t1 + t2**2, sigma=self.noise_sd, observed=y)
        return m
