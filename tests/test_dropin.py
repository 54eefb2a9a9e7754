"""Issue 13, sections 1-3 and 5: Pyro's conventions by default, no silent wrong answers, no raw
tracebacks. Each test holds one case: the input a user tried, and the error or result now
expected."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, config_enumerate
from pyro.optim import Adam

from pyro_kr import Annealing, AutoKR, TransportELBO, fit
from pyro_kr._batching import batch_problem, quiet_plate_guess
from pyro_kr.bench.problems import references
from pyro_kr.diagnostics import draw_guide, psis

# ---------------------------------------------------------------------------------------------
# Models written the way Pyro's tutorials write them.

N, D = 40, 2
SIGMA, PRIOR_SD = 0.5, 2.0


def _data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(N, D, generator=gen)
    w = torch.tensor([1.0, -0.5])
    y = X @ w + 0.3 + SIGMA * torch.randn(N, generator=gen)
    return X, y


def linreg_tutorial(X, y=None):
    """Bayesian linear regression as in Pyro's tutorials: ``X @ w + b`` (not batch-safe)."""
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1]), PRIOR_SD).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, PRIOR_SD))
    mean = X @ w + b
    with pyro.plate("data", X.shape[0]):
        pyro.sample("obs", dist.Normal(mean, SIGMA), obs=y)


def linreg_batch_safe(X, y=None):
    """The same model written with batch-safe ops."""
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1]), PRIOR_SD).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, PRIOR_SD))
    mean = (X * w).sum(-1) + b
    with pyro.plate("data", X.shape[0]):
        pyro.sample("obs", dist.Normal(mean, SIGMA), obs=y)


def linreg_broadcasting(X, y=None):
    """Not batch-safe without raising: vectorized, it broadcasts draws against draws."""
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1]), PRIOR_SD).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, PRIOR_SD))
    mean = (X @ w.unsqueeze(-1)).squeeze(-1) + b
    with pyro.plate("data", X.shape[0]):
        pyro.sample("obs", dist.Normal(mean, SIGMA), obs=y)


def logistic_tutorial(X, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1]), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    logits = X @ w + b
    with pyro.plate("data", X.shape[0]):
        pyro.sample("obs", dist.Bernoulli(logits=logits), obs=y)


def exact_posterior(X, y):
    """Closed-form Gaussian posterior of ``(w, b)``."""
    A = torch.cat([X, torch.ones(len(X), 1)], dim=1)
    precision = A.T @ A / SIGMA**2 + torch.eye(D + 1) / PRIOR_SD**2
    cov = torch.linalg.inv(precision)
    return cov @ A.T @ y / SIGMA**2, cov


def hierarchical(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfNormal(2.0))
    with pyro.plate("groups", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, 1.0), obs=y)


Y = torch.tensor([1.0, 2.0, 4.0])


def _not_batch_safe_warnings(record):
    return [w for w in record if "not batch-safe" in str(w.message)]


# ---------------------------------------------------------------------------------------------
# Section 1: drop-in behaviour.


def test_tutorial_logistic_regression_runs_with_one_warning():
    X = torch.randn(30, 5)
    y = torch.bernoulli(torch.sigmoid(X @ torch.ones(5)))
    loss = TransportELBO(num_particles=8)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        history = fit(logistic_tutorial, AutoKR(logistic_tutorial), X, y, loss=loss, steps=5,
                      progress=False)
    assert history.steps == 5 and all(math.isfinite(v) for v in history.loss)
    found = _not_batch_safe_warnings(record)
    assert len(found) == 1  # once, not once per step
    message = str(found[0].message)
    assert "'b'" in message and "vectorize_particles=False" in message and "X @ w" in message
    assert loss.vectorize_particles is False


def _fitted_linreg(model, steps=300):
    """Default TransportELBO (8 particles), affine AutoKR, Adam(lr=0.05)."""
    X, y = _data()
    guide = AutoKR(model, map="affine")
    loss = TransportELBO(num_particles=8)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fit(model, guide, X, y, loss=loss, steps=steps, lr=0.05, progress=False)
    return guide, loss, record, X, y


