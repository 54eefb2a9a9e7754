"""The path-derivative ("sticking the landing") gradient: ``TransportELBO(gradient="path")``.

Checked against mathematics: the score ``grad_z log q(z)`` against the dense Jacobian solve
(autograd) for dense and sparse maps and against the Gaussian closed form; the gradient is
unbiased (its mean equals the reparameterized gradient's) and exactly zero at the exact
posterior (where the reparameterized one is not); the default guide trained with it recovers
a conjugate Gaussian hierarchy; under plate subsampling it is the path derivative of the
guide's scaled log-density (autograd) and unbiased.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from _gaussian_hierarchy import exact_posterior, hierarchy_data, known_tau_model
from pyro.infer.autoguide import AutoIAFNormal

import pyro_kr
from pyro_kr.amortized.iw_elbo import ImportanceWeightedELBO
from pyro_kr.guides.sparse import LocalTransform
from pyro_kr.objective.cost import pushforward_transforms
from pyro_kr.objective.path_gradient import use_path_gradient
from pyro_kr.transforms import MonotoneTriangular, TriangularAffine
from pyro_kr.transforms.score import block_triangular_score, is_triangular_map, log_density_score

DT = torch.float64


_data, _known_tau, _exact = hierarchy_data, known_tau_model, exact_posterior


def _centered(y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("groups", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def _perturbed(transform, scale=0.3):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in transform.parameters():
            p.add_(scale * torch.randn_like(p))
    return transform


def _dense_score(transform, x):
    """The score by the full Jacobian of each draw and a dense solve (autograd reference)."""
    rows = []
    for xi in x:
        xi = xi.detach().clone().requires_grad_(True)
        zi = transform(xi[None])
        log_det = transform.log_abs_det_jacobian(xi[None], zi).sum()
        (g,) = torch.autograd.grad(log_det, xi, allow_unused=True)
        g = torch.zeros_like(xi) if g is None else g
        jac = torch.autograd.functional.jacobian(lambda v: transform(v[None])[0], xi.detach())
        rows.append(torch.linalg.solve(jac.T, -xi.detach() - g))
    return torch.stack(rows)


def _guide_map(model, args, **kw):
    pyro.clear_param_store()
    torch.manual_seed(0)
    guide = pyro_kr.AutoKR(model, **kw)
    guide(*args)
    return guide, guide.get_transform()


# -- the score ---------------------------------------------------------------------------------
def test_score_of_an_affine_map_is_the_gaussian_closed_form():
    torch.manual_seed(0)
    T = TriangularAffine(3).to(DT)
    _perturbed(T)
    x = torch.randn(6, 3, dtype=DT)
    z, score = log_density_score(T, x)
    L = T.scale_tril.detach()
    cov = L @ L.T  # q = N(loc, L L^T): the score is -cov^{-1} (z - loc)
    loc = T.loc.detach()
    expected = -(z.detach() - loc) @ torch.linalg.inv(cov)
    torch.testing.assert_close(score, expected)


@pytest.mark.parametrize("map_kind", ["affine", "monotone"])
@pytest.mark.parametrize("structure", ["dense", "plates"])
def test_score_matches_the_dense_jacobian_solve(map_kind, structure):
    y, sigma = _data()
    guide, T = _guide_map(_centered, (y.double(), sigma.double()), map=map_kind,
                          structure=structure)
    T = _perturbed(T.to(DT))
    x = torch.randn(4, guide.latent_dim, dtype=DT)
    z, score = log_density_score(T, x)
    torch.testing.assert_close(z.detach(), T(x).detach())
    assert not score.requires_grad
    torch.testing.assert_close(score, _dense_score(T, x), rtol=1e-8, atol=1e-8)


def _two_locals(y):
    """Two local sites per group (``d_l = 2``: a location and a scale); ``y`` is
    ``(observations, groups)``."""
    mu = pyro.sample("mu", dist.Normal(0.0, 3.0))
    with pyro.plate("groups", y.shape[-1]):
        a = pyro.sample("a", dist.Normal(mu, 1.0))
        s = pyro.sample("s", dist.LogNormal(0.0, 0.5))
        with pyro.plate("observations", y.shape[-2], dim=-2):
            pyro.sample("y", dist.Normal(a, s), obs=y)


@pytest.mark.parametrize("map_kind", ["affine", "monotone"])
def test_score_with_two_coordinates_per_group(map_kind):
    y = torch.randn(2, 4, dtype=DT)
    guide, T = _guide_map(_two_locals, (y,), map=map_kind, structure="plates")
    assert guide.structure_plan is not None and guide.structure_plan.local_dim == 2
    assert guide.latent_dim == 1 + 2 * 4
    T = _perturbed(T.to(DT))
    x = torch.randn(3, guide.latent_dim, dtype=DT)
    _, score = log_density_score(T, x)
    torch.testing.assert_close(score, _dense_score(T, x), rtol=1e-8, atol=1e-8)


def test_block_solve_without_groups_is_the_dense_case():
    torch.manual_seed(0)
    T = _perturbed(MonotoneTriangular(3).to(DT))
    x = torch.randn(5, 3, dtype=DT, requires_grad=True)
    z = T(x)
    score, none = block_triangular_score(x, z, T.log_abs_det_jacobian(x, z))
    assert none is None
    torch.testing.assert_close(score, _dense_score(T, x.detach()))


def test_triangular_maps_are_recognized_and_flows_are_not():
    assert is_triangular_map(TriangularAffine(2))
    assert is_triangular_map(MonotoneTriangular(2))
    y, sigma = _data()
    for structure in ("dense", "plates"):
        _, T = _guide_map(_centered, (y, sigma), structure=structure)
        assert is_triangular_map(T)
    from pyro.distributions.transforms import affine_autoregressive

    assert not is_triangular_map(affine_autoregressive(3))


# -- the gradient ------------------------------------------------------------------------------
def _grads(guide, loss, args):
    for p in guide.parameters():
        p.grad = None
    loss.differentiable_loss(_known_tau, guide, *args).backward()
    return torch.cat([p.grad.reshape(-1) for p in guide.parameters()])


def test_path_gradient_is_unbiased():
    """Its mean over draws equals the reparameterized gradient's (both estimate the gradient
    of the same loss); the score term it drops has mean zero, not zero variance."""
    y, sigma = _data(3)
    guide, T = _guide_map(_known_tau, (y, sigma), map="monotone", structure="plates")
    _perturbed(T, 0.2)
    reps, particles = 24, 2000
    out = {}
    for gradient in ("reparam", "path"):
        torch.manual_seed(5)
        loss = pyro_kr.TransportELBO(None, num_particles=particles, gradient=gradient)
        out[gradient] = torch.stack([_grads(guide, loss, (y, sigma)) for _ in range(reps)])
    diff = out["path"].mean(0) - out["reparam"].mean(0)
    se = ((out["path"].var(0) + out["reparam"].var(0)) / reps).sqrt()
    assert (diff.abs() <= 4.5 * se + 1e-6).all(), (diff / se).abs().max()
    # and it is not the same estimator: its variance differs
    assert not torch.allclose(out["path"].var(0), out["reparam"].var(0), rtol=0.05)


def test_path_gradient_vanishes_at_the_exact_posterior():
    """The dense affine map set to the exact Gaussian posterior (KR map = Cholesky factor):
    every draw's path gradient is zero, the reparameterized gradient is not."""
    y, sigma = _data()
    y, sigma = y.double(), sigma.double()
    mean, cov = _exact(y, sigma)
    guide, T = _guide_map(_known_tau, (y, sigma), map="affine")
    affine = T[-1]
    affine.set_loc(mean)
    affine.set_scale_tril(torch.linalg.cholesky(cov))
    grads = {}
    for gradient in ("reparam", "path"):
        loss = pyro_kr.TransportELBO(None, num_particles=8, gradient=gradient)
        grads[gradient] = _grads(guide, loss, (y, sigma))
    assert grads["reparam"].abs().max() > 1.0
    assert grads["path"].abs().max() < 1e-6 * grads["reparam"].abs().max()


