"""The default recipe on a centered normal hierarchy with 1,000 groups (sparse AutoKR).

Model (as benchmarks/hierarchical.py): ``mu ~ N(0, 5)``, ``tau ~ HalfCauchy(5)``,
``theta_j ~ N(mu, tau)``, ``y_j ~ N(theta_j, sigma_j)``, known ``sigma_j``. Integrating ``theta``
and then ``mu`` out in closed form leaves a 1-d density of ``log tau`` (exact on a fine grid).

The default recipe (``fit`` + ``TransportELBO(Annealing.over(steps))``: likelihood tempering on
a 70 % ramp, then ``fit``'s lr decay) lags behind the tempered posterior: at ``beta < ~0.5`` the
tempered posterior of ``tau`` collapses (the noise variance ``sigma^2 / beta`` explains the
spread of ``y``), and ``log tau`` then climbs by about one unit in the last ~15 % of the ramp,
faster than Adam at lr 1e-2 can follow; the decay starts when ``beta`` reaches 1 and freezes
the lag (docs/hierarchical.md, "The default recipe at N = 1,000"). These tests pin that down:
the default misses the mean of ``log tau`` by 1.4 posterior sds (a known defect, ``xfail``
strict, so a fix of the default makes it fail until the mark is removed); the same recipe with
the lr held until 85 % of the steps recovers it, and so does the adaptive start
``lr_decay_from="plateau"`` (the decay once the loss stopped improving after the ramp).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_kr

N, STEPS, PARTICLES = 1000, 600, 8
LAST = {}  # the History of the last _fit


def _data(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    sigma = torch.linspace(0.5, 2.0, n)
    theta = 1.0 + 1.0 * torch.randn(n, generator=g)
    return theta + sigma * torch.randn(n, generator=g), sigma


def _model(y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("groups", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def _exact_log_tau(y, sigma, grid=4000):
    """Mean and sd of ``log tau`` under the exact posterior (``theta`` and ``mu`` integrated
    out in closed form: ``y_j ~ N(mu, sigma_j^2 + tau^2)``, ``mu ~ N(0, 25)``)."""
    y, s2 = y.double(), sigma.double() ** 2
    lt = torch.linspace(-6.0, 3.0, grid, dtype=torch.float64)
    w = 1.0 / (s2[None, :] + torch.exp(2 * lt)[:, None])  # (grid, N)
    prec = 1 / 25 + w.sum(1)
    mean = (w * y).sum(1) / prec
    log_lik = 0.5 * (w.log().sum(1) - (w * y**2).sum(1) + mean**2 * prec - prec.log())
    tau = lt.exp()
    log_post = log_lik + dist.HalfCauchy(5.0).log_prob(tau) + lt  # density of log tau
    p = torch.softmax(log_post, 0)
    m = (p * lt).sum()
    return float(m), float(((p * (lt - m) ** 2).sum()).sqrt())


def _fit(**options):
    y, sigma = _data()
    pyro.clear_param_store()
    torch.manual_seed(0)
    guide = pyro_kr.AutoKR(_model, structure="plates")
    loss = pyro_kr.TransportELBO(pyro_kr.Annealing.over(STEPS), num_particles=PARTICLES,
                                 max_plate_nesting=1)
    history = pyro_kr.fit(_model, guide, y, sigma, loss=loss, steps=STEPS, progress=False,
                          check=False, **options)
    LAST["history"] = history
    torch.manual_seed(1)
    log_tau = guide.sample_posterior(4000, y, sigma)["tau"].log()
    return float(log_tau.mean()), float(log_tau.std()), _exact_log_tau(y, sigma)


def test_exact_log_tau_density_matches_the_benchmark_reference():
    y, sigma = _data()
    m, s = _exact_log_tau(y, sigma)
    # benchmarks/hierarchical.py's 2-d quadrature reference: -0.039 / 0.051 at N = 1,000
    assert abs(m - (-0.039)) < 0.005 and abs(s - 0.051) < 0.004


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True, raises=AssertionError,
    reason="known limit of the default recipe at N = 1,000 and 600 steps: log tau ends about 1.4 "
    "posterior sds low (benchmark seed 0: mean -0.112 against -0.039); docs/hierarchical.md, "
    "'The default recipe at N = 1,000'")
def test_default_recipe_recovers_the_mean_of_log_tau():
    mean, _, (exact_mean, exact_sd) = _fit()
    assert abs(mean - exact_mean) < 0.5 * exact_sd, (mean, exact_mean, exact_sd)


@pytest.mark.slow
def test_lr_held_past_the_ramp_recovers_the_mean_of_log_tau():
    # the default recipe, but Adam's lr is held to 85 % of the steps (not the ramp's end, 70 %)
    # and then decayed to 1 % by the last step: fit(..., lr_decay_from=0.85)
    mean, sd, (exact_mean, exact_sd) = _fit(lr_decay_from=0.85)
    assert abs(mean - exact_mean) < 0.5 * exact_sd, (mean, exact_mean, exact_sd)
    # wide (about 1.5x with order="auto", tau first), not collapsed
    assert sd < 2 * exact_sd, (sd, exact_sd)


@pytest.mark.slow
def test_plateau_start_recovers_the_mean_of_log_tau():
    # the default recipe with fit(..., lr_decay_from="plateau"): the loss still falls for a
    # while after the ramp ends (step 420) as the fit catches up with the untempered
    # posterior, so the rule holds the lr past the earliest start (420 + 2 windows of 15)
    mean, sd, (exact_mean, exact_sd) = _fit(lr_decay_from="plateau")
    start = LAST["history"].lr_decay_start
    assert 450 < start <= 510, start  # 0.85 * 600 = 510, the latest start
    assert abs(mean - exact_mean) < 0.5 * exact_sd, (mean, exact_mean, exact_sd, start)
    assert sd < 2 * exact_sd, (sd, exact_sd)


@pytest.mark.slow
def test_converged_sparse_map_has_the_exact_spread_of_log_tau():
    # Trained to convergence (the step decaying 100x, 8 particles), the sparse affine map's
    # log tau has the exact sd: its per-group log-scale slopes let each group's conditional
    # spread follow tau. Without them (pyro_kr.guides.sparse.SCALE_SLOPE = False) the small
    # per-group misfits add up over the 1,000 groups and narrow log tau by about 8 %
    # (docs/hierarchical.md, "The groups' spreads follow the globals").
    y, sigma = _data()
    pyro.clear_param_store()
    torch.manual_seed(0)
    guide = pyro_kr.AutoKR(_model, structure="plates", map="affine", order="model")
    steps = 3000
    loss = pyro.infer.Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
    optim = pyro.optim.ClippedAdam({"lr": 1e-2, "lrd": 0.01 ** (1 / steps)})
    pyro_kr.fit(_model, guide, y, sigma, loss=loss, optim=optim, steps=steps, progress=False,
                check=False)
    torch.manual_seed(1)
    log_tau = guide.sample_posterior(20000, y, sigma)["tau"].log()
    exact_mean, exact_sd = _exact_log_tau(y, sigma)
    assert abs(float(log_tau.mean()) - exact_mean) < 0.1 * exact_sd
    assert abs(float(log_tau.std()) / exact_sd - 1) < 0.03, (float(log_tau.std()), exact_sd)