def _check_closed_form(model):
    guide, loss, record, X, y = _fitted_linreg(model)
    # batch-safe models stay vectorized; the others run sequentially, with one warning
    assert loss.vectorize_particles is (model is linreg_batch_safe)
    assert len(_not_batch_safe_warnings(record)) == (0 if model is linreg_batch_safe else 1)
    mean, cov = exact_posterior(X, y)
    draws = guide.sample_posterior(20000, X, y)
    z = torch.cat([draws["w"], draws["b"].unsqueeze(-1)], dim=-1)
    sd = cov.diagonal().sqrt()
    # the prior mean (where the guide starts) is > 10 posterior sds away; Adam's jitter at
    # lr 0.05 is about half a posterior sd
    assert float(((mean / sd).abs()).max()) > 10
    assert float(((z.mean(0) - mean) / sd).abs().max()) < 1.0
    assert torch.allclose(z.T.cov().diagonal().sqrt(), sd, rtol=0.15)


def test_linear_regression_batch_safe_closed_form():
    _check_closed_form(linreg_batch_safe)


@pytest.mark.slow
@pytest.mark.parametrize("model", [linreg_tutorial, linreg_broadcasting])
def test_linear_regression_not_batch_safe_closed_form(model):
    _check_closed_form(model)


@pytest.mark.parametrize(
    ("model", "vectorized"),
    [(linreg_tutorial, False), (linreg_broadcasting, False), (linreg_batch_safe, True)],
)
def test_transport_elbo_equals_trace_elbo(model, vectorized):
    """Without a schedule the loss is Trace_ELBO's on the same draws (up to round-off): sequential
    for a model that is not batch-safe, vectorized for one that is."""
    X, y = _data()
    guide = AutoKR(model, map="affine")
    loss = TransportELBO(num_particles=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss.loss(model, guide, X, y)  # first call: the checks
    assert loss.vectorize_particles is vectorized
    pyro.set_rng_seed(1)
    ours = loss.loss(model, guide, X, y)
    theirs = Trace_ELBO(num_particles=8, vectorize_particles=vectorized)
    with quiet_plate_guess():
        theirs.loss(model, guide, X, y)  # first call: guesses max_plate_nesting
    pyro.set_rng_seed(1)
    assert ours == pytest.approx(theirs.loss(model, guide, X, y), rel=1e-7)


def test_batch_problem_names_the_site_of_a_silent_broadcast():
    X, y = _data()
    guide = AutoKR(linreg_broadcasting, map="affine")
    guide(X, y)
    reason = batch_problem(linreg_broadcasting, guide, (X, y), {}, num_draws=4, dim=-2)
    assert reason is not None and "'obs'" in reason
    assert batch_problem(linreg_batch_safe, AutoKR(linreg_batch_safe, map="affine"), (X, y),
                         {}, num_draws=4, dim=-2) is None


def test_model_error_is_not_hidden_behind_the_batch_warning():
    def broken(y):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(z, 1.0), obs=y[10])  # IndexError without vectorizing

    with pytest.raises(IndexError):
        fit(broken, AutoKR(broken), Y, loss=TransportELBO(num_particles=4), steps=2,
            progress=False)


def test_psis_on_a_non_batch_safe_model_loops_with_a_warning():
    guide, _, _, X, y = _fitted_linreg(linreg_broadcasting, steps=50)
    with pytest.warns(RuntimeWarning, match="not batch-safe.*'obs'.*falling back to a loop"):
        draws = draw_guide(guide, linreg_broadcasting, (X, y), num_samples=200)
    assert not draws.vectorized and draws.log_weight.shape == (200,)
    with pytest.raises(ValueError, match="vectorize=True, but the model is not batch-safe"):
        psis(guide, linreg_broadcasting, X, y, num_samples=4000, vectorize=True)


