"""``linear_gaussian``: a 10-parameter linear inverse problem with an exact Gaussian posterior.

Model: ``theta ~ N(0, I_10)``, ``y = A theta + noise``, ``noise ~ N(0, sigma^2 I_15)`` with a
fixed ``15 x 10`` forward matrix ``A = U diag(s) V^T`` (``U``, ``V`` orthonormal, drawn once with
a fixed seed) whose singular values decay geometrically from 10 to 0.01. With ``sigma = 0.1``
the posterior standard deviations along the singular directions range from 0.01 to 0.995, so
the posterior is anisotropic (condition number ~1e4 in variance) but exactly known.
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

__all__ = ["LinearGaussian"]


@dataclass(frozen=True)
class LinearGaussian(Problem):
    """Linear-Gaussian inverse problem; one vector latent site ``"theta"`` of shape ``(10,)``.

    Args:
        dim_theta: number of parameters.
        dim_y: number of observations.
        noise_sd: observation noise standard deviation ``sigma``.
        s_max: largest singular value of ``A``.
        s_min: smallest singular value of ``A``.
        seed: seed of the forward matrix and of the benchmark observations.

    Example:
        >>> import pyro_kr.bench.problems as problems
        >>> p = problems.get("linear_gaussian")
        >>> mean, cov = p.exact_posterior(p.observation(0))
        >>> tuple(mean.shape), tuple(cov.shape)
        ((10,), (10, 10))
    """

    name: ClassVar[str] = "linear_gaussian"
    dim_theta: int = 10
    dim_y: int = 15
    noise_sd: float = 0.1
    s_max: float = 10.0
    s_min: float = 0.01
    seed: int = 20240601

    def __post_init__(self) -> None:
        if not 1 <= self.dim_theta <= self.dim_y:
            raise ValueError(
                f"need 1 <= dim_theta <= dim_y, got dim_theta={self.dim_theta}, dim_y={self.dim_y}"
            )
        if self.noise_sd <= 0 or not 0 < self.s_min <= self.s_max:
            raise ValueError(
                f"need noise_sd > 0 and 0 < s_min <= s_max, got noise_sd={self.noise_sd}, "
                f"s_min={self.s_min}, s_max={self.s_max}"
            )

    @cached_property
    def forward_matrix(self) -> torch.Tensor:
        """The forward matrix ``A``, shape ``(dim_y, dim_theta)``, float64."""
        rng = np.random.default_rng(self.seed)
        u, r = np.linalg.qr(rng.standard_normal((self.dim_y, self.dim_theta)))
        u = u * np.sign(np.diag(r))  # unique QR: positive diagonal of R
        v, r = np.linalg.qr(rng.standard_normal((self.dim_theta, self.dim_theta)))
        v = v * np.sign(np.diag(r))
        s = np.geomspace(self.s_max, self.s_min, self.dim_theta)
        return torch.as_tensor((u * s) @ v.T, dtype=torch.float64)

    @property
    def y_shape(self) -> tuple[int, ...]:
        return (self.dim_y,)

    def prior(self) -> dict[str, Distribution]:
        zero = torch.zeros(self.dim_theta, dtype=torch.float64)
        return {"theta": dist.Normal(zero, 1.0).to_event(1)}

    def likelihood(self, u: dict[str, torch.Tensor]) -> Distribution:
        loc = u["theta"] @ self.forward_matrix.T.to(u["theta"])
        return dist.Normal(loc, self.noise_sd).to_event(1)

    @cached_property
    def _observations(self) -> list[torch.Tensor]:
        # five observations simulated at prior draws with a fixed numpy seed (portable)
        rng = np.random.default_rng(self.seed + 1)
        a = self.forward_matrix.numpy()
        out = []
        for _ in range(5):
            theta = rng.standard_normal(self.dim_theta)
            y = a @ theta + self.noise_sd * rng.standard_normal(self.dim_y)
            out.append(torch.as_tensor(np.round(y, 6), dtype=torch.float64))
        return out

    def observation_values(self) -> list[torch.Tensor]:
        return self._observations

    def exact_posterior(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``(mean (10,), cov (10, 10))`` of ``theta`` given ``y`` (float64).

        ``cov = (I + A^T A / sigma^2)^{-1}``, ``mean = cov A^T y / sigma^2``.
        """
        y = self._check_y(torch.as_tensor(y, dtype=torch.float64))
        a = self.forward_matrix
        precision = torch.eye(self.dim_theta, dtype=torch.float64) + a.T @ a / self.noise_sd**2
        cov = torch.linalg.inv(precision)
        cov = 0.5 * (cov + cov.T)
        mean = (a.T @ y.unsqueeze(-1)).squeeze(-1) / self.noise_sd**2 @ cov.T
        return mean, cov

    def reference(
        self, index: int = 0, *, num_samples: int | None = 20_000, seed: int = 0
    ) -> dict[str, np.ndarray]:
        """Exact posterior draws for observation ``index`` (seeded): ``{"theta": (n, 10)}``."""
        mean, cov = self.exact_posterior(self.observation(index))
        n = 20_000 if num_samples is None else num_samples
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.dim_theta, generator=gen, dtype=torch.float64)
        draws = mean + z @ torch.linalg.cholesky(cov).T
        return {"theta": draws.numpy()}

    def pymc_model(self, y: Any) -> Any:
        import pymc as pm

        y = self._check_y(torch.as_tensor(np.asarray(y), dtype=torch.float64)).numpy()
        a = self.forward_matrix.numpy()
        with pm.Model() as m:
            theta = pm.Normal("theta", 0.0, 1.0, shape=(self.dim_theta,))
            pm.Normal("y", mu=pm.math.dot(a, theta), sigma=self.noise_sd, observed=y)
        return m
