"""benchmarks/hierarchical.py's exact reference and benchmarks/hierarchical_floors.py."""

from __future__ import annotations

import numpy as np
from _scripts import load_benchmark
from test_hierarchy_default_recipe import _exact_log_tau


def test_zoomed_reference_has_the_exact_spread_of_log_tau():
    # N = 1,000: the posterior sd of log tau is 0.051; the single wide grid of 400 cells over
    # [-8, 3.5] put cells 0.56 sd apart and widened the sd of the draws by 1.2 %; the zoomed
    # grid (the draws: a cell, then uniform within it) must agree with the closed-form 1-d
    # density (theta and mu integrated out)
    floors = load_benchmark("hierarchical_floors.py", "hierarchical_floors_bench")
    h = floors.H
    y, sigma = h.make_data(1000)
    mu, log_tau, w = h.posterior_grid(y, sigma)
    assert w.shape == (400, 400) and abs(w.sum() - 1) < 1e-12
    p = w.sum(0)  # the marginal of log tau (rows are mu)
    mean = (p * log_tau).sum()
    var = (p * (log_tau - mean) ** 2).sum() + (log_tau[1] - log_tau[0]) ** 2 / 12
    exact_mean, exact_sd = _exact_log_tau(y, sigma)
    assert abs(mean - exact_mean) < 0.002 * exact_sd
    assert abs(np.sqrt(var) / exact_sd - 1) < 0.002
    draws, theta = h.reference(y, sigma, 1000)
    assert draws.shape == (1000, 2) and theta.shape == (1000, 1000)


def test_floors_of_two_exact_sets():
    floors = load_benchmark("hierarchical_floors.py", "hierarchical_floors_bench")
    row = floors.floors(8, pairs=20)
    assert row["groups"] == 8 and row["draws"] == 4000
    for k in ("mu", "log_tau"):
        assert 0 <= row[f"floor_sd_err_{k}"] < 0.1 and 0 < row[f"expected_sd_err_{k}"] < 0.1
    assert np.isfinite(row["floor_w2_globals"]) and row["floor_w2_globals"] > 0


def test_exact_moments_agree_with_the_closed_form_and_the_draws():
    floors = load_benchmark("hierarchical_floors.py", "hierarchical_floors_bench")
    h = floors.H
    y, sigma = h.make_data(100)
    m = h.exact_moments(y, sigma)
    exact_mean, exact_sd = _exact_log_tau(y, sigma)
    assert abs(m["exact_mean_log_tau"] - exact_mean) < 0.002 * exact_sd
    assert abs(m["exact_sd_log_tau"] / exact_sd - 1) < 0.002
    draws, _ = h.reference(y, sigma, 40000, seed=3)  # sd of an sd estimate: 0.35 %
    for i, k in enumerate(("mu", "log_tau")):
        assert abs(draws[:, i].std() / m[f"exact_sd_{k}"] - 1) < 0.015
        assert abs(draws[:, i].mean() - m[f"exact_mean_{k}"]) < 0.02 * m[f"exact_sd_{k}"]


def test_benchmark_row_scores_the_guides_bias_against_the_exact_sd():
    floors = load_benchmark("hierarchical_floors.py", "hierarchical_floors_bench")
    h = floors.H
    row = h.run_one("autokr_sparse_affine", 8, 5, 2, 1e-2, True, bias_draws=500)
    assert row["bias_draws"] == 500 and row["order"] == h.MEASURED_ORDER
    for k in ("mu", "log_tau"):
        assert row[f"exact_sd_{k}"] > 0 and np.isfinite(row[f"bias_sd_{k}"])
    # the bias is the draws' own sd against the exact one: a 5-step guide is far off
    assert row["bias_sd_log_tau"] != 0


def test_benchmark_trains_the_kr_guides_with_the_path_gradient_when_asked():
    import pyro

    import pyro_kr

    floors = load_benchmark("hierarchical_floors.py", "hierarchical_floors_bench")
    h = floors.H
    before = h.GRADIENT
    try:
        h.GRADIENT = "path"
        loss = h.make_elbo("autokr_sparse", 4)
        assert isinstance(loss, pyro_kr.TransportELBO) and loss.gradient == "path"
        assert loss.num_particles == 4 and loss.schedule is None  # the plain ELBO's loss
        # the stock guides keep Pyro's Trace_ELBO
        assert type(h.make_elbo("iaf", 4)) is pyro.infer.Trace_ELBO
        row = h.run_one("autokr_sparse_affine", 8, 5, 2, 1e-2, False)
        assert row["gradient"] == "path" and np.isfinite(row["seconds_per_step"])
    finally:
        h.GRADIENT = before
    assert type(h.make_elbo("autokr_sparse", 4)) is pyro.infer.Trace_ELBO


