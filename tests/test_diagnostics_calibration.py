"""sbc and coverage on a guide whose posterior is exact (set in closed form) or wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _amortized_models import exact_posterior, linear_gaussian, set_exact_affine
from torch import nn

from pyro_kr import AmortizedKR
from pyro_kr.diagnostics import coverage, sbc
from pyro_kr.diagnostics.calibration import rank_uniformity


def _guide(scale_factor: float = 1.0) -> AmortizedKR:
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine", embedding=nn.Identity(),
                        hidden_dims=())
    guide.posterior(torch.zeros(3, dtype=torch.float64))
    set_exact_affine(guide, scale_factor)
    return guide


def test_exact_guide_is_the_exact_posterior():
    guide = _guide()
    y = torch.tensor([[0.3, -1.0, 2.0], [1.0, 0.0, 0.5]], dtype=torch.float64)
    transform = guide.posterior(y).transforms[0]
    mean, chol = exact_posterior(y)
    assert torch.allclose(transform(torch.zeros(2, 2, dtype=torch.float64)), mean, atol=1e-6)
    shifted = transform(torch.tensor([[1.0, 0.0]], dtype=torch.float64).expand(2, 2))
    assert torch.allclose(shifted - mean, chol[:, 0].expand(2, 2), atol=1e-6)


def test_sbc_ranks_are_uniform_for_the_exact_posterior():
    result = sbc(_guide(), linear_gaussian, num_datasets=400, num_draws=99, seed=1)
    assert result.ranks.shape == (400, 2) and result.names == ["z[0]", "z[1]"]
    assert result.ranks.min() >= 0 and result.ranks.max() <= 99
    assert result.uniform, result.p_values
    assert bool((result.p_values > 0.01).all())


@pytest.mark.parametrize("scale_factor", [0.5, 2.0])
def test_sbc_rejects_a_wrong_posterior(scale_factor):
    result = sbc(_guide(scale_factor), linear_gaussian, num_datasets=400, num_draws=99, seed=1)
    assert not result.uniform
    assert result.rejected == ["z[0]", "z[1]"]
    assert bool((result.p_values < 1e-6).all())


def test_rank_uniformity_on_known_inputs():
    rng = np.random.default_rng(0)
    uniform = rng.integers(0, 21, size=(2000, 1))
    _, p = rank_uniformity(uniform, 20, 7)  # 21 rank values in 7 bins of 3
    assert p[0] > 0.01
    piled = np.full((200, 1), 10)
    _, p = rank_uniformity(piled, 20, 7)
    assert p[0] < 1e-10


def test_coverage_is_nominal_for_the_exact_posterior():
    result = coverage(_guide(), linear_gaussian, num_datasets=400, num_draws=400, seed=2)
    levels = result.levels
    assert levels.shape == (19,) and result.marginal.shape == (19, 2)
    tol = 4 * np.sqrt(levels * (1 - levels) / 400) + 1 / 400
    assert np.all(np.abs(result.marginal - levels[:, None]) < tol[:, None])
    assert np.all(np.abs(result.joint - levels) < tol)


def test_coverage_detects_overconfidence():
    result = coverage(_guide(0.5), linear_gaussian, num_datasets=400, num_draws=400, seed=2)
    i = int(np.argmin(np.abs(result.levels - 0.9)))
    assert result.joint[i] < 0.6 and bool((result.marginal[i] < 0.75).all())


def test_calibration_plots(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("scipy")
    from pyro_kr.diagnostics import coverage_plot, sbc_plot

    guide = _guide()
    s = sbc(guide, linear_gaussian, num_datasets=50, num_draws=19)
    for kind in ("ecdf", "hist"):
        fig = sbc_plot(s, kind=kind, path=tmp_path / f"sbc_{kind}.png")
        assert len([ax for ax in fig.axes if ax.get_visible()]) == 2
        assert (tmp_path / f"sbc_{kind}.png").stat().st_size > 0
    c = coverage(guide, linear_gaussian, num_datasets=50, num_draws=50)
    coverage_plot(c, path=tmp_path / "coverage.png")
    assert (tmp_path / "coverage.png").stat().st_size > 0
    with pytest.raises(ValueError, match="kind must be"):
        sbc_plot(s, kind="violin")


def test_calibration_needs_an_amortized_guide():
    from pyro_kr import AutoKR

    with pytest.raises(TypeError, match="amortized guide"):
        sbc(AutoKR(linear_gaussian), linear_gaussian)
    with pytest.raises(ValueError, match="levels must be"):
        coverage(_guide(), linear_gaussian, levels=[0.5, 1.5])
