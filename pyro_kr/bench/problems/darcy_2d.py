"""``darcy_2d``: a small version of Kerrigan et al. 2024's Darcy flow inverse problem (app. F.3).

Model (fixed settings are fields of :class:`Darcy2D`):

* prior: ``xi ~ N(0, I_32)``, log-permeability ``u(x) = sum_m sqrt(lambda_m) xi_m phi_m(x)`` on
  a ``16 x 16`` cell-centred grid of the unit square, with the tensor cosine basis
  ``phi_jk(x1, x2) = c_j c_k cos(j pi x1) cos(k pi x2)`` (``c_0 = 1``, ``c_j = sqrt 2``) and the
  Matérn (nu = 3/2, d = 2, ``ell = 1/2`` as in the paper) spectral decay
  ``lambda_jk ∝ (1 + ell^2 pi^2 (j^2 + k^2))^-(nu + 1)``, scaled to unit mean pointwise variance
  over the kept modes; the 32 largest ``lambda`` are kept (ties in ``(j, k)`` order);
* forward: ``-div(exp(u) grad p) = 1``, ``p = 0`` on the boundary, cell-centred finite
  volumes (harmonic means on interior faces), one dense ``256 x 256`` solve;
* data: ``p`` at the centres of every other cell (an ``8 x 8`` grid) plus ``N(0, 0.002^2)``
  noise.

The benchmark observation is simulated at ``xi*`` drawn once from the prior (numpy seed 5).
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

__all__ = ["Darcy2D", "darcy_operator_indices", "solve_darcy_2d"]


def darcy_operator_indices(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Neighbour pairs and boundary-face counts of an ``n x n`` cell grid (row-major cells).

    Returns:
        ``(first, second, boundary)``: cell indices of each interior face ``(F,)`` twice, and
        the number of boundary faces of each cell ``(n * n,)``.
    """
    idx = np.arange(n * n).reshape(n, n)
    first = np.concatenate([idx[:, :-1].ravel(), idx[:-1, :].ravel()])
    second = np.concatenate([idx[:, 1:].ravel(), idx[1:, :].ravel()])
    boundary = np.zeros((n, n), dtype=np.int64)
    boundary[0, :] += 1
    boundary[-1, :] += 1
    boundary[:, 0] += 1
    boundary[:, -1] += 1
    return first, second, boundary.ravel()


def solve_darcy_2d(kappa: torch.Tensor, source: float = 1.0) -> torch.Tensor:
    """Solve ``-div(kappa grad p) = source`` with ``p = 0`` on the boundary (batched).

    Args:
        kappa: permeability per cell, shape ``(..., n, n)`` (cell-centred grid on the unit
            square, row-major).
        source: constant right-hand side.

    Returns:
        Pressure at the cell centres, shape ``(..., n, n)``.

    Example:
        >>> import torch
        >>> p = solve_darcy_2d(torch.ones(16, 16, dtype=torch.float64))
        >>> 0.07 < float(p.max()) < 0.075
        True
    """
    n = kappa.shape[-1]
    batch = kappa.shape[:-2]
    first, second, boundary = (torch.as_tensor(a) for a in darcy_operator_indices(n))
    k = kappa.reshape(*batch, n * n)
    t = 2.0 * k[..., first] * k[..., second] / (k[..., first] + k[..., second])
    size = n * n
    rows = torch.cat([first, second, first, second, torch.arange(size)])
    cols = torch.cat([first, second, second, first, torch.arange(size)])
    vals = torch.cat([t, t, -t, -t, 2.0 * k * boundary.to(k)], -1)
    flat = torch.zeros(*batch, size * size, dtype=k.dtype, device=k.device)
    flat = flat.index_add(-1, rows * size + cols, vals)
    a = flat.reshape(*batch, size, size)
    rhs = torch.full((*batch, size, 1), source / n**2, dtype=k.dtype, device=k.device)
    return torch.linalg.solve(a, rhs).reshape(*batch, n, n)