def test_benchmark_polishes_in_stages_on_more_points():
    # --polish 64 128 --polish-iterations 3 2: one pyro_kr.polish after the other; the row
    # keeps every stage and the last one's fields
    floors = load_benchmark("hierarchical_floors.py", "hierarchical_floors_bench")
    h = floors.H
    row = h.run_one("autokr_sparse_affine", 8, 5, 2, 1e-2, False, polish=(64, 128),
                    polish_iterations=(3, 2))
    first, second = row["polish_stages"]
    assert (first["particles"], first["max_iter"]) == (64, 3)
    assert (second["particles"], second["max_iter"]) == (128, 2)
    assert first["iterations"] <= 3 and second["iterations"] <= 2
    assert row["polish_particles"] == 128 and row["polish_loss_after"] == second["loss_after"]
    assert row["polish_seconds"] == first["seconds"] + second["seconds"]
    assert first["loss_after"] <= first["loss_before"]


def test_best_monotone_globals_fits_the_exact_marginal_of_the_globals():
    # the sparse guide's monotone family of (log tau, mu) fitted to their exact posterior at
    # N = 8 (smaller settings than the benchmark's: measured KL 0.0011, sd errors -1.3 % and
    # -0.6 %): the KL on fresh draws is >= 0 within its noise and small, and the sds are close
    # to the quadrature's
    gap = load_benchmark("hierarchical_family_gap.py", "hierarchical_family_gap_bench")
    y, sigma = gap.H.make_data(8)
    out = gap.best_monotone_globals(y, sigma, points=2048, iterations=300, draws=20000,
                                    adam_steps=200)
    assert -4 * out["kl_se"] < out["kl"] < 0.005
    assert abs(out["sd_log_tau"]) < 0.03 and abs(out["sd_mu"]) < 0.03


def test_family_gap_log_evidence_and_kl():
    # log p(y) of the centered model (theta integrated out, grid over mu and log tau) against
    # plain Monte Carlo over the prior of (mu, tau) at N = 3, where the prior is not too wide
    import math

    import torch

    gap = load_benchmark("hierarchical_family_gap.py", "hierarchical_family_gap_bench")
    y, sigma = gap.H.make_data(3)
    g = torch.Generator().manual_seed(0)
    m = 400_000
    mu = 5.0 * torch.randn(m, generator=g, dtype=torch.float64)
    tau = (5.0 * torch.distributions.Cauchy(0.0, 1.0).icdf(
        torch.rand(m, generator=g, dtype=torch.float64) * 0.5 + 0.5))
    var = sigma.double() ** 2 + tau[:, None] ** 2
    r2 = (y.double() - mu[:, None]) ** 2
    log_lik = (-0.5 * (torch.log(2 * math.pi * var) + r2 / var)).sum(-1)
    mc = float(torch.logsumexp(log_lik, 0) - math.log(m))
    weights = (log_lik - log_lik.max()).exp()
    se = float(weights.std() / weights.mean()) / math.sqrt(m)  # relative error of the mean
    assert abs(gap.log_evidence(y, sigma) - mc) < 4 * se + 1e-3
    # the quadrature KL of a (briefly trained) guide is a KL: not negative, finite sd errors
    rows = gap.run(8, 0, 50, 0.01, "affine", 6, 4, 1, 2000, False)
    assert [r["stage"] for r in rows] == ["svi", "lbfgs 25"]
    assert all(r["kl"] > -1e-3 and np.isfinite(r["own_sd_log_tau"]) for r in rows)
    assert rows[1]["kl"] < rows[0]["kl"]


def test_best_gaussian_of_the_globals_is_exact_where_the_posterior_is_gaussian():
    # N = 1,000: the posterior of (mu, log tau) is nearly Gaussian, so the reverse-KL Gaussian
    # has the exact sds within 1 %; N = 8: the funnel's neck makes it much narrower
    gap = load_benchmark("hierarchical_family_gap.py", "hierarchical_family_gap_bench")
    near = gap.best_gaussian_globals(*gap.H.make_data(1000), nodes=20)
    assert abs(near["sd_log_tau"]) < 0.01 and abs(near["sd_mu"]) < 0.01
    far = gap.best_gaussian_globals(*gap.H.make_data(8), nodes=20)
    assert far["sd_log_tau"] < -0.05 and far["sd_mu"] < -0.05


