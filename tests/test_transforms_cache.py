"""Transform caches stay correct when an optimizer writes the parameters through ``.data``.

Pyro's ``ClippedAdam`` updates ``p.data`` in place, which does not bump ``p._version``; a cache
keyed on version counters alone would then return the previous step's output (a silent wrong
answer). Each case trains a map on a FIXED batch of base points (the cache-hit path: the same
tensor object every step) and checks, after every step, that the cached output, log-det and
inverse equal a fresh computation (a new input tensor, or a freshly conditioned map).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.optim.clipped_adam import ClippedAdam

import pyro_kr
from pyro_kr.transforms import (
    ConditionalMonotoneTriangular,
    ConditionalTriangularAffine,
    MonotoneTriangular,
    TriangularAffine,
)

D, C = 3, 2


def _model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    with pyro.plate("groups", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        pyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def _guide_map(structure):
    pyro.clear_param_store()
    guide = pyro_kr.AutoKR(_model, structure=structure)
    guide(torch.randn(D - 1))  # mu and D - 1 groups: D latents
    return guide.transform


def _cases():
    """name -> factory returning (parameters, cached map, fresh map factory)."""
    ctx = torch.randn(5, C)

    def module(make):
        def factory():
            t = make()
            return list(t.parameters()), t, lambda: t

        return factory

    def conditioned(make):
        def factory():
            m = make()
            return list(m.parameters()), m.condition(ctx), lambda: m.condition(ctx.clone())

        return factory

    return {
        "affine": module(lambda: TriangularAffine(D)),
        "monotone": module(lambda: MonotoneTriangular(D)),
        "conditional_affine": conditioned(lambda: ConditionalTriangularAffine(D, C)),
        "conditional_monotone": conditioned(lambda: ConditionalMonotoneTriangular(D, C)),
        "autokr_dense": module(lambda: _guide_map("dense")),
        "autokr_sparse": module(lambda: _guide_map("plates")),
    }


def _optimizer(name, params):
    if name == "clipped_adam":  # writes p.data in place: no version bump
        return ClippedAdam(params, lr=0.05)
    return torch.optim.Adam(params, lr=0.05)


@pytest.mark.parametrize("optim", ["clipped_adam", "adam"])
@pytest.mark.parametrize("case", list(_cases()))
def test_cached_outputs_follow_in_place_parameter_updates(case, optim):
    torch.manual_seed(0)
    params, t, fresh_map = _cases()[case]()
    opt = _optimizer(optim, params)
    x = torch.randn(5, D)
    for _ in range(4):
        y = t(x)
        log_det = t.log_abs_det_jacobian(x, y)
        opt.zero_grad()
        (y.pow(2).sum() - log_det.sum()).backward()
        before = [p.detach().clone() for p in params]
        opt.step()
        assert any(not torch.equal(b, p) for b, p in zip(before, params, strict=True))
        # the same x object as before the step: a stale cache would answer here
        y = t(x)
        log_det = t.log_abs_det_jacobian(x, y)
        x_back = t.inv(y)
        fresh = fresh_map()
        x_new = x.clone()
        y_fresh = fresh(x_new)
        assert torch.allclose(y, y_fresh, atol=1e-6)
        assert torch.allclose(log_det, fresh.log_abs_det_jacobian(x_new, y_fresh), atol=1e-5)
        assert x_back is x  # the cached round trip still hits
        assert torch.allclose(fresh.inv(y_fresh.detach().clone()), x, atol=1e-4)


@pytest.mark.parametrize("structure", ["dense", "plates"])
@pytest.mark.parametrize("map_kind", ["affine", "monotone"])
def test_guide_fit_on_fixed_draws_with_clipped_adam_matches_a_fresh_evaluation(
    structure, map_kind
):
    """Sample-average fitting of an ``AutoKR`` (a fixed batch of base draws reused every step)
    with ``ClippedAdam``: after each step, the map at those draws, its log-det, ``scale_tril``
    and the guide's ``log_prob`` at a draw of the previous step equal fresh evaluations."""
    y = torch.randn(6)
    pyro.clear_param_store()
    torch.manual_seed(1)
    guide = pyro_kr.AutoKR(_model, map=map_kind, structure=structure)
    guide(y)
    t = guide.get_transform()
    opt = ClippedAdam(list(t.parameters()), lr=0.05)
    x = torch.randn(8, guide.latent_dim)

    def loss_fn():
        z = t(x)
        log_joint = torch.stack([
            pyro.poutine.trace(pyro.poutine.condition(_model, guide._constrain(z_k)))
            .get_trace(y).log_prob_sum()
            for z_k in z
        ])
        return -(log_joint + t.log_abs_det_jacobian(x, z)).mean(), z

    loss, z_prev = loss_fn()
    for _ in range(3):
        opt.zero_grad()
        loss.backward()
        opt.step()
        # the same x object as before the step, same grad mode: the cache-hit path
        z = t(x)
        assert not torch.allclose(z, z_prev)  # the step moved the map
        x_new = x.clone()
        z_fresh = t(x_new)
        assert torch.allclose(z, z_fresh, atol=1e-6)
        assert torch.allclose(
            t.log_abs_det_jacobian(x, z), t.log_abs_det_jacobian(x_new, z_fresh), atol=1e-5
        )
        if structure == "dense" and map_kind == "affine":
            assert torch.allclose(t[-1]._diag_and_tril()[1], t[-1].scale_tril)
        loss, z_prev = loss_fn()
        with torch.no_grad():
            # log q at the draws just made: t.inv(z_prev) hits the cache (same parameters)
            posterior = guide.get_posterior()
            lp = posterior.log_prob(z_prev)
            assert torch.allclose(lp, posterior.log_prob(z_prev.clone()), atol=1e-4)


@pytest.mark.parametrize("structure", ["dense", "plates"])
def test_trained_guide_pickles_and_a_loaded_cache_key_matches_nothing(structure, tmp_path):
    """``torch.save(guide)`` works after sampling (the cache keys hold weak references, which
    do not pickle); a loaded key equals no state, so the loaded guide recomputes."""
    y = torch.randn(5)
    pyro.clear_param_store()
    torch.manual_seed(0)
    guide = pyro_kr.AutoKR(_model, map="affine", structure=structure)
    guide(y)
    x = torch.randn(4, guide.latent_dim)
    z = guide.transform(x)
    torch.save(guide, tmp_path / "guide.pt")
    loaded = torch.load(tmp_path / "guide.pt", weights_only=False)
    keys = [m._cache_state[1] for m in loaded.transform.modules() if hasattr(m, "_cache_state")]
    assert keys and all(k != k for k in keys)  # stale: equal to nothing, itself included
    assert torch.allclose(loaded.transform(x), z)
    with torch.no_grad():
        for p in loaded.transform.parameters():
            p.add_(0.1)
    assert not torch.allclose(loaded.transform(x), z)
