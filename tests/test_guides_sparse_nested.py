"""Sparse AutoKR on nested plates with several local sites per group (a conjugate Gaussian).

Model: globals ``mu``, ``nu``; per school ``s`` (plate ``schools``, dim -1) two local sites
``eta_s ~ N(mu, 1.5)`` and ``b_s ~ N(nu, 1)``; per class ``c`` of school ``s`` (nested plate
``classes``, dim -2) ``theta_cs ~ N(eta_s, 0.8)`` and ``y_cs ~ N(theta_cs + b_s w_cs, sigma)``.
The posterior is Gaussian: its mean and covariance come from the Hessian of the log joint.
Given the globals, the schools are independent, so the KR map in the packed order
``(mu, nu, eta (S,), b (S,), theta (C, S))`` is sparse: coordinate ``k`` of school ``s``
depends on the globals and on school ``s``'s coordinates up to ``k`` only.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

import pyro_kr
from pyro_kr.guides.sparse import SparseKRMap

S, C = 4, 3


def _data(s=S, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(C, s, generator=g)
    sigma = torch.linspace(0.5, 1.5, C * s).reshape(C, s)
    y = 1.0 + 2.0 * torch.randn(C, s, generator=g)
    return y, w, sigma


def _model(y, w, sigma, subsample_size=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
    nu = pyro.sample("nu", dist.Normal(0.0, 2.0))
    with pyro.plate("schools", y.shape[-1], subsample_size=subsample_size) as idx:
        eta = pyro.sample("eta", dist.Normal(mu, 1.5))
        b = pyro.sample("b", dist.Normal(nu, 1.0))
        with pyro.plate("classes", C):
            theta = pyro.sample("theta", dist.Normal(eta, 0.8))
            pyro.sample("y", dist.Normal(theta + b * w[:, idx], sigma[:, idx]), obs=y[:, idx])


def _guide(map_kind="affine", data=None, **kw):
    pyro.clear_param_store()
    torch.manual_seed(0)
    data = _data() if data is None else data
    guide = pyro_kr.AutoKR(_model, map=map_kind, structure="plates", **kw)
    guide(*data)
    return guide, data


def _exact(guide, data):
    """Mean and covariance of the Gaussian posterior in the guide's packed order (float64)."""
    d = guide.latent_dim

    def log_joint(z):
        values = guide._constrain(z)  # every support is the real line: no Jacobian
        return poutine.trace(poutine.condition(_model, values)).get_trace(*data).log_prob_sum()

    z0 = torch.zeros(d)
    grad = torch.autograd.functional.jacobian(log_joint, z0).double()
    prec = -torch.autograd.functional.hessian(log_joint, z0).double()
    mean = torch.linalg.solve(prec, grad)
    return mean, torch.linalg.inv(prec)


def _groups(guide) -> torch.Tensor:
    """School of each packed coordinate (-1 for the globals)."""
    t = guide.transform
    group = torch.full((guide.latent_dim,), -1)
    rows = torch.arange(S).unsqueeze(-1).expand(t._positions.shape)
    group[t.global_dim + t._positions.reshape(-1)] = rows.reshape(-1)
    return group


def _predicted_pattern(guide) -> torch.Tensor:
    group = _groups(guide)
    k, j = torch.meshgrid(torch.arange(len(group)), torch.arange(len(group)), indexing="ij")
    same = (group[j] == -1) | (group[j] == group[k])
    return same & (j <= k)


def test_nested_plan_groups_schools_with_three_local_sites():
    guide, _ = _guide()
    plan = guide._plate_plan
    assert isinstance(guide.transform, SparseKRMap)
    assert plan.plate == "schools" and plan.full_size == S
    assert plan.globals == ("mu", "nu") and plan.locals == ("eta", "b", "theta")
    assert plan.local_sizes == (1, 1, C) and plan.group_axes == (0, 0, 1)
    # school s holds eta_s, b_s and the column theta[:, s]
    group = _groups(guide)
    slices = guide.site_slices()
    assert torch.equal(group[slices["eta"]], torch.arange(S))
    assert torch.equal(group[slices["theta"]].reshape(C, S), torch.arange(S).expand(C, S))


@pytest.mark.parametrize("map_kind", ["affine", "monotone"])
def test_nested_jacobian_has_the_predicted_zero_pattern(map_kind):
    guide, _ = _guide(map_kind)
    t = guide.transform
    with torch.no_grad():  # move off the identity-like initialization
        for p in t.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(guide.latent_dim, dtype=torch.float64)
    t = t.double()
    jac = torch.autograd.functional.jacobian(lambda v: t(v), x)
    assert torch.equal(jac.abs() > 0, _predicted_pattern(guide))
    z = t(x)
    assert torch.allclose(t.log_abs_det_jacobian(x, z), torch.slogdet(jac)[1], atol=1e-8)
    t._cached_x_y = None, None
    assert torch.allclose(t.inv(z.detach()), x, atol=1e-6)