def test_leading_tail_testbed_exact_globals_and_reference_weights():
    # benchmarks/hierarchical_leading_tail.py: its 1-d quadrature of the globals' posterior
    # agrees with the benchmark's 2-d grid, and its wide reference draws are weighted so that
    # they estimate N(0, I) expectations without bias
    import torch

    tail = load_benchmark("hierarchical_leading_tail.py", "hierarchical_leading_tail_bench")
    y, sigma = tail.H.make_data(8)
    fine, grid = tail.exact_globals(y, sigma**2), tail.H.exact_moments(y, sigma)
    for k in ("mu", "log_tau"):
        assert abs(fine[f"exact_sd_{k}"] / grid[f"exact_sd_{k}"] - 1) < 0.002
        assert abs(fine[f"exact_mean_{k}"] - grid[f"exact_mean_{k}"]) < 0.002
    torch.manual_seed(0)
    x, w = tail.reference_draws(400_000, 2, 1.5)
    assert x.std() > 1.45  # drawn wide
    # E[w] = 1 and E[w x^2] = 1 under N(0, 1); se of these means below 0.005 here
    assert abs(float(w.mean()) - 1) < 0.01
    assert abs(float((w[:, None] * x**2).mean()) - 1) < 0.02
    x, w = tail.reference_draws(10, 2, 1.0)
    assert torch.equal(w, torch.ones(10))


def test_leading_tail_testbed_dreg_weights():
    # benchmarks/hierarchical_leading_tail.py --iw K: each draw's weight is K wbar^2, wbar the
    # self-normalized importance weights p / q within its group of K; where q is the target
    # every wbar is 1 / K
    import torch

    from pyro_kr.transforms import TriangularAffine

    tail = load_benchmark("hierarchical_leading_tail.py", "hierarchical_leading_tail_bench")
    identity = TriangularAffine(2)  # q = N(0, I)

    def standard(z):
        return torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)

    torch.manual_seed(0)
    x = torch.randn(8, 2)
    weights = tail.dreg_weights(identity, x, identity(x), standard, 4)
    torch.testing.assert_close(weights, torch.full((8,), 0.25))

    def shifted(z):  # target N((1, 0), I): log w = z_0 - 1/2
        return standard(z - torch.tensor([1.0, 0.0]))

    weights = tail.dreg_weights(identity, x, identity(x), shifted, 4)
    wbar = torch.softmax(x[:, 0].reshape(2, 4), -1)
    torch.testing.assert_close(weights, (4 * wbar**2).reshape(-1))


def test_leading_tail_testbed_polish_and_evidence():
    # benchmarks/hierarchical_leading_tail.py --polish: the whole model's log p(y) in the
    # testbed's convention agrees with a 2-d grid over (mu, log tau) (the groups integrated
    # out), and the L-BFGS polish on fixed Sobol draws takes an affine map to a Gaussian
    # target exactly (KL on fresh draws near zero)
    import math

    import torch

    from pyro_kr.transforms import TriangularAffine

    tail = load_benchmark("hierarchical_leading_tail.py", "hierarchical_leading_tail_bench")
    y, sigma = tail.H.make_data(8)
    y, s2 = y.double(), sigma.double() ** 2
    exact = tail.exact_globals(y, s2)
    mu = torch.linspace(-6, 8, 1401, dtype=torch.float64)
    lt = torch.linspace(-10, 5, 1501, dtype=torch.float64)
    m, t = torch.meshgrid(mu, lt, indexing="ij")
    log_joint = tail.log_posterior(y, s2, m, t) - 0.5 * len(y) * math.log(2 * math.pi)
    cell = float((mu[1] - mu[0]) * (lt[1] - lt[0]))
    grid = float(torch.logsumexp(log_joint.reshape(-1), 0)) + math.log(cell)
    assert abs(grid - exact["log_z_full"]) < 1e-3

    loc = torch.tensor([1.0, -2.0])
    tril = torch.tensor([[0.5, 0.0], [0.8, 2.0]])
    target = torch.distributions.MultivariateNormal(loc, scale_tril=tril)
    smap = TriangularAffine(2)  # starts at N(0, I)
    moments = dict(log_z_full=0.0, exact_sd_log_tau=0.5, exact_sd_mu=float(tril[1].norm()))
    torch.manual_seed(0)
    out = tail.polish(smap, list(smap.parameters()), 2, target.log_prob, 4096, 1.0, "rqmc", 0,
                      moments, iterations=200)
    assert out["sgd_kl"] > 0.5 and out["polish_kl"] < 1e-3
    with torch.no_grad():
        z = smap(torch.randn(100_000, 2))
    assert abs(float(z[:, 0].std()) / 0.5 - 1) < 0.02
    assert abs(float(z[:, 1].std()) / moments["exact_sd_mu"] - 1) < 0.02