# ---------------------------------------------------------------------------------------------
# Section 2: silent wrong answers.


def test_annealing_steps_zero_with_a_ramp_is_refused():
    with pytest.raises(ValueError, match=r"steps=0\) leaves no room for the ramp eps"):
        Annealing(steps=0)
    a = Annealing(eps=1e-3, lam=1e4, steps=0)  # constants need no ramp
    assert a.values(0) == (1e-3, 1e4)


def test_fit_steps_zero_is_refused():
    with pytest.raises(ValueError, match="steps must be a positive int, got 0"):
        fit(hierarchical, AutoKR(hierarchical), Y, steps=0, progress=False)


def test_zero_particles_are_refused():
    with pytest.raises(ValueError, match="num_particles must be >= 1, got 0"):
        TransportELBO(num_particles=0)
    with pytest.raises(ValueError, match="num_particles=0"):
        fit(hierarchical, AutoKR(hierarchical), Y, loss=Trace_ELBO(num_particles=0), steps=5,
            progress=False)


def test_median_for_data_of_another_size_is_refused():
    def local(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("d", len(data)):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("obs", dist.Normal(z, 1.0), obs=data)

    guide = AutoKR(local, map="affine")
    guide(torch.randn(5))
    assert guide.median(torch.randn(5))["z"].shape == (5,)
    with pytest.raises(ValueError, match=r"'z' has shape \(7,\).*built for shape \(5,\)"):
        guide.median(torch.randn(7))
    with pytest.raises(ValueError, match="latent site 'z' has shape"):
        guide.sample_posterior(10, torch.randn(7))


def test_enumerated_site_with_transport_elbo_is_refused():
    @config_enumerate
    def mixture(data):
        locs = pyro.sample("locs", dist.Normal(0.0, 5.0).expand([2]).to_event(1))
        with pyro.plate("data", len(data)):
            k = pyro.sample("assignment", dist.Categorical(torch.ones(2) / 2))
            pyro.sample("obs", dist.Normal(locs[k], 1.0), obs=data)

    data = torch.cat([torch.randn(10) - 3, torch.randn(10) + 3])
    guide = AutoKR(mixture, map="affine")
    svi = SVI(mixture, guide, Adam({"lr": 0.01}), TransportELBO())
    with pytest.raises(ValueError, match="'assignment'.*TraceEnum_ELBO"):
        svi.step(data)


def test_psis_with_a_subsampled_plate_is_refused():
    def subsampled(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("data", len(y), subsample_size=2) as idx:
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=y[idx])

    guide = AutoKR(subsampled, map="affine")
    with pytest.raises(ValueError, match=r"subsamples plate 'data' \(2 of 3\)"):
        psis(guide, subsampled, Y, num_samples=100)


def test_resume_below_the_checkpoint_step_is_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    fit(hierarchical, AutoKR(hierarchical), Y, steps=6, checkpoint=path, progress=False)
    pyro.clear_param_store()
    with pytest.raises(ValueError, match="at step 6, beyond steps=3; pass steps >= 6"):
        fit(hierarchical, AutoKR(hierarchical), Y, steps=3, checkpoint=path, progress=False)


# ---------------------------------------------------------------------------------------------
# Section 3: one clear message instead of a raw traceback.


def test_nan_in_observed_data():
    y = torch.tensor([1.0, float("nan"), 4.0])
    with pytest.raises(ValueError, match=r"observed site 'y' holds 1 NaN/inf values .*\(1,\)"):
        fit(hierarchical, AutoKR(hierarchical), y, steps=5, progress=False)
    svi = SVI(hierarchical, AutoKR(hierarchical), Adam({"lr": 0.01}), TransportELBO())
    with pytest.raises(ValueError, match="TransportELBO: observed site 'y' holds 1 NaN"):
        svi.step(y)


def test_masked_nan_observations_are_accepted():
    def masked(y, mask):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        with pyro.plate("data", len(y)), pyro.poutine.mask(mask=mask):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=torch.where(mask, y, 0.0))

    y = torch.tensor([1.0, float("nan"), 4.0])
    history = fit(masked, AutoKR(masked, map="affine"), y, ~torch.isnan(y), steps=3,
                  progress=False)
    assert history.steps == 3


