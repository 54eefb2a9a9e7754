"""PosteriorSampler: a detached snapshot of an AmortizedKR that draws the guide's samples."""

from __future__ import annotations

import pyro
import pytest
import torch
from _amortized_models import constrained, linear_gaussian
from conftest import DEVICES

from pyro_kr import AmortizedKR
from pyro_kr.amortized import PosteriorSampler

MAPS = ["affine", "monotone"]


def _y(n: int, model=linear_gaussian, seed: int = 1) -> torch.Tensor:
    pyro.set_rng_seed(seed)
    return torch.stack([pyro.poutine.uncondition(model)() for _ in range(n)])


def _randomized_guide(kind: str, model=linear_gaussian) -> AmortizedKR:
    guide = AmortizedKR(model, observed="y", map=kind)
    guide.posterior(_y(1, model)[0])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in guide.nets.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return guide


@pytest.mark.parametrize("kind", MAPS)
def test_float64_snapshot_draws_exactly_the_guides_samples(kind):
    guide = _randomized_guide(kind)
    ys = _y(3)
    fast = guide.sampler(dtype=torch.float64)
    torch.manual_seed(5)
    expected = guide.sample(ys, 50)["z"]
    torch.manual_seed(5)
    got = fast.sample(ys, 50)["z"]
    assert got.shape == (50, 3, 2)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", MAPS)
def test_float32_snapshot_matches_the_float64_map_to_float32_rounding(kind):
    guide = _randomized_guide(kind, constrained)
    y = _y(1, constrained)[0]
    fast = guide.sampler()
    assert fast.dtype == torch.float32
    x = torch.randn(200, guide.latent_dim, dtype=torch.float64)
    exact = guide.posterior(y).transforms[0](x).detach()
    approx = fast.posterior(y).transforms[0](x.float())
    assert approx.dtype == torch.float32
    torch.testing.assert_close(approx.double(), exact, rtol=1e-4, atol=1e-4)
    draws = fast.sample(y, 10)
    assert draws["scale"].dtype == torch.float32 and bool((draws["scale"] > 0).all())
    assert draws["loc"].shape == (10, 3)
    # log densities agree too (the float32 copy is the same distribution)
    z = guide.posterior(y).sample((20,))
    torch.testing.assert_close(
        fast.posterior(y).log_prob(z.float()).double(),
        guide.posterior(y).log_prob(z), rtol=1e-3, atol=1e-3,
    )


def test_snapshot_does_not_follow_later_training():
    guide = _randomized_guide("affine")
    y = _y(1)[0]
    fast = guide.sampler(dtype=torch.float64)
    torch.manual_seed(0)
    before = fast.sample(y, 20)["z"]
    with torch.no_grad():
        for p in guide.nets.parameters():
            p.add_(1.0)
    torch.manual_seed(0)
    assert torch.equal(fast.sample(y, 20)["z"], before)
    torch.manual_seed(0)
    assert not torch.allclose(guide.sample(y, 20)["z"], before)
    assert all(not p.requires_grad for p in fast._maps.parameters())


def test_sampler_errors_name_the_problem():
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine")
    with pytest.raises(RuntimeError, match="train it or call guide.posterior"):
        guide.sampler()
    guide.posterior(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating torch.dtype"):
        guide.sampler(dtype=torch.int32)
    fast = guide.sampler()
    with pytest.raises(ValueError, match=r"expected observation 'y' of shape \(\*batch, 3\)"):
        fast.sample(torch.zeros(4), 10)
    assert isinstance(fast, PosteriorSampler)


@pytest.mark.parametrize("device", DEVICES)
def test_sampler_follows_the_requested_device(device):
    guide = _randomized_guide("monotone")
    fast = guide.sampler(device=device)
    draws = fast.sample(_y(2)[0], 5)
    assert draws["z"].device.type == device and draws["z"].dtype == torch.float32
