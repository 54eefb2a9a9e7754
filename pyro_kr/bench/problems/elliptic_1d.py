"""``elliptic_1d``: infer a log-diffusivity field from noisy point values of a 1-d elliptic PDE.

Model (all fixed settings are fields of :class:`Elliptic1D`):

* prior: ``xi ~ N(0, I_J)`` (``J = 12``) and ``log k(x) = sum_j sqrt(lambda_j) xi_j phi_j(x)``,
  a truncated Karhunen-Loeve expansion with ``phi_j(x) = sqrt(2) cos(j pi x)`` and Matérn-like
  (nu = 3/2) decay ``lambda_j = (1 + (j pi ell)^2)^-2``, ``ell = 0.2``;
* forward: ``-(k p')' = 1`` on ``(0, 1)``, ``p(0) = p(1) = 0``, by second-order finite
  differences on ``N = 63`` interior nodes (``h = 1/64``), ``k`` evaluated at the midpoints;
* data: ``p`` at the 15 nodes ``x = m / 16``, ``m = 1..15``, plus ``N(0, 0.005^2)`` noise.

The benchmark observation is simulated at ``xi*`` drawn once from the prior (numpy seed 11).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
import pyro.distributions as dist
import torch
from torch.distributions import Distribution

from pyro_kr.bench.problems.base import Problem

__all__ = ["Elliptic1D", "solve_elliptic_1d"]


def solve_elliptic_1d(k_mid: torch.Tensor, source: float = 1.0) -> torch.Tensor:
    """Solve ``-(k p')' = source``, ``p(0) = p(1) = 0`` by finite differences (batched).

    Args:
        k_mid: diffusivity at the ``N + 1`` cell midpoints ``(i + 1/2) h``, shape ``(..., N+1)``.
        source: constant right-hand side.

    Returns:
        ``p`` at the ``N`` interior nodes ``i h`` (``i = 1..N``), shape ``(..., N)``.

    Example:
        >>> import torch
        >>> p = solve_elliptic_1d(torch.ones(64, dtype=torch.float64))
        >>> round(float(p[31]), 6)  # x = 1/2: p = x (1 - x) / 2
        0.125
    """
    n = k_mid.shape[-1] - 1
    h = 1.0 / (n + 1)
    diag = k_mid[..., :-1] + k_mid[..., 1:]
    off = -k_mid[..., 1:-1]
    a = torch.diag_embed(diag) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    rhs = torch.full((*k_mid.shape[:-1], n, 1), source * h * h, dtype=k_mid.dtype)
    return torch.linalg.solve(a, rhs).squeeze(-1)


@dataclass(frozen=True)
class Elliptic1D(Problem):
    """1-d elliptic inverse problem; one vector latent site ``"xi"`` of shape ``(num_modes,)``.

    Args:
        num_modes: KL coefficients ``J``.
        lengthscale: ``ell`` of the Matérn-like decay.
        num_nodes: interior finite-difference nodes ``N`` (``N + 1`` divisible by 16).
        noise_sd: observation noise standard deviation.

    Example:
        >>> import pyro_kr.bench.problems as problems
        >>> p = problems.get("elliptic_1d")
        >>> p.param_shapes, p.y_shape
        ({'xi': (12,)}, (15,))
    """

    name: ClassVar[str] = "elliptic_1d"
    num_modes: int = 12
    lengthscale: float = 0.2
    num_nodes: int = 63
    noise_sd: float = 0.005

    def __post_init__(self) -> None:
        if self.num_modes < 1 or (self.num_nodes + 1) % 16 or self.noise_sd <= 0:
            raise ValueError(
                "need num_modes >= 1, num_nodes + 1 divisible by 16 and noise_sd > 0, got "
                f"{self.num_modes}, {self.num_nodes}, {self.noise_sd}"
            )

    @cached_property
    def basis(self) -> torch.Tensor:
        """``sqrt(lambda_j) phi_j`` at the midpoints, shape ``(num_modes, num_nodes + 1)``."""
        x = (np.arange(self.num_nodes + 1) + 0.5) / (self.num_nodes + 1)
        j = np.arange(1, self.num_modes + 1)
        lam = (1.0 + (j * math.pi * self.lengthscale) ** 2) ** -2.0
        phi = math.sqrt(2.0) * np.cos(math.pi * j[:, None] * x[None, :])
        return torch.as_tensor(np.sqrt(lam)[:, None] * phi, dtype=torch.float64)

    @property
    def obs_index(self) -> np.ndarray:
        """Interior-node indices (0-based) of the observed points ``x = m / 16``."""
        stride = (self.num_nodes + 1) // 16
        return np.arange(1, 16) * stride - 1

    @property
    def y_shape(self) -> tuple[int, ...]:
        return (15,)

    def prior(self) -> dict[str, Distribution]:
        zero = torch.zeros(self.num_modes, dtype=torch.float64)
        return {"xi": dist.Normal(zero, 1.0).to_event(1)}

    def log_k(self, xi: torch.Tensor) -> torch.Tensor:
        """Log-diffusivity at the midpoints, shape ``(..., num_nodes + 1)``."""
        return xi @ self.basis.to(xi)

    def forward(self, xi: torch.Tensor) -> torch.Tensor:
        """Noise-free data ``p(x_obs)`` for ``xi (..., J)``: shape ``(..., 15)``."""
        p = solve_elliptic_1d(self.log_k(xi).exp())
        return p[..., torch.as_tensor(self.obs_index)]

    def likelihood(self, u: dict[str, torch.Tensor]) -> Distribution:
        return dist.Normal(self.forward(u["xi"]), self.noise_sd).to_event(1)

    @cached_property
    def _observations(self) -> list[torch.Tensor]:
        rng = np.random.default_rng(11)
        xi = torch.as_tensor(rng.standard_normal(self.num_modes), dtype=torch.float64)
        y = self.forward(xi).numpy() + self.noise_sd * rng.standard_normal(15)
        return [torch.as_tensor(np.round(y, 7), dtype=torch.float64)]

    def observation_values(self) -> list[torch.Tensor]:
        return self._observations

    def pymc_model(self, y: Any) -> Any:
        import pymc as pm
        import pytensor.tensor as pt
        from pytensor.tensor.slinalg import solve

        y = self._check_y(torch.as_tensor(np.asarray(y), dtype=torch.float64)).numpy()
        n = self.num_nodes
        h = 1.0 / (n + 1)
        basis = self.basis.numpy()
        with pm.Model() as m:
            xi = pm.Normal("xi", 0.0, 1.0, shape=(self.num_modes,))
            k = pt.exp(pt.dot(xi, basis))
            a = pt.diag(k[:-1] + k[1:])
            idx = np.arange(n - 1)
            a = pt.inc_subtensor(a[idx, idx + 1], -k[1:-1])
            a = pt.inc_subtensor(a[idx + 1, idx], -k[1:-1])
            p = solve(a, np.full(n, h * h), assume_a="gen")
            pm.Normal("y", mu=p[self.obs_index], sigma=self.noise_sd, observed=y)
        return m