def test_marginal_with_negative_num_samples():
    guide = AutoKR(hierarchical, order=["tau"])
    guide(Y)
    with pytest.raises(ValueError, match="num_samples must be >= 1, got -3"):
        guide.marginal("tau", -3)


@pytest.mark.parametrize("num_samples, error", [(-3, ValueError), (2.5, TypeError)])
def test_sample_posterior_with_a_bad_num_samples(num_samples, error):
    guide = AutoKR(hierarchical)
    guide(Y)
    with pytest.raises(error, match="num_samples must be"):
        guide.sample_posterior(num_samples, Y)
    with pytest.raises(error, match="num_samples must be"):
        guide.quantiles([0.5], Y, num_samples=num_samples)


def test_checkpoint_in_an_unwritable_folder_fails_before_the_first_step(tmp_path):
    parent = tmp_path / "a_file"
    parent.write_text("not a folder")
    steps = []
    for path in (parent / "ckpt.pt", "/proc/pyro_kr_no_such_folder/ckpt.pt"):
        with pytest.raises(ValueError, match="cannot write checkpoint.*writable folder"):
            fit(hierarchical, AutoKR(hierarchical), Y, steps=20, checkpoint=path,
                checkpoint_every=10, progress=False, callback=lambda s, r: steps.append(s))
    assert steps == []


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A copy of the shipped eight_schools reference that tests may damage."""
    source = references.reference_dir() / "eight_schools_obs0.npz"
    monkeypatch.setattr(references, "reference_dir", lambda: tmp_path)
    with np.load(source) as data:
        return tmp_path / "eight_schools_obs0.npz", {k: data[k][:50] for k in data.files}


def test_truncated_reference_file(shipped):
    path, draws = shipped
    np.savez_compressed(path, **draws)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or corrupted.*--problem eight_schools"):
        references.load_reference("eight_schools")


def test_reference_with_nan_or_a_missing_site(shipped):
    path, draws = shipped
    draws["mu"][3] = np.nan
    np.savez_compressed(path, **draws)
    with pytest.raises(ValueError, match="1 NaN/inf values in site 'mu'.*regenerate"):
        references.load_reference("eight_schools")
    np.savez_compressed(path, **{k: v for k, v in draws.items() if k != "tau"})
    with pytest.raises(ValueError, match=r"lacks the sites \['tau'\].*regenerate"):
        references.load_reference("eight_schools")


def test_annealing_negative_eps_names_eps():
    for eps in ((1.0, -1e-3), -0.1):
        with pytest.raises(ValueError, match="eps must lie in") as info:
            Annealing(eps=eps)
        assert "lam" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# Section 5: progress output and Pyro's INFO line.


def test_progress_without_a_terminal_prints_short_lines(capsys):
    fit(hierarchical, AutoKR(hierarchical), Y, steps=50, progress=True)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "\r" not in err and len(lines) == 10
    assert all(len(line) < 200 for line in lines)
    assert lines[-1].startswith("fit: step 50/50 loss=")


def test_plate_guess_info_line_is_dropped_and_nothing_else(caplog):
    loss = TransportELBO(num_particles=4)
    with caplog.at_level(logging.INFO, logger="pyro"):
        fit(hierarchical, AutoKR(hierarchical), Y, loss=loss, steps=3, progress=False)
        with quiet_plate_guess():
            logging.getLogger("pyro.infer.elbo").info("another message")
    assert loss.vectorize_particles  # the hierarchical model is batch-safe
    messages = [r.getMessage() for r in caplog.records]
    assert not any("Guessed max_plate_nesting" in m for m in messages)
    assert "another message" in messages