@dataclass(frozen=True)
class Darcy2D(Problem):
    """Darcy flow on a ``16 x 16`` grid; one vector latent site ``"xi"`` of shape ``(32,)``.

    Args:
        grid: cells per side ``n`` (even).
        num_modes: KL coefficients kept.
        lengthscale: Matérn lengthscale ``ell``.
        noise_sd: observation noise standard deviation.

    Example:
        >>> import pyro_kr.bench.problems as problems
        >>> p = problems.get("darcy_2d")
        >>> p.param_shapes, p.y_shape
        ({'xi': (32,)}, (64,))
    """

    name: ClassVar[str] = "darcy_2d"
    grid: int = 16
    num_modes: int = 32
    lengthscale: float = 0.5
    noise_sd: float = 0.002

    def __post_init__(self) -> None:
        if self.grid < 4 or self.grid % 2 or self.num_modes < 1 or self.noise_sd <= 0:
            raise ValueError(
                "need an even grid >= 4, num_modes >= 1 and noise_sd > 0, got "
                f"{self.grid}, {self.num_modes}, {self.noise_sd}"
            )

    @cached_property
    def basis(self) -> torch.Tensor:
        """``sqrt(lambda_m) phi_m`` at the cell centres, shape ``(num_modes, grid * grid)``."""
        n, nu = self.grid, 1.5
        x = (np.arange(n) + 0.5) / n
        modes = [(j, k) for j in range(n) for k in range(n)]
        scale = (self.lengthscale * math.pi) ** 2
        lam = np.array([1.0 + scale * (j * j + k * k) for j, k in modes]) ** -(nu + 1.0)
        order = np.argsort(-lam, kind="stable")[: self.num_modes]
        rows = []
        for m in order:
            j, k = modes[m]
            cj, ck = (1.0 if j == 0 else math.sqrt(2)), (1.0 if k == 0 else math.sqrt(2))
            rows.append(np.outer(cj * np.cos(j * math.pi * x), ck * np.cos(k * math.pi * x)))
        phi = np.stack(rows).reshape(self.num_modes, n * n)
        lam = lam[order] / lam[order].sum()  # unit mean pointwise variance of u
        return torch.as_tensor(np.sqrt(lam)[:, None] * phi, dtype=torch.float64)

    @property
    def obs_index(self) -> np.ndarray:
        """Flat (row-major) indices of the observed cells: every other cell, ``(grid/2)^2``."""
        n = self.grid
        idx = np.arange(n * n).reshape(n, n)
        return idx[1::2, 1::2].ravel()

    @property
    def y_shape(self) -> tuple[int, ...]:
        return ((self.grid // 2) ** 2,)

    def prior(self) -> dict[str, Distribution]:
        zero = torch.zeros(self.num_modes, dtype=torch.float64)
        return {"xi": dist.Normal(zero, 1.0).to_event(1)}

    def log_permeability(self, xi: torch.Tensor) -> torch.Tensor:
        """``u`` on the grid for ``xi (..., num_modes)``: shape ``(..., grid, grid)``."""
        return (xi @ self.basis.to(xi)).reshape(*xi.shape[:-1], self.grid, self.grid)

    def forward(self, xi: torch.Tensor) -> torch.Tensor:
        """Noise-free data for ``xi (..., num_modes)``: shape ``(..., (grid/2)^2)``."""
        p = solve_darcy_2d(self.log_permeability(xi).exp())
        return p.flatten(-2)[..., torch.as_tensor(self.obs_index)]

    def likelihood(self, u: dict[str, torch.Tensor]) -> Distribution:
        return dist.Normal(self.forward(u["xi"]), self.noise_sd).to_event(1)

    @cached_property
    def _observations(self) -> list[torch.Tensor]:
        rng = np.random.default_rng(5)
        xi = torch.as_tensor(rng.standard_normal(self.num_modes), dtype=torch.float64)
        y = self.forward(xi).numpy() + self.noise_sd * rng.standard_normal(self.y_shape)
        return [torch.as_tensor(np.round(y, 7), dtype=torch.float64)]

    def observation_values(self) -> list[torch.Tensor]:
        return self._observations

    def pymc_model(self, y: Any) -> Any:
        import pymc as pm
        import pytensor.tensor as pt
        from pytensor.tensor.slinalg import solve

        y = self._check_y(torch.as_tensor(np.asarray(y), dtype=torch.float64)).numpy()
        n = self.grid
        size = n * n
        _, _, boundary = darcy_operator_indices(n)
        with pm.Model() as m:
            xi = pm.Normal("xi", 0.0, 1.0, shape=(self.num_modes,))
            k = pt.exp(pt.dot(xi, self.basis.numpy()))
            # pentadiagonal operator: horizontal faces at offset 1, vertical faces at offset n
            th = 2.0 * k[:-1] * k[1:] / (k[:-1] + k[1:])
            th = th * (np.arange(1, size) % n != 0)  # no face across the end of a grid row
            tv = 2.0 * k[:-n] * k[n:] / (k[:-n] + k[n:])
            zero1, zeron = pt.zeros(1), pt.zeros(n)
            diag = (
                pt.concatenate([th, zero1])
                + pt.concatenate([zero1, th])
                + pt.concatenate([tv, zeron])
                + pt.concatenate([zeron, tv])
                + 2.0 * k * boundary
            )
            a = pt.diag(diag) - pt.diag(th, 1) - pt.diag(th, -1) - pt.diag(tv, n) - pt.diag(tv, -n)
            p = solve(a, np.full(size, 1.0 / size), assume_a="gen")
            pm.Normal("y", mu=p[self.obs_index], sigma=self.noise_sd, observed=y)
        return m
