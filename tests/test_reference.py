"""Tests for pyro_kr.bench.reference: cache keys, quality checks, cache IO, NUTS and
nuts_from_pyro."""

from __future__ import annotations

import importlib
import math
import os
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

pm = pytest.importorskip("pymc")

from pyro_kr.bench import reference  # noqa: E402
from pyro_kr.bench.reference import _io  # noqa: E402

# the package re-exports the function ``nuts``; the module object is needed for monkeypatching
nuts_module = importlib.import_module("pyro_kr.bench.reference.nuts")

# Conjugate model: mu ~ N(0, 1), y_i ~ N(mu, 1), i = 1..n  =>  mu | y ~ N(sum y / (n+1), 1/(n+1)).
Y = np.array([0.3, 1.2, 0.9, 1.6])
POST_MEAN = Y.sum() / (len(Y) + 1)
POST_SD = 1.0 / math.sqrt(len(Y) + 1)


class ConjugateProblem:
    """Tiny stand-in for a pyro_kr Problem (name, observation, pymc_model, param_names)."""

    name = "conjugate_standin"
    param_names = ["mu"]
    has_likelihood = True

    def observation(self, i: int) -> torch.Tensor:
        return torch.as_tensor(Y + i, dtype=torch.float64)

    def pymc_model(self, y):
        with pm.Model() as m:
            mu = pm.Normal("mu", 0.0, 1.0)
            pm.Normal("y", mu, 1.0, observed=np.asarray(y))
        return m


def _fake_idata(seed: int = 0, shift: float = 0.0, chains: int = 2, draws: int = 400):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(chains, draws))
    x[0] += shift
    return _io.from_dict({"mu": x})


@pytest.fixture
def fake_sampler(monkeypatch):
    """Replace PyMC sampling by a seeded draw generator; count the calls."""
    calls = {"n": 0, "shift": 0.0}

    def fake(model, settings, progressbar):
        calls["n"] += 1
        return _fake_idata(settings["seed"], calls["shift"], settings["chains"]), 0.5

    monkeypatch.setattr(nuts_module, "_sample", fake)
    return calls


def _kwargs(tmp_path, **extra):
    return {"draws": 400, "chains": 2, "tune": 10, "cache_dir": tmp_path, **extra}


def test_cache_key_changes_with_every_input():
    base = reference.cache_key("p", "obs", {"draws": 10, "seed": 0})
    assert base == reference.cache_key("p", "obs", {"seed": 0, "draws": 10})
    assert base != reference.cache_key("q", "obs", {"draws": 10, "seed": 0})
    assert base != reference.cache_key("p", "obs2", {"draws": 10, "seed": 0})
    assert base != reference.cache_key("p", "obs", {"draws": 11, "seed": 0})
    assert base != reference.cache_key("p", "obs", {"draws": 10, "seed": 1})


def test_check_quality_refuses_disagreeing_chains_and_names_numbers():
    with pytest.raises(reference.ReferenceQualityError, match=r"max R-hat \d+\.\d+ > rhat_max"):
        reference.check_quality(_fake_idata(shift=5.0), rhat_max=1.01, min_ess=10)
    with pytest.raises(reference.ReferenceQualityError, match=r"min bulk ESS [\d.]+ < min_ess"):
        reference.check_quality(_fake_idata(), rhat_max=1.1, min_ess=1e6)
    reference.check_quality(_fake_idata(), rhat_max=1.1, min_ess=100)


def test_cache_round_trip(tmp_path, fake_sampler):
    p = ConjugateProblem()
    first = reference.nuts(p, 0, **_kwargs(tmp_path))
    files = list(tmp_path.glob("*.nc"))
    assert fake_sampler["n"] == 1 and len(files) == 1
    second = reference.nuts(p, 0, **_kwargs(tmp_path))
    assert fake_sampler["n"] == 1  # served from the cache
    np.testing.assert_array_equal(first.posterior["mu"].values, second.posterior["mu"].values)
    s = reference.summary(second)
    assert s["wall_time_s"] == 0.5 and s["setting_draws"] == 400 and s["chains"] == 2
    assert s["max_rhat"] < 1.1 and s["min_ess_bulk"] > 100
    # a different seed or observation is a different entry
    reference.nuts(p, 1, **_kwargs(tmp_path))
    reference.nuts(p, 0, **_kwargs(tmp_path, seed=3))
    assert fake_sampler["n"] == 3 and len(list(tmp_path.glob("*.nc"))) == 3


