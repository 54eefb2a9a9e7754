from __future__ import annotations

import math
import warnings
from functools import partial
from types import SimpleNamespace

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.transforms import iterated, spline_coupling
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import (
    AutoIAFNormal,
    AutoMultivariateNormal,
    AutoNormal,
    AutoNormalizingFlow,
)

from pyro_kr import metrics
from pyro_kr.diagnostics import draw_guide, plots, psis, to_inference_data
from pyro_kr.diagnostics._draws import predictive_draws

az = pytest.importorskip("arviz")  # part of the bench extra

Y = torch.tensor([1.0, 2.0, 4.0])


def hierarchical(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfNormal(2.0))
    with pyro.plate("groups", 3):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, 1.0), obs=y)


GUIDES = {
    "AutoNormal": lambda m: AutoNormal(m),
    "AutoMultivariateNormal": lambda m: AutoMultivariateNormal(m),
    "AutoIAFNormal": lambda m: AutoIAFNormal(m, hidden_dim=[8]),
    "AutoNormalizingFlow": lambda m: AutoNormalizingFlow(m, partial(iterated, 2, spline_coupling)),
}


def _fit(guide, model, *args, steps=20):
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(steps):
        svi.step(*args)
    return guide


@pytest.fixture(autouse=True)
def _quiet_arviz():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*(Pareto|pareto|k_hat|khat).*")
        yield


# ----------------------------------------------------------------------------- InferenceData


@pytest.mark.parametrize("name", ["AutoNormal", "AutoMultivariateNormal"])
def test_to_inference_data_round_trip(name):
    guide = _fit(GUIDES[name](hierarchical), hierarchical, Y)
    idata = to_inference_data(guide, hierarchical, Y, num_samples=400, posterior_predictive=True)
    post = idata.posterior
    assert set(post.data_vars) == {"mu", "tau", "theta"}
    assert post["mu"].dims == ("chain", "draw") and post["mu"].shape == (1, 400)
    assert post["theta"].dims == ("chain", "draw", "groups") and post["theta"].shape == (1, 400, 3)
    assert list(post["groups"].values) == [0, 1, 2]
    assert (post["tau"].values > 0).all()  # constrained values
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "groups")
    np.testing.assert_array_equal(idata.observed_data["y"].values, Y.numpy())
    assert idata.posterior_predictive["y"].shape == (1, 400, 3)
    assert idata.posterior_predictive["y"].values.std() > 0.5  # fresh replicates, not y
    stats = idata.sample_stats
    lw = stats["log_weight"].values
    assert lw.shape == (1, 400) and np.isfinite(lw).all()
    np.testing.assert_allclose(lw, stats["lp"].values - stats["log_q"].values, rtol=1e-6)
    summary = az.summary(idata, kind="stats")
    assert {"mu", "tau", "theta[0]", "theta[2]"} <= set(summary.index)
    assert summary.loc["mu", "mean"] == pytest.approx(post["mu"].values.mean(), rel=1e-2)
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo) and loo.n_data_points == 3


def test_log_weights_match_a_direct_evaluation():
    guide = _fit(AutoMultivariateNormal(hierarchical), hierarchical, Y)
    idata = to_inference_data(guide, hierarchical, Y, num_samples=50, seed=3)
    post = {k: torch.as_tensor(v.values[0]) for k, v in idata.posterior.items()}
    q = guide.get_posterior()
    for i in (0, 17, 49):
        z = {k: v[i] for k, v in post.items()}
        lp = poutine_log_joint(hierarchical, z, Y)
        u = torch.cat([z["mu"][None], z["tau"].log()[None], z["theta"]])  # packing order
        log_q = (q.log_prob(u) - z["tau"].log()).detach()  # tau = exp(u): log|J| = log tau
        assert float(idata.sample_stats["lp"][0, i]) == pytest.approx(float(lp), rel=1e-4)
        assert float(idata.sample_stats["log_q"][0, i]) == pytest.approx(float(log_q), rel=1e-4)


def poutine_log_joint(model, values, *args):
    conditioned = pyro.poutine.condition(model, data=values)
    return pyro.poutine.trace(conditioned).get_trace(*args).log_prob_sum()