def test_loss_value_is_the_same_as_reparam():
    y, sigma = _data()
    values = []
    for gradient in ("reparam", "path"):
        guide, _ = _guide_map(_known_tau, (y, sigma), structure="plates")
        torch.manual_seed(3)
        loss = pyro_kr.TransportELBO(pyro_kr.Annealing.over(10), num_particles=4,
                                     gradient=gradient)
        values.append(loss.loss_and_grads(_known_tau, guide, y, sigma))
    assert values[0] == pytest.approx(values[1], rel=1e-6)


def test_default_guide_with_path_gradient_recovers_a_conjugate_hierarchy():
    """``fit`` with the annealed objective's default schedule and the path gradient, default
    ``AutoKR`` and default ``fit`` settings: the exact Gaussian posterior of ``(mu, theta)``."""
    y, sigma = _data()
    pyro.clear_param_store()
    torch.manual_seed(0)
    guide = pyro_kr.AutoKR(_known_tau)
    steps = 600
    loss = pyro_kr.TransportELBO(pyro_kr.Annealing.over(steps), num_particles=8,
                                 gradient="path")
    pyro_kr.fit(_known_tau, guide, y, sigma, loss=loss, steps=steps, progress=False)
    torch.manual_seed(1)
    draws = guide.sample_posterior(40000, y, sigma)
    z = torch.cat([draws["mu"][:, None], draws["theta"]], 1).double()
    mean, cov = _exact(y, sigma)
    sd = cov.diag().sqrt()
    assert ((z.mean(0) - mean).abs() / sd).max() < 0.05
    assert ((z.std(0) / sd) - 1).abs().max() < 0.05


