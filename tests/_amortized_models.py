"""Small test-local models with exact posteriors, shared by the amortized-inference tests."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

A = torch.tensor([[1.0, 0.5], [0.0, 1.0], [0.3, -0.7]], dtype=torch.float64)
SIGMA = 0.5


def linear_gaussian(y=None):
    """``z ~ N(0, I_2)``, ``y ~ N(A z, 0.25 I_3)``."""
    z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))
    return pyro.sample("y", dist.Normal(z @ A.T, SIGMA).to_event(1), obs=y)


def exact_posterior(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact posterior mean ``(..., 2)`` and Cholesky factor ``(2, 2)`` of ``linear_gaussian``."""
    precision = torch.eye(2, dtype=torch.float64) + A.T @ A / SIGMA**2
    cov = torch.linalg.inv(precision)
    mean = (y @ A / SIGMA**2) @ cov.T
    return mean, torch.linalg.cholesky(cov)


def constrained(y=None):
    """A positive scalar and a 3-vector latent; positive (log-normal) data of shape (4,)."""
    scale = pyro.sample("scale", dist.LogNormal(torch.tensor(0.0, dtype=torch.float64), 0.3))
    loc = pyro.sample("loc", dist.Normal(torch.zeros(3, dtype=torch.float64), 1.0).to_event(1))
    mean = torch.cat([loc, loc.sum(-1, keepdim=True)], -1)
    return pyro.sample("y", dist.LogNormal(mean, scale.unsqueeze(-1)).to_event(1), obs=y)


def softplus_inverse(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


def set_exact_affine(guide, scale_factor: float = 1.0) -> None:
    """Set an affine guide (identity embedding, ``hidden_dims=()``) to the exact posterior.

    ``scale_factor`` multiplies the Cholesky factor (1.0: exact; else deliberately wrong).
    """
    affine = guide.nets["maps"][-1]
    layer = affine.net[-1]
    precision = torch.eye(2, dtype=torch.float64) + A.T @ A / SIGMA**2
    cov = torch.linalg.inv(precision)
    chol = torch.linalg.cholesky(cov) * scale_factor
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
        layer.weight[:2] = cov @ A.T / SIGMA**2
        layer.bias[2:4] = softplus_inverse(chol.diagonal() - 1e-6)
        rows, cols = torch.tril_indices(2, 2, offset=-1)
        layer.bias[4:] = chol[rows, cols]


def unseen_linear_gaussian(n: int, seed: int) -> torch.Tensor:
    """``n`` datasets ``(n, 3)`` simulated from ``linear_gaussian`` with ``seed``."""
    pyro.set_rng_seed(seed)
    return torch.stack([pyro.poutine.uncondition(linear_gaussian)() for _ in range(n)])


def linear_gaussian_errors(guide, n: int = 10, seed: int = 123,
                           num_draws: int = 20_000) -> tuple[float, float]:
    """How far an amortized guide of ``linear_gaussian`` is from the exact posterior on ``n``
    unseen datasets: the largest absolute error of the posterior mean, and the largest absolute
    error of the covariance relative to the covariance's largest entry (``num_draws`` draws,
    seed 1; the Monte Carlo sd of the mean is at most 0.6 / sqrt(num_draws))."""
    ys = unseen_linear_gaussian(n, seed)
    mean, chol = exact_posterior(ys)
    cov = chol @ chol.T
    torch.manual_seed(1)
    with torch.no_grad():
        draws = guide.posterior(ys).sample((num_draws,))  # (num_draws, n, 2)
    q_mean = draws.mean(0)
    centred = draws - q_mean
    q_cov = torch.einsum("nbi,nbj->bij", centred, centred) / (len(draws) - 1)
    return float((q_mean - mean).abs().max()), float((q_cov - cov).abs().max() / cov.abs().max())
