"""``funnel``: Neal's funnel in 10 dimensions, centered parameterization, no data.

Model: ``v ~ N(0, 3^2)``, ``x_i | v ~ N(0, exp(v / 2)^2)`` for ``i = 1..9`` (Neal, 2003), so
``d = 10``. There is no data: the observation is an empty tensor of shape ``(0,)``, the
simulator returns ``y`` of shape ``(n, 0)`` and ``model(y)`` ignores ``y`` (``None`` or empty).
The "posterior" is the prior itself, so the reference is exact: ``v`` then ``x | v``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch.distributions import Distribution

from pyro_kr.bench.problems.base import Problem, Site

__all__ = ["Funnel"]


@dataclass(frozen=True)
class Funnel(Problem):
    """Neal's funnel; latent sites ``"v"`` (scalar) and ``"x"`` (shape ``(dim - 1,)``).

    Args:
        dim: total dimension (``v`` plus ``dim - 1`` coordinates ``x``).
        v_scale: standard deviation of ``v``.

    Example:
        >>> import pyro_kr.bench.problems as problems
        >>> p = problems.get("funnel")
        >>> p.param_shapes
        {'v': (), 'x': (9,)}
    """

    name: ClassVar[str] = "funnel"
    dim_total: int = 10
    v_scale: float = 3.0

    def __post_init__(self) -> None:
        if self.dim_total < 2 or self.v_scale <= 0:
            raise ValueError(
                f"need dim_total >= 2 and v_scale > 0, got {self.dim_total}, {self.v_scale}"
            )

    @property
    def y_shape(self) -> tuple[int, ...]:
        return (0,)

    def latents(self, site: Site) -> dict[str, torch.Tensor]:
        v = site("v", dist.Normal(torch.zeros((), dtype=torch.float64), self.v_scale))
        return {"v": v, "x": site("x", self._x_given_v(v))}

    def _x_given_v(self, v: torch.Tensor) -> Distribution:
        scale = torch.exp(v / 2).unsqueeze(-1).expand(*v.shape, self.dim_total - 1)
        return dist.Normal(torch.zeros_like(scale), scale).to_event(1)

    def likelihood(self, u: dict[str, torch.Tensor]) -> Distribution:
        batch = u["v"].shape
        return dist.Normal(torch.zeros(*batch, 0, dtype=u["v"].dtype), 1.0).to_event(1)

    def model(self, y: torch.Tensor | None = None) -> torch.Tensor:
        """The Pyro model ``v ~ N(0, 9)``, ``x ~ N(0, e^v I)``; ``y`` is ignored (no data)."""
        self.latents(pyro.sample)
        return torch.zeros(0, dtype=torch.float64)

    def observation_values(self) -> list[torch.Tensor]:
        return [torch.zeros(0, dtype=torch.float64)]

    def reference(
        self, index: int = 0, *, num_samples: int | None = 20_000, seed: int = 0
    ) -> dict[str, np.ndarray]:
        """Exact draws (the posterior is the prior): ``{"v": (n,), "x": (n, 9)}``."""
        self.observation(index)
        u, _ = self.simulate(20_000 if num_samples is None else num_samples, seed=seed)
        return {k: t.numpy() for k, t in u.items()}

    def pymc_model(self, y: Any = None) -> Any:
        import pymc as pm

        with pm.Model() as m:
            v = pm.Normal("v", 0.0, self.v_scale)
            pm.Normal("x", 0.0, pm.math.exp(v / 2), shape=(self.dim_total - 1,))
        return m
