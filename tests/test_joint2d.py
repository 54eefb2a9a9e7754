"""The 2-D joint datasets of Kerrigan et al. 2024, Table 1 (pyro_kr.bench.problems.joint2d)."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_kr.bench.problems.joint2d import DATASETS, checkerboard, circles, moons, swissroll

NAMES = sorted(DATASETS)


def test_registry_names():
    assert set(DATASETS) == {"checkerboard", "moons", "circles", "swissroll"}


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_shapes_dtype_and_seeding(name):
    u, y = DATASETS[name](301, seed=3)
    assert u.shape == (301, 1) and y.shape == (301, 1)
    assert u.dtype == torch.float32 and y.dtype == torch.float32
    assert bool(torch.isfinite(u).all() and torch.isfinite(y).all())
    u2, y2 = DATASETS[name](301, seed=3)
    assert torch.equal(u, u2) and torch.equal(y, y2)
    u3, _ = DATASETS[name](301, seed=4)
    assert not torch.equal(u, u3)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_bad_arguments(name):
    with pytest.raises(ValueError, match="n must be >= 1"):
        DATASETS[name](0, seed=0)
    with pytest.raises(TypeError, match="seed must be an int"):
        DATASETS[name](10, seed=1.5)


def test_checkerboard_squares():
    u, y = checkerboard(4000, seed=0)
    u, y = u.squeeze(-1).double(), y.squeeze(-1).double()
    assert bool((u.abs() <= 1).all())
    pattern1 = (u <= -0.5) | ((u >= 0) & (u <= 0.5))
    in1 = ((y >= 0) & (y <= 0.5)) | ((y >= -1) & (y <= -0.5))
    in2 = ((y >= 0.5) & (y <= 1)) | ((y >= -0.5) & (y <= 0))
    assert bool(torch.where(pattern1, in1, in2).all())
    # both squares of a column are used about equally
    upper = (y > 0).double().mean()
    assert abs(float(upper) - 0.5) < 0.05


def test_moons_standard_scaling():
    # raw make_moons has mean (0.5, 0.25) and variance (0.75, 0.25) + noise^2: the scaling
    # (x - m) / sqrt(v) of the paper's code gives mean ~0 and variance ~1.
    u, y = moons(20_000, seed=0)
    x = torch.cat([u, y], -1).double()
    assert torch.allclose(x.mean(0), torch.zeros(2, dtype=torch.float64), atol=0.03)
    assert torch.allclose(x.var(0), torch.ones(2, dtype=torch.float64), atol=0.05)


def test_circles_radii():
    u, y = circles(2000, seed=0)
    r = torch.cat([u, y], -1).double().norm(dim=-1)
    outer = (r - 1.0).abs() < 0.25
    inner = (r - 0.5).abs() < 0.25
    assert bool((outer | inner).all())
    assert int(outer.sum()) == 1000


def test_swissroll_radius_range():
    u, y = swissroll(2000, seed=0)
    r = 12 * torch.cat([u, y], -1).double().norm(dim=-1)
    # t in [1.5 pi, 4.5 pi], radius t, noise sd 0.75 per coordinate
    assert float(r.min()) > 1.5 * math.pi - 4.0
    assert float(r.max()) < 4.5 * math.pi + 4.0
    assert abs(float(r.mean()) - 3 * math.pi) < 0.5