# -- plate subsampling -------------------------------------------------------------------------
def _subsampled_guide(map_kind, dtype=torch.float32):
    y, sigma = _data(8)
    y, sigma = y.to(dtype), sigma.to(dtype)
    guide, T = _guide_map(_known_tau, (y, sigma, 3), map=map_kind, structure="plates")
    assert guide._plate_plan.subsampled
    return guide, _perturbed(T, 0.2), (y, sigma, 3)


def _log_q_of_subsample(T, z_g, z_l, index, scale):
    """The guide's log-density of one subsampled draw, ``log q_g(z_g) + scale * sum_j log
    q_l(z_j | x_g)``, through the maps' inverses (differentiable for the affine map)."""
    normal = dist.Normal(0.0, 1.0)
    x_g = T.global_map.inv(z_g.clone())
    out = normal.log_prob(x_g).sum(-1) - T.global_map.log_abs_det_jacobian(x_g, z_g)
    local = LocalTransform(T.local, x_g, index)
    x_l = local.inv(z_l.clone())
    log_q_l = normal.log_prob(x_l).sum(-1) - local.log_abs_det_jacobian(x_l, z_l)
    return out + scale * log_q_l.sum()


def test_subsampled_path_gradient_is_the_path_derivative():
    """Under plate subsampling the rewritten entropy terms have the gradient of ``log
    q_phi'(z(phi))`` at ``phi' = phi`` (the draw's path, the density's parameters held):
    the total derivative minus the partial one at a fixed draw, by autograd through the
    affine map's exact inverse."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(DT)  # the guide's parameters in double precision
    try:
        guide, T, args = _subsampled_guide("affine", DT)
        torch.manual_seed(7)
        trace = poutine.trace(guide).get_trace(*args)
    finally:
        torch.set_default_dtype(default)
    assert T.global_map[-1].loc.dtype == DT
    glob, loc = trace.nodes["_AutoKR_latent"], trace.nodes["_AutoKR_local"]
    assert loc["infer"]["kr_globals"] == "_AutoKR_latent"
    index, scale = pushforward_transforms(loc)[0].index, loc["scale"]
    assert scale == pytest.approx(8 / 3)
    z_g, z_l = glob["value"], loc["value"]
    params = list(T.parameters())

    def grads(value):
        out = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        return torch.cat([torch.zeros(p.numel(), dtype=DT) if g is None else g.reshape(-1)
                          for p, g in zip(params, out, strict=True)])

    path = grads(_log_q_of_subsample(T, z_g, z_l, index, scale)) - grads(
        _log_q_of_subsample(T, z_g.detach(), z_l.detach(), index, scale)
    )
    trace.compute_score_parts()
    use_path_gradient(trace)
    ours = grads(glob["score_parts"].entropy_term.sum() + loc["score_parts"].entropy_term.sum())
    assert path.abs().max() > 1.0
    torch.testing.assert_close(ours, path, rtol=1e-9, atol=1e-9)


def test_subsampled_path_gradient_is_unbiased():
    """With the default monotone map and 3 of 8 groups per step, the path gradient's mean
    equals the reparameterized gradient's (both unbiased for the full-data gradient)."""
    guide, _, args = _subsampled_guide("monotone")
    reps, particles = 24, 1000
    out = {}
    for gradient in ("reparam", "path"):
        torch.manual_seed(5)
        loss = pyro_kr.TransportELBO(None, num_particles=particles, gradient=gradient)
        out[gradient] = torch.stack([_grads(guide, loss, args) for _ in range(reps)])
    diff = out["path"].mean(0) - out["reparam"].mean(0)
    se = ((out["path"].var(0) + out["reparam"].var(0)) / reps).sqrt()
    assert (diff.abs() <= 4.5 * se + 1e-6).all(), (diff / se).abs().max()
    assert not torch.allclose(out["path"].var(0), out["reparam"].var(0), rtol=0.05)