@pytest.mark.parametrize("name", list(GUIDES))
def test_every_autoguide_converts(name):
    guide = _fit(GUIDES[name](hierarchical), hierarchical, Y, steps=3)
    draws = draw_guide(guide, hierarchical, (Y,), num_samples=100)
    assert draws.vectorized
    assert list(draws.latent) == ["mu", "tau", "theta"]
    assert draws.latent["theta"].shape == (100, 3) and torch.isfinite(draws.log_weight).all()
    assert draws.log_likelihood["y"].shape == (100, 3)


def test_seed_makes_draws_reproducible_without_touching_the_global_rng():
    guide = _fit(AutoNormal(hierarchical), hierarchical, Y, steps=2)
    state = torch.get_rng_state()
    a = draw_guide(guide, hierarchical, (Y,), num_samples=20, seed=1)
    assert torch.equal(state, torch.get_rng_state())
    b = draw_guide(guide, hierarchical, (Y,), num_samples=20, seed=1)
    c = draw_guide(guide, hierarchical, (Y,), num_samples=20, seed=2)
    assert torch.equal(a.latent["theta"], b.latent["theta"])
    assert not torch.equal(a.latent["theta"], c.latent["theta"])


def not_vectorizable(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.Normal(float(mu), 1.0), obs=y)  # float() breaks a batch of draws


def test_a_model_that_does_not_broadcast_falls_back_to_a_loop():
    y = torch.tensor(0.3)
    guide = AutoNormal(not_vectorizable)
    with pytest.warns(RuntimeWarning, match="falling back to a loop"):
        idata = to_inference_data(guide, not_vectorizable, y, num_samples=30,
                                  posterior_predictive=True)
    assert idata.posterior.attrs["vectorized"] == 0
    assert idata.posterior["mu"].shape == (1, 30)
    assert idata.posterior_predictive["y"].shape == (1, 30)
    mu = torch.as_tensor(idata.posterior["mu"].values[0])
    expected = dist.Normal(mu, 1.0).log_prob(y) + dist.Normal(0.0, 1.0).log_prob(mu)
    np.testing.assert_allclose(idata.sample_stats["lp"].values[0], expected.numpy(), rtol=1e-5)
    with pytest.raises(Exception, match="one element"):
        draw_guide(guide, not_vectorizable, (y,), num_samples=5, vectorize=True)


def event_model(y):
    w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("obs", y.shape[0]):
        pyro.sample("y", dist.MultivariateNormal(w, torch.eye(2)), obs=y)


def test_event_dims_get_their_own_dim_names():
    y = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    guide = AutoMultivariateNormal(event_model)
    idata = to_inference_data(guide, event_model, y, num_samples=50, posterior_predictive=True)
    assert idata.posterior.attrs["vectorized"] == 1
    assert idata.posterior["w"].dims == ("chain", "draw", "w_dim_0")
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "obs")
    assert idata.observed_data["y"].dims == ("obs", "y_dim_1")
    assert idata.posterior_predictive["y"].shape == (1, 50, 4, 2)


# ----------------------------------------------------------------------------- PSIS

X = torch.tensor([0.3, -0.5, 1.2, 0.8, 0.1], dtype=torch.float64)
POST_VAR = 1.0 / (1.0 + len(X))  # z ~ N(0, 1), x_i ~ N(z, 1)
POST_MEAN = float(X.sum()) * POST_VAR


