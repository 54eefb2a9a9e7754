"""Shipped reference draws: format, recorded convergence, and agreement with a regeneration."""

from __future__ import annotations

import json

import numpy as np
import pytest

import pyro_kr.problems as problems
from pyro_kr.problems import references

SHIPPED = sorted(p.stem.rsplit("_obs", 1)[0] for p in references.reference_dir().glob("*.npz"))


def test_shipped_files_are_small_and_present_for_the_headline_problem():
    total = sum(p.stat().st_size for p in references.reference_dir().glob("*.npz"))
    assert total < 8 * 2**20
    assert "lotka_volterra" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED, ids=SHIPPED)
def test_shipped_reference_format_and_convergence(name):
    p = problems.get(name)
    draws = p.reference(0)
    assert list(draws) == p.param_names
    n = len(draws[p.param_names[0]])
    for k, shape in p.param_shapes.items():
        assert draws[k].shape == (n, *shape) and draws[k].dtype == np.float32
        assert np.isfinite(draws[k]).all()
    info = references.reference_info(name, 0)
    assert info["num_draws"] == n
    assert info["max_rhat"] <= 1.01
    assert info["min_ess_bulk"] >= n / 20
    np.testing.assert_allclose(info["observation"], p.observation(0).numpy())
    assert p.reference(0, num_samples=10)[p.param_names[0]].shape[0] == 10
    with pytest.raises(ValueError, match="ships"):
        p.reference(0, num_samples=n + 1)


def test_lotka_volterra_reference_covers_the_truth():
    draws = problems.get("lotka_volterra").reference(0)
    assert len(draws["alpha"]) >= 25_000
    truths = (0.83, 0.041, 1.08, 0.04)
    for k, truth in zip(("alpha", "beta", "gamma", "delta"), truths, strict=True):
        lo, hi = np.quantile(draws[k], [0.001, 0.999])
        assert lo < truth < hi


def test_settings_cover_the_mcmc_problems():
    assert set(references.SETTINGS) == {"lotka_volterra", "banana", "eight_schools", "elliptic_1d"}
    with pytest.raises(ValueError, match="valid: lotka_volterra"):
        references.generate("funnel")


def test_missing_reference_says_how_to_build_one():
    with pytest.raises(ValueError, match="pyro_kr.reference.nuts"):
        references.load_reference("lotka_volterra", 3)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["banana", "lotka_volterra"])
def test_regeneration_agrees_with_shipped_draws(name, tmp_path):
    shipped = problems.get(name).reference(0)
    ess_shipped = json.loads((references.reference_dir() / f"{name}_obs0.json").read_text())[
        "min_ess_bulk"
    ]
    new, record = references.generate(
        name, draws=1000, tune=1000, chains=2, seed=123, out_dir=tmp_path, check=False
    )
    assert (tmp_path / f"{name}_obs0.npz").exists()
    assert record["max_rhat"] < 1.05
    for k in shipped:
        a, b = shipped[k].astype(np.float64), new[k].astype(np.float64)
        se = np.sqrt(a.var(0) / ess_shipped + b.var(0) / record["min_ess_bulk"])
        assert np.all(np.abs(a.mean(0) - b.mean(0)) < 5 * se), k