@pytest.mark.slow
def test_default_guide_with_subsampled_path_gradient_recovers_a_conjugate_hierarchy():
    """``fit``'s defaults with the annealed objective's default schedule, the path gradient
    and 3 of 6 groups per step: the exact Gaussian posterior of ``(mu, theta)``."""
    y, sigma = _data()
    pyro.clear_param_store()
    torch.manual_seed(0)
    guide = pyro_kr.AutoKR(_known_tau, structure="plates")
    steps = 600
    loss = pyro_kr.TransportELBO(pyro_kr.Annealing.over(steps), num_particles=8,
                                 gradient="path")
    pyro_kr.fit(_known_tau, guide, y, sigma, 3, loss=loss, steps=steps, progress=False)
    torch.manual_seed(1)
    draws = guide.sample_posterior(40000, y, sigma)
    z = torch.cat([draws["mu"][:, None], draws["theta"]], 1).double()
    mean, cov = _exact(y, sigma)
    sd = cov.diag().sqrt()
    assert ((z.mean(0) - mean).abs() / sd).max() < 0.15
    assert ((z.std(0) / sd) - 1).abs().max() < 0.06


def test_a_site_marked_as_groups_without_their_map_is_refused():
    """``infer["kr_globals"]`` on a site that is not the sparse map's groups: a clear error."""
    guide, _, args = _subsampled_guide("affine")
    trace = poutine.trace(guide).get_trace(*args)
    trace.nodes["_AutoKR_latent"]["infer"]["kr_globals"] = "nowhere"
    trace.compute_score_parts()
    with pytest.raises(ValueError, match="kr_globals.*gradient='reparam'"):
        use_path_gradient(trace)


# -- refusals ----------------------------------------------------------------------------------
def test_unknown_gradient_is_refused():
    with pytest.raises(ValueError, match="'reparam'.*'path'"):
        pyro_kr.TransportELBO(None, gradient="score")


def test_a_flow_guide_is_refused_with_the_fix():
    y, sigma = _data()
    pyro.clear_param_store()
    guide = AutoIAFNormal(_known_tau)
    loss = pyro_kr.TransportELBO(None, num_particles=2, gradient="path")
    with pytest.raises(ValueError, match="lower-triangular map.*gradient='reparam'"):
        loss.loss_and_grads(_known_tau, guide, y, sigma)


def test_objectives_of_their_own_refuse_the_path_gradient():
    with pytest.raises(ValueError, match="gradient='path'"):
        ImportanceWeightedELBO(None, num_particles=2, batch_dim=-1, gradient="path")
