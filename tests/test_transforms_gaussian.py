"""Closed-form checks: for ``mu = N(0, I)`` and ``nu = N(m, S)`` the KR map is
``m + cholesky(S) x`` (docs/maps.md). Fitting the maps to Gaussians must find it."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch

from pyro_kr.transforms import TriangularAffine, monotone_triangular_stack


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one intra-op thread is faster, and far faster on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gaussian(d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    cov = a @ a.T / d + 0.5 * torch.eye(d, dtype=torch.float64)
    return torch.randn(d, generator=gen, dtype=torch.float64), cov


def _gaussian_kl(t: TriangularAffine, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """Exact ``KL(N(b, L L^T) || N(m, S))``."""
    d = mean.shape[-1]
    scale, diff = t.scale_tril, mean - t.loc
    chol = torch.linalg.cholesky(cov)
    trace = torch.cholesky_solve(scale @ scale.T, chol).diagonal().sum()
    maha = diff @ torch.cholesky_solve(diff.unsqueeze(-1), chol).squeeze(-1)
    log_det = 2 * chol.diagonal().log().sum() - 2 * scale.diagonal().log().sum()
    return 0.5 * (trace + maha - d + log_det)


def _lbfgs(params, closure_loss, *, max_iter: int = 500) -> None:
    opt = torch.optim.LBFGS(
        params,
        max_iter=max_iter,
        history_size=50,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
    )

    def closure():
        opt.zero_grad()
        loss = closure_loss()
        loss.backward()
        return loss

    opt.step(closure)


@pytest.mark.parametrize("d", [1, 4])
def test_affine_fitted_by_exact_kl_is_the_cholesky_map(d):
    mean, cov = _gaussian(d, seed=d)
    t = TriangularAffine(d).double()
    _lbfgs(t.parameters(), lambda: _gaussian_kl(t, mean, cov))
    assert float(_gaussian_kl(t, mean, cov).detach()) < 1e-12
    torch.testing.assert_close(t.loc.detach(), mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        t.scale_tril.detach(), torch.linalg.cholesky(cov), rtol=0, atol=1e-6
    )


def test_affine_fitted_by_maximum_likelihood_is_the_sample_cholesky_map():
    """ML through Pyro's ``TransformedDistribution`` (inverse + log-det) on one fixed sample:
    the optimum is the sample mean and the Cholesky factor of the (biased) sample covariance."""
    d, n = 4, 2000
    mean, cov = _gaussian(d, seed=7)
    gen = torch.Generator().manual_seed(7)
    z = mean + torch.randn(n, d, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    t = TriangularAffine(d).double()
    base = dist.Normal(torch.zeros(d, dtype=torch.float64), 1.0).to_event(1)
    q = dist.TransformedDistribution(base, [t])
    _lbfgs(t.parameters(), lambda: -q.log_prob(z).mean())
    sample_mean = z.mean(0)
    sample_cov = (z - sample_mean).T @ (z - sample_mean) / n
    torch.testing.assert_close(t.loc.detach(), sample_mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        t.scale_tril.detach(), torch.linalg.cholesky(sample_cov), rtol=0, atol=1e-6
    )
    # and, statistically, the population's (a loose check: 2000 draws)
    torch.testing.assert_close(t.loc.detach(), mean, rtol=0, atol=0.15)


def _reverse_kl_fit(d: int, *, steps: int, batch: int, lr: float, seed: int):
    """Fit ``monotone_triangular_stack(d, depth=1)`` to ``N(m, S)`` by reverse KL (Adam with
    fresh base draws each step and an exponentially decaying step size)."""
    mean, cov = _gaussian(d, seed=seed)
    target = dist.MultivariateNormal(mean, cov)
    base = dist.Normal(torch.zeros(d, dtype=torch.float64), 1.0).to_event(1)
    torch.manual_seed(seed)
    t = monotone_triangular_stack(d, depth=1).double()
    opt = torch.optim.Adam(t.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1e-2 ** (1 / steps))

    def kl_terms(x: torch.Tensor) -> torch.Tensor:
        y = t(x)
        return base.log_prob(x) - t.log_abs_det_jacobian(x, y) - target.log_prob(y)

    for _ in range(steps):
        opt.zero_grad()
        kl_terms(torch.randn(batch, d, dtype=torch.float64)).mean().backward()
        opt.step()
        sched.step()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        x = torch.randn(50_000, d, generator=gen, dtype=torch.float64)
        terms = kl_terms(x)
        kl, stderr = float(terms.mean()), float(terms.std()) / math.sqrt(len(terms))
        exact = mean + x @ torch.linalg.cholesky(cov).T
        map_error = float((t(x.clone()) - exact).abs().mean())
    return kl, stderr, map_error


def test_stack_fitted_by_reverse_kl_reaches_small_kl_2d():
    kl, stderr, map_error = _reverse_kl_fit(2, steps=250, batch=256, lr=0.02, seed=1)
    assert kl < 1e-3, (kl, stderr)
    assert map_error < 0.05  # the fitted map is close to the KR map m + L x


@pytest.mark.slow
def test_stack_fitted_by_reverse_kl_reaches_small_kl_5d():
    kl, stderr, map_error = _reverse_kl_fit(5, steps=400, batch=512, lr=0.02, seed=1)
    assert kl < 1e-3, (kl, stderr)
    assert map_error < 0.05