def conjugate(x):
    z = pyro.sample("z", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def gaussian_guide(mean, sd):
    def guide(x):
        pyro.sample("z", dist.Normal(torch.tensor(mean, dtype=torch.float64), sd))

    return guide


def test_psis_of_the_exact_guide():
    guide = gaussian_guide(POST_MEAN, math.sqrt(POST_VAR))
    result = psis(guide, conjugate, x=X, num_samples=2000)  # model arguments by keyword
    assert result.khat < 0.5 and result.diagnosis == "good"
    assert result.ess == pytest.approx(2000, rel=1e-6)
    evidence = dist.MultivariateNormal(torch.zeros(len(X), dtype=torch.float64),
                                       torch.eye(len(X), dtype=torch.float64) + 1.0)
    assert result.log_evidence == pytest.approx(float(evidence.log_prob(X)), abs=1e-6)
    assert result.elbo == pytest.approx(result.log_evidence, abs=1e-6)  # KL(q || p) = 0


def test_psis_flags_a_bad_guide_and_corrects_a_wide_one():
    sd = math.sqrt(POST_VAR)
    bad = psis(gaussian_guide(POST_MEAN + 3 * sd, 0.3 * sd), conjugate, X, num_samples=2000)
    assert bad.khat > 0.7 and bad.diagnosis == "unreliable"
    assert bad.ess < 100
    wide = psis(gaussian_guide(POST_MEAN + 0.5 * sd, 1.5 * sd), conjugate, X, num_samples=4000)
    assert wide.khat < 0.5
    assert 0.2 * 4000 < wide.ess < 4000
    resampled = wide.resample(seed=0)["z"]
    assert resampled.shape == (4000,)
    raw_error = abs(float(wide.draws["z"].mean()) - POST_MEAN)
    assert abs(float(wide.mean()["z"]) - POST_MEAN) < 0.3 * raw_error
    assert abs(float(resampled.mean()) - POST_MEAN) < 0.3 * raw_error
    assert abs(float(resampled.std()) - sd) < 0.1 * sd


def test_psis_works_on_an_autocontinuous_guide():
    guide = _fit(AutoMultivariateNormal(hierarchical), hierarchical, Y, steps=5)
    result = psis(guide, hierarchical, Y, num_samples=500)
    assert np.isfinite(result.khat) and 1.0 <= result.ess <= 500
    assert set(result.draws) == {"mu", "tau", "theta"}
    assert result.weights.sum() == pytest.approx(1.0)


def test_psis_rejects_non_finite_log_weights():
    from pyro_kr.diagnostics import PSISResult

    with pytest.raises(ValueError, match="non-finite"):
        PSISResult.from_log_weights(np.array([0.0, -np.inf, 1.0]))


def test_predictive_draws_follow_the_latent_draws():
    guide = gaussian_guide(5.0, 1e-3)  # every draw has z ~ 5
    draws = draw_guide(guide, conjugate, (X,), num_samples=200)
    rep = predictive_draws(conjugate, (X,), {}, draws)["x"]
    assert rep.shape == (200, len(X))
    assert float(rep.mean()) == pytest.approx(5.0, abs=0.2)


# ----------------------------------------------------------------------------- plots


def test_plots_return_and_save_figures(tmp_path):
    from matplotlib.figure import Figure

    ref = {"a": torch.randn(300), "b": torch.randn(300, 2)}
    draws = {"a": torch.randn(200) + 0.5, "b": torch.randn(200, 2)}
    fig = plots.pair_plot(draws, ref, path=tmp_path / "pair.png")
    assert isinstance(fig, Figure) and len(fig.axes) == 9
    assert fig.axes[6].get_xlabel() == "a"
    fig = plots.marginal_plot({"m": draws}, reference=ref, path=tmp_path / "marg.png")
    assert [ax.get_title() for ax in fig.axes[:3]] == ["a", "b[0]", "b[1]"]
    history = SimpleNamespace(loss=[10.0 / (t + 1) for t in range(200)], elbo=[])
    fig = plots.loss_plot({"run": history, "other": [1.0] * 50}, path=tmp_path / "loss.png")
    assert fig.axes[0].get_ylabel() == "loss"
    history.elbo = [-v for v in history.loss]
    assert plots.loss_plot(history, key="elbo").axes[0].get_ylabel() == "elbo"
    results = {
        "A": metrics.compare(draws, ref, metrics=("w2", "mean_error")),
        "B": metrics.compare(ref, ref, metrics=("w2", "mean_error")),
    }
    fig = plots.metrics_plot(results, path=tmp_path / "metrics.png")
    assert [ax.get_title() for ax in fig.axes] == ["w2", "mean_error"]
    assert len(fig.axes[0].lines) == 1  # the noise-floor line
    for name in ("pair", "marg", "loss", "metrics"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


def test_plots_reject_bad_input():
    with pytest.raises(ValueError, match=r"\(10, 2\).*\(10, 3\)"):
        plots.pair_plot(torch.randn(10, 2), torch.randn(10, 3))
    with pytest.raises(TypeError, match=".loss or .elbo"):
        plots.loss_plot(object())
    with pytest.raises(TypeError, match="mapping"):
        plots.metrics_plot({})
