"""Sparse KR maps from plate structure (AutoKR(structure="plates")) and sampling memory."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pyro
import pyro.distributions as dist
import pytest
import torch
from _gaussian_hierarchy import N, exact_posterior, hierarchy_data, known_tau_model
from pyro import poutine
from pyro.infer import Trace_ELBO

import pyro_kr
from pyro_kr.guides.sparse import SparseKRMap
from pyro_kr.transforms.tril_ops import TrilCache, tril_matmul, tril_solve

_data, _model, _exact = hierarchy_data, known_tau_model, exact_posterior


def test_tril_ops_gradients_match_dense_factor():
    torch.manual_seed(0)
    d = 5
    off = torch.randn(d, d, dtype=torch.float64, requires_grad=True)
    raw = torch.randn(d, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, d, dtype=torch.float64, requires_grad=True)

    def dense(x, off, raw):
        return x @ (off.tril(-1) + torch.diag_embed(raw.exp())).T

    def fast(x, off, raw):
        diag = raw.exp()
        return tril_matmul(x, off, diag, TrilCache().get(off, raw, diag))

    def fast_solve(x, off, raw):
        diag = raw.exp()
        return tril_solve(x, off, diag, TrilCache().get(off, raw, diag))

    def dense_solve(x, off, raw):
        tril = off.tril(-1) + torch.diag_embed(raw.exp())
        return torch.linalg.solve_triangular(tril, x.T, upper=False).T

    for a, b in [(fast, dense), (fast_solve, dense_solve)]:
        w = torch.randn(3, d, dtype=torch.float64)
        ga = torch.autograd.grad((a(x, off, raw) * w).sum(), (x, off, raw))
        gb = torch.autograd.grad((b(x, off, raw) * w).sum(), (x, off, raw))
        for u, v in zip(ga, gb, strict=True):
            assert torch.allclose(u, v, atol=1e-10)


def _fitted_sparse(map_kind="affine", steps=0, **kw):
    y, sigma = _data()
    pyro.clear_param_store()
    torch.manual_seed(0)
    guide = pyro_kr.AutoKR(_model, map=map_kind, structure="plates", **kw)
    guide(y, sigma)
    if steps:
        pyro_kr.fit(_model, guide, y, sigma, steps=steps, progress=False)
    return guide, y, sigma


@pytest.mark.parametrize("map_kind", ["affine", "monotone"])
def test_sparse_jacobian_pattern_logdet_and_inverse(map_kind):
    guide, y, sigma = _fitted_sparse(map_kind)
    t = guide.transform
    assert isinstance(t, SparseKRMap)
    with torch.no_grad():  # move off the identity-like initialization
        for p in t.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(guide.latent_dim)
    jac = torch.autograd.functional.jacobian(lambda v: t(v), x)
    expected = torch.zeros(N + 1, N + 1, dtype=torch.bool)  # (mu, theta_1..N), d_l = 1
    expected[:, 0] = True
    expected[range(N + 1), range(N + 1)] = True
    assert torch.equal(jac.abs() > 0, expected)
    z = t(x)
    assert torch.allclose(t.log_abs_det_jacobian(x, z), torch.slogdet(jac)[1], atol=1e-4)
    t._cached_x_y = None, None
    assert torch.allclose(t.inv(z.detach()), x, atol=1e-4)


@pytest.mark.parametrize("map_kind", ["affine", "monotone"])
def test_local_scale_slope_scales_each_group_and_can_be_left_out(map_kind):
    from pyro_kr.guides.sparse import LocalMap, LocalTransform

    n, dg, dl = 5, 3, 2
    kw = dict(loc=torch.randn(n, dl, generator=torch.Generator().manual_seed(1)),
              init_scale=0.3, map_kind=map_kind, depth=1)
    torch.manual_seed(0)
    sloped = LocalMap(n, dg, dl, **kw)
    torch.manual_seed(0)
    flat = LocalMap(n, dg, dl, scale_slope=False, **kw)
    context, u = torch.randn(4, 1, dg), torch.randn(4, n, dl)
    assert flat.scale_coupling is None and flat.log_scale(context, None) is None
    assert sloped.log_scale(context, None).shape == (4, n, dl)
    t1, t0 = LocalTransform(sloped, context, None), LocalTransform(flat, context, None)
    # the slopes start at zero: the same map as without them
    assert torch.allclose(t1(u), t0(u))
    assert torch.allclose(t1.log_abs_det_jacobian(u, t1(u)), t0.log_abs_det_jacobian(u, t0(u)))
    with torch.no_grad():
        sloped.scale_coupling_shared.fill_(0.5)  # every coordinate's scale * exp(0.5 sum x_g)
    t1 = LocalTransform(sloped, context, None)
    scale = (0.5 * context.sum(-1, keepdim=True)).exp()  # (4, 1, 1)
    zero = torch.zeros_like(u)
    spread1 = t1(u) - LocalTransform(sloped, context, None)(zero)
    spread0 = t0(u) - LocalTransform(flat, context, None)(zero)
    assert torch.allclose(spread1, scale * spread0, atol=1e-6)
    z = t1(u)
    gain = t1.log_abs_det_jacobian(u, z) - t0.log_abs_det_jacobian(u, t0(u))
    assert torch.allclose(gain, dl * scale.log().squeeze(-1).expand(4, n), atol=1e-5)
    fresh = LocalTransform(sloped, context, None)  # no cache: a real inverse
    assert torch.allclose(fresh.inv(z.detach()), u, atol=1e-4)


@pytest.mark.slow
def test_sparse_affine_recovers_exact_posterior_with_default_guide():
    guide, y, sigma = _fitted_sparse("affine")
    pyro.clear_param_store()
    elbo = pyro_kr.TransportELBO(num_particles=16)
    steps = 2000  # Adam with the step size decaying 2e-2 -> 2e-4 (the noise floor of SGD)
    optim = pyro.optim.ClippedAdam({"lr": 2e-2, "lrd": 0.01 ** (1 / steps)})
    pyro_kr.fit(_model, guide, y, sigma, loss=elbo, steps=steps, optim=optim, progress=False)
    draws = guide.sample_posterior(40000, y, sigma)
    z = torch.cat([draws["mu"][:, None], draws["theta"]], 1).double()
    mean, cov = _exact(y, sigma)
    sd = cov.diag().sqrt()
    assert ((z.mean(0) - mean).abs() / sd).max() < 0.1
    assert ((z.std(0) / sd) - 1).abs().max() < 0.1
    corr = torch.corrcoef(z.T)
    exact_corr = cov / torch.outer(sd, sd)
    assert (corr - exact_corr).abs().max() < 0.1
    # the leading global's exact marginal and the conditional given it
    assert guide.marginal(["mu"], 10)["mu"].shape == (10,)
    assert guide.conditional({"mu": 1.0}).sample(4)["theta"].shape == (4, N)


def test_subsampled_elbo_is_unbiased():
    y, sigma = _data(12)
    pyro.clear_param_store()
    torch.manual_seed(0)
    guide = pyro_kr.AutoKR(_model, map="affine", structure="plates")
    guide(y, sigma, 4)
    assert guide._plate_plan.subsampled
    with torch.no_grad():
        for p in guide.transform.parameters():
            p.add_(0.05 * torch.randn_like(p))
    elbo = Trace_ELBO()
    torch.manual_seed(1)
    sub = torch.tensor([elbo.loss(_model, guide, y, sigma, 4) for _ in range(3000)])
    # the full-data ELBO with the same parameters, through the packed (all-groups) map
    full = []
    with torch.no_grad():
        for _ in range(3000):
            x = torch.randn(guide.latent_dim)
            z = guide.transform(x)
            log_q = dist.Normal(0.0, 1.0).log_prob(x).sum() - guide.transform.log_abs_det_jacobian(
                x, z
            )
            values = guide._constrain(z)
            log_q = log_q - torch.log(values["theta"].new_ones(())).sum()  # identity supports
            tr = poutine.trace(poutine.condition(_model, data=values)).get_trace(y, sigma)
            full.append(float(log_q - tr.log_prob_sum()))
    full = torch.tensor(full)
    se = (sub.var() / len(sub) + full.var() / len(full)).sqrt()
    assert abs(float(sub.mean() - full.mean())) < 4 * float(se)


def test_unsupported_structure_falls_back_with_logged_reason(caplog):
    def crossed(y):  # crossed effects: no plate holds every local site
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("a", 3, dim=-2):
            u = pyro.sample("u", dist.Normal(mu, 1.0))
        with pyro.plate("b", 2, dim=-1):
            v = pyro.sample("v", dist.Normal(mu, 1.0))
        with pyro.plate("a2", 3, dim=-2), pyro.plate("b2", 2, dim=-1):
            pyro.sample("y", dist.Normal(u + v, 1.0), obs=y)

    guide = pyro_kr.AutoKR(crossed, structure="plates", map="affine")
    with caplog.at_level(logging.WARNING, logger="pyro_kr.guides.sparse"):
        guide(torch.zeros(3, 2))
    assert "no plate holds every local latent site" in caplog.text and "dense" in caplog.text
    assert not isinstance(guide.transform, SparseKRMap)


def test_structure_is_validated():
    with pytest.raises(ValueError, match="structure"):
        pyro_kr.AutoKR(_model, structure="sparse-ish")


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys, torch, pyro, pyro.distributions as dist
    from pyro.infer import Predictive
    import pyro_kr
    from pyro_kr.diagnostics import psis, to_inference_data
    torch.set_num_threads(1)
    N = 300
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("g", N):
            theta = pyro.sample("theta", dist.Normal(mu, 1.0))
            pyro.sample("y", dist.Normal(theta, 1.0), obs=y)
    y = torch.randn(N)
    guide = pyro_kr.AutoKR(model, map="affine", structure=sys.argv[1])
    guide(y)
    psis(guide, model, y, num_samples=10)  # imports arviz (about 200 MB) before measuring
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r0 = rss()
    Predictive(model, guide=guide, num_samples=1000)(y)
    guide.sample_posterior(8000, y)
    psis(guide, model, y, num_samples=4000)
    to_inference_data(guide, model, y, num_samples=4000)
    print(rss() - r0)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("structure", ["dense", "plates"])
def test_sampling_memory_is_linear_in_draws(structure):
    # 301 latents: before the fix, sequential Predictive alone grew by one 301 x 301 factor
    # per draw (332 MB for 1,000 draws); the draws themselves take a few MB.
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, structure],
        capture_output=True, text=True, timeout=300, check=True,
        env={"OMP_NUM_THREADS": "1", "PATH": ""},
    )
    grown = float(out.stdout.strip().splitlines()[-1])
    assert grown < 150, f"peak resident memory grew by {grown:.0f} MB"


def test_subsampled_transport_cost_is_unbiased_in_kr_order():
    from pyro_kr.objective.cost import transport_cost, weighted_cost

    y, sigma = _data(12)
    pyro.clear_param_store()
    torch.manual_seed(0)
    guide = pyro_kr.AutoKR(_model, map="affine", structure="plates")
    guide(y, sigma, 4)
    with torch.no_grad():
        for p in guide.transform.parameters():
            p.add_(0.2 * torch.randn_like(p))
        eps = 0.8
        sub = torch.tensor(
            [float(transport_cost(poutine.trace(guide).get_trace(y, sigma, 4), eps))
             for _ in range(3000)]
        )
        x = torch.randn(3000, guide.latent_dim)
        full = weighted_cost(x, guide.transform(x), eps)
    se = (sub.var() / len(sub) + full.var() / len(full)).sqrt()
    assert abs(float(sub.mean() - full.mean())) < 4 * float(se)


def test_marginal_of_the_globals_maps_only_the_globals(monkeypatch):
    """``marginal`` of leading globals evaluates the globals' map alone, and its draws are
    the leading outputs of the whole sparse map for the same reference draws."""
    guide, y, sigma = _fitted_sparse("monotone")
    with torch.no_grad():
        for p in guide.transform.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert guide.order[0] == "mu"
    calls = []
    whole_call = SparseKRMap._call
    monkeypatch.setattr(
        SparseKRMap, "_call", lambda self, x: calls.append(x) or whole_call(self, x)
    )
    torch.manual_seed(3)
    draws = guide.marginal("mu", 50)["mu"]
    assert calls == [] and draws.shape == (50,)
    torch.manual_seed(3)
    x = torch.zeros(50, guide.latent_dim)
    x[:, :1] = torch.randn(50, guide.transform.global_dim)[:, :1]
    with torch.no_grad():
        whole = guide.get_transform()(x)[:, 0]
    assert len(calls) == 1
    torch.testing.assert_close(draws, whole, rtol=0.0, atol=1e-6)