def test_build_false_only_loads(tmp_path, fake_sampler):
    p = ConjugateProblem()
    with pytest.raises(reference.ReferenceNotCachedError, match="no cached reference"):
        reference.nuts(p, 0, build=False, **_kwargs(tmp_path))
    assert fake_sampler["n"] == 0
    built = reference.nuts(p, 0, **_kwargs(tmp_path))
    loaded = reference.nuts(p, 0, build=False, **_kwargs(tmp_path))
    np.testing.assert_array_equal(built.posterior["mu"].values, loaded.posterior["mu"].values)


def test_env_var_sets_default_cache_dir(tmp_path, monkeypatch, fake_sampler):
    monkeypatch.setenv(reference.ENV_VAR, str(tmp_path / "envcache"))
    assert reference.default_cache_dir() == tmp_path / "envcache"
    reference.nuts(ConjugateProblem(), 0, draws=400, chains=2, tune=10)
    assert len(list((tmp_path / "envcache").glob("*.nc"))) == 1


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_key"])
def test_corrupted_cache_is_rebuilt_with_warning(tmp_path, fake_sampler, damage):
    p = ConjugateProblem()
    first = reference.nuts(p, 0, **_kwargs(tmp_path))
    (path,) = tmp_path.glob("*.nc")
    if damage == "garbage":
        path.write_bytes(b"this is not a netCDF file" * 10)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        other = _fake_idata(seed=9)
        _io.set_attrs(other, {"pyro_kr_key": "0" * 24})
        _io.write_netcdf_atomic(other, path)
    with pytest.warns(RuntimeWarning, match="corrupted or stale"):
        rebuilt = reference.nuts(p, 0, **_kwargs(tmp_path))
    assert fake_sampler["n"] == 2
    np.testing.assert_array_equal(first.posterior["mu"].values, rebuilt.posterior["mu"].values)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt file loads cleanly
        reference.nuts(p, 0, **_kwargs(tmp_path))
    assert fake_sampler["n"] == 2


