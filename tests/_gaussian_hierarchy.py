"""A conjugate Gaussian hierarchy with known ``tau`` and its exact posterior (shared by the
sparse-map and path-gradient tests)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

N = 6
TAU = 1.5


def hierarchy_data(n=N, seed=0):
    """``(y, sigma)`` of ``n`` groups simulated with ``mu = 1`` and ``TAU``."""
    g = torch.Generator().manual_seed(seed)
    sigma = torch.linspace(0.5, 2.0, n)
    return 1.0 + TAU * torch.randn(n, generator=g) + sigma * torch.randn(n, generator=g), sigma


def known_tau_model(y, sigma, subsample_size=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    with pyro.plate("groups", len(y), subsample_size=subsample_size) as idx:
        theta = pyro.sample("theta", dist.Normal(mu, TAU))
        pyro.sample("y", dist.Normal(theta, sigma[idx]), obs=y[idx])


def exact_posterior(y, sigma):
    """Mean and covariance of the Gaussian posterior of ``(mu, theta)`` (float64)."""
    n = len(y)
    prec = torch.zeros(n + 1, n + 1, dtype=torch.float64)
    rhs = torch.zeros(n + 1, dtype=torch.float64)
    prec[0, 0] = 1 / 25
    for i in range(n):
        v = torch.zeros(n + 1, dtype=torch.float64)
        v[0], v[i + 1] = -1.0, 1.0
        prec += torch.outer(v, v) / TAU**2
        prec[i + 1, i + 1] += 1 / float(sigma[i]) ** 2
        rhs[i + 1] = float(y[i]) / float(sigma[i]) ** 2
    cov = torch.linalg.inv(prec)
    return cov @ rhs, cov