def test_exact_posterior_factor_has_the_pattern_and_the_sparse_affine_map_holds_it():
    """The Cholesky factor of the exact covariance (the KR map of the Gaussian posterior, in
    the packed order) vanishes outside the predicted pattern, and the sparse affine map with
    its heads set from that factor (shared conditional map at the identity) is exactly
    ``x -> mean + L x``."""
    guide, data = _guide()
    mean, cov = _exact(guide, data)
    factor = torch.linalg.cholesky(cov)
    pattern = _predicted_pattern(guide)
    assert factor[~pattern].abs().max() < 1e-12
    # Inside the pattern, the only zeros are between two classes of one school (classes are
    # independent given their school's sites: a sparsity level below the groups' that the
    # map does not use, since it is dense within a group).
    theta = torch.zeros(guide.latent_dim, dtype=torch.bool)
    theta[guide.site_slices()["theta"]] = True
    k, j = torch.meshgrid(torch.arange(len(theta)), torch.arange(len(theta)), indexing="ij")
    between_classes = theta[k] & theta[j] & (k != j)
    assert torch.equal(pattern & (factor.abs() < 1e-12), pattern & between_classes)

    t = guide.transform.double()
    dg, pos = t.global_dim, t._positions
    idx = dg + pos  # (S, d_l) packed indices of each school's coordinates
    with torch.no_grad():
        t.global_map[-1].set_loc(mean[:dg])
        t.global_map[-1].set_scale_tril(factor[:dg, :dg])
        local = t.local
        for name, p in local.named_parameters():  # the pooled heads' shared part: zero
            if name.endswith("_shared"):
                p.zero_()
        local.loc.copy_(mean[idx])
        local.coupling.copy_(factor[idx][:, :, :dg])
        block = factor[idx.unsqueeze(-1), idx.unsqueeze(-2)]  # (S, d_l, d_l)
        diag = block.diagonal(dim1=-2, dim2=-1)
        local.unconstrained_diag.copy_(torch.log(torch.expm1(diag - 1e-6)))
        local.off_diag.copy_(block.tril(-1))
        last = local.shared[0].net[-1]  # the shared conditional affine map: identity
        last.weight.zero_()
        last.bias.zero_()
        last.bias[pos.shape[-1] : 2 * pos.shape[-1]].fill_(math.log(math.expm1(1 - 1e-6)))
    x = torch.randn(5, guide.latent_dim, dtype=torch.float64)
    assert torch.allclose(t(x), mean + x @ factor.T, atol=1e-9)
    log_det = t.log_abs_det_jacobian(x, t(x))
    assert torch.allclose(log_det, factor.diagonal().log().sum().expand(5), atol=1e-9)


@pytest.mark.slow
def test_nested_sparse_affine_recovers_the_exact_posterior_by_training():
    guide, data = _guide()
    elbo = pyro_kr.TransportELBO(num_particles=16)
    steps = 2000  # Adam with the step size decaying 2e-2 -> 2e-4 (the noise floor of SGD)
    optim = pyro.optim.ClippedAdam({"lr": 2e-2, "lrd": 0.01 ** (1 / steps)})
    pyro_kr.fit(_model, guide, *data, loss=elbo, steps=steps, optim=optim, progress=False)
    mean, cov = _exact(guide, data)
    x = torch.randn(40000, guide.latent_dim)
    with torch.no_grad():
        z = guide.transform(x).double()
    sd = cov.diag().sqrt()
    assert ((z.mean(0) - mean).abs() / sd).max() < 0.1
    assert ((z.std(0) / sd) - 1).abs().max() < 0.1
    exact_corr = cov / torch.outer(sd, sd)
    assert (torch.corrcoef(z.T) - exact_corr).abs().max() < 0.1


def test_nested_subsampled_elbo_is_unbiased():
    data = _data(8, seed=1)
    guide, _ = _guide(data=data)
    pyro.clear_param_store()
    torch.manual_seed(0)
    guide = pyro_kr.AutoKR(_model, map="affine", structure="plates")
    guide(*data, 3)
    assert guide._plate_plan.subsampled and guide._plate_plan.full_size == 8
    with torch.no_grad():
        for p in guide.transform.parameters():
            p.add_(0.05 * torch.randn_like(p))
    elbo = Trace_ELBO()
    torch.manual_seed(1)
    sub = torch.tensor([elbo.loss(_model, guide, *data, 3) for _ in range(500)])
    full = []
    with torch.no_grad():
        for _ in range(500):
            x = torch.randn(guide.latent_dim)
            z = guide.transform(x)
            log_q = dist.Normal(0.0, 1.0).log_prob(x).sum()
            log_q = log_q - guide.transform.log_abs_det_jacobian(x, z)
            tr = poutine.trace(poutine.condition(_model, guide._constrain(z))).get_trace(*data)
            full.append(float(log_q - tr.log_prob_sum()))
    full = torch.tensor(full)
    se = (sub.var() / len(sub) + full.var() / len(full)).sqrt()
    assert abs(float(sub.mean() - full.mean())) < 4 * float(se)


def test_nested_subsampled_vectorized_particles_train():
    data = _data(8, seed=1)
    pyro.clear_param_store()
    torch.manual_seed(0)
    guide = pyro_kr.AutoKR(_model, structure="plates")
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=2)
    svi = pyro.infer.SVI(_model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    losses = [svi.step(*data, 3) for _ in range(5)]
    assert all(math.isfinite(v) for v in losses)
    draws = guide.sample_posterior(7, *data)
    assert draws["theta"].shape == (7, C, 8) and draws["eta"].shape == (7, 8)
