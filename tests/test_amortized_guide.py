"""AmortizedKR: shapes, batching, Pyro integration, embeddings and input errors."""

from __future__ import annotations

import pyro
import pytest
import torch
from _amortized_models import constrained, linear_gaussian
from pyro.infer import Predictive
from torch import nn

import pyro_kr
from pyro_kr import AmortizedKR

MAPS = ["affine", "monotone"]


def _y(n: int = 4, seed: int = 1, model=linear_gaussian) -> torch.Tensor:
    pyro.set_rng_seed(seed)
    return torch.stack([pyro.poutine.uncondition(model)() for _ in range(n)])


def _randomize(guide: AmortizedKR, seed: int = 0, scale: float = 0.2) -> None:
    """Perturb every parameter so the map depends visibly on y and x."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in guide.nets.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


@pytest.mark.parametrize("kind", MAPS)
def test_batched_posterior_equals_per_observation(kind):
    guide = AmortizedKR(linear_gaussian, observed="y", map=kind)
    ys = _y(5)
    guide.posterior(ys[0])
    _randomize(guide)
    x = torch.randn(7, 5, 2, dtype=torch.float64)
    post = guide.posterior(ys)
    assert post.batch_shape == (5,) and post.event_shape == (2,)
    batched = post.transforms[0](x)
    for i in range(5):
        single = guide.posterior(ys[i]).transforms[0](x[:, i])
        assert torch.allclose(batched[:, i], single, atol=1e-10)
    z = batched.detach()
    lp = post.log_prob(z)
    for i in range(5):
        assert torch.allclose(lp[:, i], guide.posterior(ys[i]).log_prob(z[:, i]), atol=1e-8)


def test_log_prob_is_differentiable_and_matches_the_distribution():
    guide = AmortizedKR(linear_gaussian, observed="y", map="monotone", depth=1)
    ys = _y(6)
    guide.posterior(ys)
    _randomize(guide, scale=0.05)  # far from identity, but smooth enough for differences
    z = guide.posterior(ys).sample().detach()
    lp = guide.log_prob(z, ys)
    assert torch.allclose(lp, guide.posterior(ys).log_prob(z), atol=1e-8)
    params = list(guide.nets.parameters())
    grads = torch.autograd.grad(lp.sum(), params)
    gen = torch.Generator().manual_seed(3)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    analytic = sum((g * v).sum() for g, v in zip(grads, direction, strict=True))
    h = 1e-6

    def value(sign: float) -> torch.Tensor:
        with torch.no_grad():
            for p, v in zip(params, direction, strict=True):
                p.add_(sign * h * v)
            out = guide.posterior(ys).log_prob(z).sum()
            for p, v in zip(params, direction, strict=True):
                p.sub_(sign * h * v)
        return out

    numeric = (value(1.0) - value(-1.0)) / (2 * h)
    assert torch.allclose(analytic, numeric, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", MAPS)
def test_constrained_and_vector_latents(kind):
    guide = AmortizedKR(constrained, observed="y", map=kind)
    ys = _y(3, model=constrained)
    draws = guide.sample(ys[0], 200)
    assert draws["scale"].shape == (200,) and draws["loc"].shape == (200, 3)
    assert bool((draws["scale"] > 0).all())
    batched = guide.sample(ys, 50)
    assert batched["scale"].shape == (50, 3) and batched["loc"].shape == (50, 3, 3)
    assert guide.latent_dim == 4 and list(guide.site_slices()) == ["scale", "loc"]


def test_works_as_a_pyro_guide():
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine")
    y_obs = _y(1)[0]
    out = Predictive(linear_gaussian, guide=guide, num_samples=30)(y=y_obs)
    assert out["z"].shape[0] == 30 and out["z"].shape[-1] == 2
    assert out["y"].shape[0] == 30 and out["y"].shape[-1] == 3
    trace = pyro.poutine.trace(guide).get_trace(y=y_obs)
    assert trace.nodes["z"]["value"].shape == (2,)


def test_to_inference_data():
    pytest.importorskip("arviz")
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine")
    y_obs = _y(1)[0]
    from pyro_kr.diagnostics import to_inference_data

    idata = to_inference_data(guide, linear_gaussian, y=y_obs, num_samples=200)
    assert idata.posterior["z"].shape == (1, 200, 2)
    assert idata.posterior.attrs["vectorized"] == 1
    assert bool(torch.isfinite(torch.as_tensor(idata.sample_stats["log_weight"].values)).all())
    assert idata.observed_data["y"].shape == (3,)


def test_user_embedding_receives_gradients():
    embedding = nn.Sequential(nn.Linear(3, 5), nn.Tanh()).double()
    before = [p.detach().clone() for p in embedding.parameters()]
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine", embedding=embedding)
    ys = _y(8)
    z = torch.randn(8, 2, dtype=torch.float64)
    guide.log_prob(z, ys).sum().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in embedding.parameters())
    embedding.zero_grad()
    pyro_kr.fit_amortized(linear_gaussian, guide, mode="reverse", steps=3, batch_size=16,
                          progress=False)
    assert guide.nets["embedding"] is embedding
    after = list(embedding.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(after, before, strict=True))


def test_wrong_observation_shape_names_expected_and_received():
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine")
    guide.posterior(_y(1)[0])
    with pytest.raises(ValueError, match=r"expected observation 'y' of shape \(\*batch, 3\), "
                       r"got shape \(4,\)"):
        guide.posterior(torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"got shape \(2, 5\)"):
        guide(y=torch.zeros(2, 5, dtype=torch.float64))


def test_nan_observation_is_rejected():
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine")
    y = _y(1)[0]
    guide.posterior(y)
    y[1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        guide.posterior(y)


def test_observed_site_not_in_model():
    guide = AmortizedKR(linear_gaussian, observed="obs", map="affine")
    with pytest.raises(ValueError, match=r"'obs' is not a sample site of the model.*\['y', 'z'\]"):
        guide.posterior(torch.zeros(3, dtype=torch.float64))
    guide = AmortizedKR(linear_gaussian, observed="obs", map="affine")
    with pytest.raises(ValueError, match="'obs'"):
        guide(torch.zeros(3, dtype=torch.float64))


def test_observed_site_that_is_latent():
    guide = AmortizedKR(linear_gaussian, observed="z", map="affine")
    with pytest.raises(ValueError, match="'z'.*latent site"):
        guide.posterior(torch.zeros(2, dtype=torch.float64))

    def model(z=None, y=None):
        z = pyro.sample("z", pyro.distributions.Normal(0.0, 1.0))
        return pyro.sample("y", pyro.distributions.Normal(z, 1.0), obs=y)

    guide = AmortizedKR(model, observed="z", map="affine")
    with pytest.raises(ValueError, match="'z' is a latent site"):
        guide.posterior(torch.tensor(0.3))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="map must be one of"):
        AmortizedKR(linear_gaussian, observed="y", map="spline")
    with pytest.raises(TypeError, match="embedding must be a torch.nn.Module"):
        AmortizedKR(linear_gaussian, observed="y", embedding=lambda y: y)
    with pytest.raises(ValueError, match="observed must be"):
        AmortizedKR(linear_gaussian, observed=[])


def test_median_and_quantiles_follow_the_data():
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine")
    ys = _y(2)
    guide.posterior(ys)
    _randomize(guide, scale=0.05)
    med = guide.median(y=ys[0])["z"]
    transform = guide.posterior(ys[0]).transforms[0]
    assert torch.allclose(med, transform(torch.zeros(2, dtype=torch.float64)))
    assert not torch.allclose(med, guide.median(y=ys[1])["z"])
    q = guide.quantiles([0.25, 0.5, 0.75], y=ys[0], num_samples=2000)["z"]
    assert q.shape == (3, 2) and bool((q[0] < q[1]).all() and (q[1] < q[2]).all())