def test_refused_run_is_not_cached(tmp_path, fake_sampler):
    fake_sampler["shift"] = 5.0
    with pytest.raises(reference.ReferenceQualityError, match="R-hat"):
        reference.nuts(ConjugateProblem(), 0, **_kwargs(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    idata = _fake_idata()

    def broken(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(idata, "to_netcdf", broken)
    with pytest.raises(KeyboardInterrupt):
        _io.write_netcdf_atomic(idata, tmp_path / "x.nc")
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="method must be one of"):
        reference.nuts(ConjugateProblem(), method="hmc", cache=False)
    with pytest.raises(TypeError, match="Problem"):
        reference.nuts(object(), cache=False)
    with pytest.raises(ValueError, match="draws must be >= 1"):
        reference.nuts(ConjugateProblem(), draws=0, cache=False)


def test_to_draws_flattens_chains():
    d = reference.to_draws(_io.from_dict({"a": np.zeros((2, 5, 3)), "b": np.ones((2, 5))}))
    assert d["a"].shape == (10, 3) and d["b"].shape == (10,)
    with pytest.raises(ValueError, match="no sites"):
        reference.to_draws(_io.from_dict({"a": np.zeros((2, 5))}), ["zz"])


def _within_mc_error(draws: np.ndarray, ess: float, mean: float, sd: float, k: float = 4.0):
    mean_se = sd / math.sqrt(ess)
    sd_se = sd / math.sqrt(2 * ess)
    return abs(draws.mean() - mean) < k * mean_se and abs(draws.std() - sd) < k * sd_se


def test_nuts_on_problem_matches_closed_form_and_caches(tmp_path):
    p = ConjugateProblem()
    idata = reference.nuts(p, 0, draws=300, chains=2, tune=300, cache_dir=tmp_path)
    s = reference.summary(idata)
    assert s["wall_time_s"] > 0 and s["max_rhat"] <= 1.01 and s["min_ess_bulk"] >= 75
    mu = reference.to_draws(idata)["mu"]
    assert _within_mc_error(mu, s["min_ess_bulk"], POST_MEAN, POST_SD)
    # the cached run is re-checked against the caller's thresholds
    with pytest.raises(reference.ReferenceQualityError, match="min bulk ESS"):
        reference.nuts(p, 0, draws=300, chains=2, tune=300, cache_dir=tmp_path, min_ess=1e9)


def _conjugate_pyro_model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def _lognormal_pyro_model(y):
    # s ~ LogNormal(0, 1), y_i ~ N(0, s): exercises the constrained transform.
    s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(0.0, s), obs=y)


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def test_pyro_potential_value_and_gradient_match_closed_form(float64):
    y = torch.as_tensor(Y)
    pot = reference.PyroPotential(_lognormal_pyro_model, (y,), {})
    assert pot.names == ["s"] and pot.dim == 1
    z = 0.3  # log s
    value, grad = pot.value_and_grad(np.array([z]))
    s = math.exp(z)
    n, ss = len(Y), float((Y**2).sum())
    # log N(z; 0, 1) (LogNormal density times the Jacobian ds/dz = s) + Gaussian likelihood
    expected = -0.5 * z**2 - 0.5 * math.log(2 * math.pi)
    expected += -n * math.log(s) - 0.5 * n * math.log(2 * math.pi) - 0.5 * ss / s**2
    expected_grad = -z - n + ss / s**2
    assert value == pytest.approx(expected, rel=1e-10)
    assert grad[0] == pytest.approx(expected_grad, rel=1e-10)
    np.testing.assert_allclose(pot.constrain(np.array([[z]]))["s"], [s])


def test_nuts_from_pyro_conjugate_matches_closed_form(float64):
    # rhat_max=1.05: the default 1.01 is meant for reference-size runs (thousands of draws);
    # with 300 draws per chain a well-mixed chain pair lands above 1.01 by chance.
    idata = reference.nuts_from_pyro(
        _conjugate_pyro_model, torch.as_tensor(Y), draws=300, chains=2, tune=150, rhat_max=1.05
    )
    s = reference.summary(idata)
    mu = reference.to_draws(idata)["mu"]
    assert mu.shape == (600,)
    assert _within_mc_error(mu, s["min_ess_bulk"], POST_MEAN, POST_SD)


def test_nuts_from_pyro_caches_when_asked(tmp_path, monkeypatch):
    # the PyMC run is replaced by seeded draws: this test is about the model/argument key
    module = importlib.import_module("pyro_kr.bench.reference.pyro_model")
    monkeypatch.setattr(
        module, "_sample_pyro", lambda pot, settings, pb: (_fake_idata(settings["seed"]), 0.1)
    )
    y = torch.as_tensor(Y)
    kwargs = {"draws": 400, "chains": 2, "tune": 60, "cache": True, "cache_dir": tmp_path}
    first = reference.nuts_from_pyro(_conjugate_pyro_model, y, **kwargs)
    (path,) = tmp_path.glob("*.nc")
    mtime = os.path.getmtime(path)
    second = reference.nuts_from_pyro(_conjugate_pyro_model, y, **kwargs)
    assert os.path.getmtime(path) == mtime
    np.testing.assert_array_equal(first.posterior["mu"].values, second.posterior["mu"].values)
    reference.nuts_from_pyro(_conjugate_pyro_model, y + 1.0, **kwargs)
    reference.nuts_from_pyro(_lognormal_pyro_model, y, **kwargs)
    assert len(list(tmp_path.glob("*.nc"))) == 3


@pytest.mark.slow
def test_nuts_from_pyro_constrained_site_matches_pymc(tmp_path):
    y = torch.as_tensor(Y)
    idata = reference.nuts_from_pyro(_lognormal_pyro_model, y, draws=1000, chains=2, tune=500)
    with pm.Model() as m:
        s = pm.LogNormal("s", 0.0, 1.0)
        pm.Normal("y", 0.0, s, observed=Y)
    ref = reference.nuts(m, draws=2000, chains=2, tune=500, cache_dir=tmp_path)
    a = reference.to_draws(idata)["s"]
    b = reference.to_draws(ref)["s"]
    ess = reference.summary(idata)["min_ess_bulk"]
    assert _within_mc_error(np.log(a), ess, np.log(b).mean(), np.log(b).std())
