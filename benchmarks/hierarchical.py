"""Hierarchical benchmark: sparse vs dense AutoKR and Pyro's autoguides on a centered hierarchy.

Model (eight-schools style, centered): ``mu ~ N(0, 5)``, ``tau ~ HalfCauchy(5)``,
``theta_j ~ N(mu, tau)``, ``y_j ~ N(theta_j, sigma_j)`` with known ``sigma_j``, ``N`` groups,
data simulated with a fixed seed (``mu = 1``, ``tau = 1``, ``sigma_j`` in ``[0.5, 2]``).

Reference (exact, no MCMC): integrating the ``theta_j`` out gives
``p(mu, tau | y) ~ p(mu) p(tau) prod_j N(y_j | mu, sigma_j^2 + tau^2)``, tabulated on a
2-d grid over ``(mu, log tau)``; given ``(mu, tau)``, ``theta_j`` is Gaussian with a closed form.
Reference draws: grid cells drawn by their mass (jittered within the cell), then ``theta_j``.

Metrics: W2 of ``(mu, log tau)`` (POT ``ot.emd2`` on 1,000 draws of each), sd errors of
``mu`` and ``log tau`` (relative), the mean over groups of the 1-d W2 of ``theta_j``, PSIS
k-hat (4,000 draws), seconds per step. Every method gets the same steps, particles and
learning rate (stated in the JSON). ``--bias-draws K`` also scores the guide's sd of ``mu``
and ``log tau`` from ``K`` draws against the quadrature's exact sd (:func:`exact_moments`;
``bias_sd_*``, free of the 4,000 reference draws' noise). ``--order auto`` builds the
``autokr_*`` guides with the library's default order (scales first) instead of the model's
order of the stored rows before 2026-12-06 (:data:`MEASURED_ORDER`). ``--train-subsample B``
trains the sparse guides' accuracy rows with plate subsampling (``B`` groups per step); they
are scored on all groups through ``AutoKR.sample_posterior``, without k-hat (``psis`` refuses a
subsampled guide). ``--polish M`` follows the SGD of the ``autokr_*`` guides with
``pyro_kr.polish`` (L-BFGS on the KL of ``M`` fixed Sobol draws, at most
``--polish-iterations``; rows record ``polish_*`` and its seconds) before they are scored;
``--polish M1 M2 --polish-iterations K1 K2`` polishes in stages, on more points in the later
ones (rows add ``polish_stages``).

Run: ``OMP_NUM_THREADS=1 nice -n 10 python benchmarks/hierarchical.py`` (``--smoke`` for a
tiny run). Writes ``benchmarks/results/hierarchical.json`` and ``bench-out/hierarchical.png``.

Hierarchical logistic regression (``--logistic``; radon/election style): ``N = 1,000`` groups,
``20,000`` rows (20 per group), one covariate, group intercepts ``a_j`` and slopes ``b_j``
with centered priors ``a_j ~ N(mu_a, tau_a)``, ``b_j ~ N(mu_b, tau_b)``, data simulated with
numpy seed 0 (:func:`logistic_data`). Reference: PyMC NUTS on the non-centered twin, built once
with ``python benchmarks/hierarchical.py --groups --logistic-reference`` (4 chains x 2,500
draws after 500 tuning steps, every 5th draw kept; stored in
``bench-out/hierarchical_logistic_ref.npz`` with its R-hat / ESS summary). Globals
``(mu_a, mu_b, log tau_a, log tau_b)``; locals ``(a_j, b_j)``. Floor: chains 0-1 against
chains 2-3. ``python benchmarks/hierarchical.py --groups --logistic`` writes
``benchmarks/results/hierarchical_logistic.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import ot
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import (
    AutoIAFNormal,
    AutoLowRankMultivariateNormal,
    AutoNormal,
    AutoStructured,
)

import pyro_kr
from pyro_kr.diagnostics import psis

RESULTS = Path(__file__).parent / "results" / "hierarchical.json"
LOGISTIC_RESULTS = Path(__file__).parent / "results" / "hierarchical_logistic.json"
OUT = Path("bench-out")
MEASURED_ORDER = "model"
"""``AutoKR``'s ``order`` in every ``autokr_*`` guide here unless ``--order`` says otherwise: the
model's order, with which the stored results before 2026-12-06 were measured (the default
before ``order="auto"``, 2026-12-05, which puts the scales ``tau`` first). ``--order auto``
measures the library's default (rows record ``order``)."""


def make_data(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sigma = torch.linspace(0.5, 2.0, n)
    theta = 1.0 + 1.0 * torch.randn(n, generator=g)
    return theta + sigma * torch.randn(n, generator=g), sigma


def model(y, sigma, subsample_size=None):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("groups", len(y), subsample_size=subsample_size) as idx:
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, sigma[idx]), obs=y[idx])


def _log_marginal(y, s2, mu, lt):
    """Log density of ``(mu, log tau)`` given ``y`` (``theta`` integrated out) on a grid."""
    m, t = np.meshgrid(mu, np.exp(lt), indexing="ij")
    ll = np.zeros(m.shape)
    for k in range(0, len(y), 100):  # 100 groups at a time: memory grid^2 x 100
        var = s2[None, None, k : k + 100] + t[..., None] ** 2
        ll -= 0.5 * (np.log(var) + (y[k : k + 100] - m[..., None]) ** 2 / var).sum(-1)
    return ll - 0.5 * m**2 / 25 + np.log(2 / (math.pi * 5 * (1 + (t / 5) ** 2))) + np.log(t)


def posterior_grid(y, sigma, grid: int = 400):
    """The exact posterior of ``(mu, log tau)`` on a ``grid x grid`` grid zoomed onto its mass.

    A first pass over a wide box finds where the posterior has mass (cells above ``1e-12`` of
    the peak, two cells of margin each side); the second pass lays the cells over that box only.
    (A single wide pass puts cells 0.56 posterior sd apart in ``log tau`` at N = 1,000 and
    widens its sd by 1.2 %.)

    Returns ``(mu, log_tau, w)``: the grid's ``mu`` and ``log tau`` values (``grid`` each) and
    the normalized cell probabilities ``w (grid, grid)``.
    """
    y, s2 = y.double().numpy(), sigma.double().numpy() ** 2
    lt = np.linspace(-8.0, 3.5, grid)
    se = math.sqrt(1.0 / np.sum(1.0 / (s2 + 1.0)))
    mu = np.linspace(y.mean() - 12 * se - 2, y.mean() + 12 * se + 2, grid)
    lp = _log_marginal(y, s2, mu, lt)
    rows, cols = np.nonzero(lp > lp.max() + math.log(1e-12))
    i0, i1 = max(rows.min() - 2, 0), min(rows.max() + 2, grid - 1)
    j0, j1 = max(cols.min() - 2, 0), min(cols.max() + 2, grid - 1)
    mu, lt = np.linspace(mu[i0], mu[i1], grid), np.linspace(lt[j0], lt[j1], grid)
    lp = _log_marginal(y, s2, mu, lt)
    w = np.exp(lp - lp.max())
    return mu, lt, w / w.sum()


def exact_moments(y, sigma, grid: int = 400) -> dict:
    """Mean and sd of ``mu`` and ``log tau`` by quadrature on :func:`posterior_grid` (cell
    centres plus the within-cell uniform spread that :func:`reference`'s draws have)."""
    mu, lt, w = posterior_grid(y, sigma, grid)
    out = {}
    for k, axis, values in (("mu", 1, mu), ("log_tau", 0, lt)):
        p = w.sum(axis)
        mean = float((p * values).sum())
        var = float((p * (values - mean) ** 2).sum()) + (values[1] - values[0]) ** 2 / 12
        out[f"exact_mean_{k}"], out[f"exact_sd_{k}"] = mean, math.sqrt(var)
    return out


def reference(y, sigma, num: int, seed: int = 0, grid: int = 400):
    """Exact draws of ``(mu, log tau)`` and ``theta`` by quadrature on a 2-d grid.

    ``(mu, log tau)`` from :func:`posterior_grid` (a cell, then uniform within it), ``theta``
    from its Gaussian conditional in closed form.
    """
    mu, lt, w = posterior_grid(y, sigma, grid)
    y, s2 = y.double().numpy(), sigma.double().numpy() ** 2
    w = w.ravel()
    rng = np.random.default_rng(seed)
    cells = rng.choice(w.size, size=num, p=w)
    i, j = np.unravel_index(cells, (grid, grid))
    mu_d = mu[i] + (rng.random(num) - 0.5) * (mu[1] - mu[0])
    lt_d = lt[j] + (rng.random(num) - 0.5) * (lt[1] - lt[0])
    tau2 = np.exp(2 * lt_d)[:, None]
    prec = 1 / s2 + 1 / tau2
    mean = (y / s2 + mu_d[:, None] / tau2) / prec
    theta = mean + rng.standard_normal(mean.shape) / np.sqrt(prec)
    return np.stack([mu_d, lt_d], 1), theta


def w2_2d(a: np.ndarray, b: np.ndarray) -> float:
    cost = ot.dist(a, b)
    return float(math.sqrt(ot.emd2(ot.unif(len(a)), ot.unif(len(b)), cost)))


def w2_1d(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    qa, qb = np.sort(a, 0), np.sort(b, 0)
    return np.sqrt(((qa - qb) ** 2).mean(0))


# --- hierarchical logistic regression (radon/election style) ---------------------------------
LOGISTIC_REF = OUT / "hierarchical_logistic_ref.npz"
LOGISTIC_GLOBALS = ("mu_a", "mu_b", "log_tau_a", "log_tau_b")


def logistic_data(n: int = 1000, rows: int = 20000, seed: int = 0):
    """Simulated data: ``rows`` rows spread evenly over ``n`` groups, one covariate ``x``.

    True values: ``mu_a = 0.5``, ``tau_a = 0.8``, ``mu_b = -0.3``, ``tau_b = 0.5``;
    ``y ~ Bernoulli(sigmoid(a[g] + b[g] x))``. Returns numpy arrays ``(g, x, y)``.
    """
    rng = np.random.default_rng(seed)
    g = np.arange(rows) % n
    x = rng.standard_normal(rows)
    a = 0.5 + 0.8 * rng.standard_normal(n)
    b = -0.3 + 0.5 * rng.standard_normal(n)
    y = (rng.random(rows) < 1 / (1 + np.exp(-(a[g] + b[g] * x)))).astype("int64")
    return g, x, y


def logistic_model(g, x, y, n):
    """Centered Pyro model: ``mu ~ N(0, 2)``, ``tau ~ HalfNormal(1)``, ``a_j ~ N(mu_a, tau_a)``,
    ``b_j ~ N(mu_b, tau_b)`` in the plate ``groups``,
    ``y_r ~ Bernoulli(logits = a[g_r] + b[g_r] x_r)`` in the plate ``rows``."""
    mu_a = pyro.sample("mu_a", dist.Normal(0.0, 2.0))
    mu_b = pyro.sample("mu_b", dist.Normal(0.0, 2.0))
    tau_a = pyro.sample("tau_a", dist.HalfNormal(1.0))
    tau_b = pyro.sample("tau_b", dist.HalfNormal(1.0))
    with pyro.plate("groups", n):
        a = pyro.sample("a", dist.Normal(mu_a, tau_a))
        b = pyro.sample("b", dist.Normal(mu_b, tau_b))
    with pyro.plate("rows", len(y)):
        pyro.sample("y", dist.Bernoulli(logits=a[..., g] + b[..., g] * x), obs=y)


def logistic_reference(draws: int, tune: int, chains: int, thin: int = 1, seed: int = 0,
                       path: Path = LOGISTIC_REF) -> dict:
    """PyMC NUTS on the non-centered twin (``a = mu_a + tau_a z_a``), chains run one after the
    other in one process; writes every ``thin``-th draw (float32, ``(chains, draws // thin, .)``)
    and a summary of the unthinned chains (R-hat, bulk/tail ESS of the globals, worst R-hat and
    ESS over the 2N locals, divergences, CPU seconds)."""
    import arviz as az
    import pymc as pm

    g, x, y = logistic_data()
    n = int(g.max()) + 1
    with pm.Model():
        mu_a = pm.Normal("mu_a", 0, 2)
        mu_b = pm.Normal("mu_b", 0, 2)
        tau_a = pm.HalfNormal("tau_a", 1)
        tau_b = pm.HalfNormal("tau_b", 1)
        za = pm.Normal("za", 0, 1, shape=n)
        zb = pm.Normal("zb", 0, 1, shape=n)
        a = pm.Deterministic("a", mu_a + tau_a * za)
        b = pm.Deterministic("b", mu_b + tau_b * zb)
        pm.Bernoulli("y", logit_p=a[g] + b[g] * x, observed=y)
        cpu0 = time.process_time()
        idata = pm.sample(draws=draws, tune=tune, chains=chains, cores=1, random_seed=seed,
                          progressbar=False, compute_convergence_checks=False)
        cpu = time.process_time() - cpu0
    post = idata.posterior
    glob = np.stack([post["mu_a"].values, post["mu_b"].values, np.log(post["tau_a"].values),
                     np.log(post["tau_b"].values)], -1).astype("float32")
    local = np.concatenate([post["a"].values, post["b"].values], -1).astype("float32")
    gd = az.from_dict(posterior={k: glob[..., i] for i, k in enumerate(LOGISTIC_GLOBALS)})
    ld = az.from_dict(posterior={"ab": local})
    summary = {
        "draws": draws, "tune": tune, "chains": chains, "seed": seed, "cpu_seconds": cpu,
        "rhat": {k: float(az.rhat(gd)[k]) for k in LOGISTIC_GLOBALS},
        "ess_bulk": {k: float(az.ess(gd, method="bulk")[k]) for k in LOGISTIC_GLOBALS},
        "ess_tail": {k: float(az.ess(gd, method="tail")[k]) for k in LOGISTIC_GLOBALS},
        "locals_max_rhat": float(az.rhat(ld)["ab"].max()),
        "locals_min_ess_bulk": float(az.ess(ld, method="bulk")["ab"].min()),
        "divergences": int(idata.sample_stats["diverging"].sum()),
        "mean_leapfrog_steps": float(idata.sample_stats["n_steps"].mean()),
        "mean": {k: float(glob[..., i].mean()) for i, k in enumerate(LOGISTIC_GLOBALS)},
        "sd": {k: float(glob[..., i].std()) for i, k in enumerate(LOGISTIC_GLOBALS)},
    }
    summary["thin"] = thin
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, globals=glob[:, ::thin], locals=local[:, ::thin],
                        summary=json.dumps(summary))
    return summary


def load_logistic_reference(path: Path = LOGISTIC_REF):
    """``(globals (chains, draws, 4), locals (chains, draws, 2N), summary)`` of the stored
    NUTS reference; raises with the rebuild command if it is missing."""
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: rebuild it with `OMP_NUM_THREADS=1 python "
            "benchmarks/hierarchical.py --groups --logistic-reference` (about 10 CPU-min)")
    f = np.load(path)
    return f["globals"], f["locals"], json.loads(str(f["summary"]))


def make_logistic_guide(name: str):
    if name == "autokr_sparse":
        return pyro_kr.AutoKR(logistic_model, structure="plates", order=MEASURED_ORDER)
    if name == "autokr_sparse_affine":
        return pyro_kr.AutoKR(logistic_model, map="affine", structure="plates",
                              order=MEASURED_ORDER)
    if name == "autokr_dense":
        return pyro_kr.AutoKR(logistic_model, order=MEASURED_ORDER)
    if name == "autonormal":
        return AutoNormal(logistic_model)
    if name == "lowrank_mvn":
        return AutoLowRankMultivariateNormal(logistic_model)
    if name == "structured":
        glob = {k: "linear" for k in ("mu_a", "mu_b", "tau_a", "tau_b")}
        return AutoStructured(
            logistic_model,
            conditionals={k: "normal" for k in ("mu_a", "mu_b", "tau_a", "tau_b", "a", "b")},
            dependencies={"a": dict(glob), "b": dict(glob)},
        )
    if name == "iaf":
        return AutoIAFNormal(logistic_model)
    raise ValueError(name)


def logistic_guide_draws(guide, args, num: int, seed: int):
    """Guide draws: globals ``(num, 4)`` as ``(mu_a, mu_b, log tau_a, log tau_b)`` and locals
    ``(num, 2N)`` as ``(a, b)``."""
    pyro.set_rng_seed(seed)
    sites = ["mu_a", "mu_b", "tau_a", "tau_b", "a", "b"]
    pred = pyro.infer.Predictive(guide, num_samples=num, parallel=True, return_sites=sites)
    with torch.no_grad():
        out = pred(*args)
    n = args[-1]
    g = np.stack([out["mu_a"].reshape(num).numpy(), out["mu_b"].reshape(num).numpy(),
                  out["tau_a"].reshape(num).log().numpy(),
                  out["tau_b"].reshape(num).log().numpy()], 1)
    loc = np.concatenate([out["a"].reshape(num, n).numpy(), out["b"].reshape(num, n).numpy()], 1)
    return g, loc


def logistic_reference_sets(ref_g, ref_l):
    """Two independent halves of the thinned NUTS draws: chains ``0 .. C/2 - 1`` (the
    reference the guides are compared with) and the other chains (for the noise floor)."""
    half = ref_g.shape[0] // 2
    return ((ref_g[:half].reshape(-1, ref_g.shape[-1]), ref_l[:half].reshape(-1, ref_l.shape[-1])),
            (ref_g[half:].reshape(-1, ref_g.shape[-1]), ref_l[half:].reshape(-1, ref_l.shape[-1])))


def logistic_floor(ref_g, ref_l, size: int = 1000) -> dict:
    """Noise floor: the two halves of the NUTS chains against each other, ``size`` draws each
    (the guides are compared with ``size`` guide draws against the first half)."""
    (a_g, a_l), (b_g, b_l) = logistic_reference_sets(ref_g, ref_l)
    a_g, a_l, b_g, b_l = a_g[:size], a_l[:size], b_g[:size], b_l[:size]
    row = {"model": "logistic", "method": "floor (NUTS chains 0-1 vs 2-3)",
           "w2_globals": w2_2d(a_g, b_g), "mean_local_w2": float(w2_1d(a_l, b_l).mean())}
    for i, k in enumerate(LOGISTIC_GLOBALS):
        row[f"sd_err_{k}"] = float(abs(b_g[:, i].std() / a_g[:, i].std() - 1))
    return row


def run_logistic(name, steps, particles, lr, seed=0, evaluate=True, khat_draws=4000):
    """Train one guide on the hierarchical logistic regression; metrics against NUTS."""
    g, x, y = logistic_data()
    n = int(g.max()) + 1
    args = (torch.as_tensor(g), torch.as_tensor(x, dtype=torch.float32),
            torch.as_tensor(y, dtype=torch.float32), n)
    pyro.clear_param_store()
    torch.manual_seed(seed)
    guide = make_logistic_guide(name)
    svi = pyro.infer.SVI(logistic_model, guide, pyro.optim.Adam({"lr": lr}),
                         make_elbo(name, particles))
    svi.step(*args)  # setup outside the timing
    start, cpu0 = time.perf_counter(), time.process_time()
    failed, step = None, -1
    for step in range(steps - 1):
        try:
            loss = svi.step(*args)
        except (ValueError, RuntimeError) as exc:
            failed = f"step {step + 2}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            break
        if not math.isfinite(loss):
            failed = f"step {step + 2}: loss {loss}"
            break
    done = max(step + 1, 1)
    row = {"model": "logistic", "method": name, "groups": n, "rows": len(y), "steps": steps,
           "particles": particles, "lr": lr, "seed": seed,
           "seconds_per_step": (time.perf_counter() - start) / done,
           "cpu_seconds_per_step": (time.process_time() - cpu0) / done}
    if failed:
        row["failed"] = failed
        return row
    if not evaluate:
        return row
    row["final_loss"] = float(loss)
    ref_g, ref_l, _ = load_logistic_reference()
    (rg, rl), _ = logistic_reference_sets(ref_g, ref_l)
    gg, gl = logistic_guide_draws(guide, args, 4000, seed)
    row["w2_globals"] = w2_2d(gg[:1000], rg[:1000])
    for i, k in enumerate(LOGISTIC_GLOBALS):
        row[f"sd_err_{k}"] = float(abs(gg[:, i].std() / rg[:, i].std() - 1))
        row[f"mean_{k}"] = float(gg[:, i].mean())
    row["mean_local_w2"] = float(w2_1d(gl[:1000], rl[:1000]).mean())
    if khat_draws:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row["khat"] = float(psis(guide, logistic_model, *args, num_samples=khat_draws).khat)
    return row


def dense_monotone_parameters(d: int, depth: int = 2, num_bumps: int = 8) -> int:
    """Parameter count of the default dense ``AutoKR`` of dimension ``d``: ``depth`` monotone
    layers (MADE ``d -> h -> h -> (2 + 3K) d``, ``h = max(32, 4d)``) and the triangular
    affine layer."""
    h, out = max(32, 4 * d), (2 + 3 * num_bumps) * d
    layer = d * h + h + h * h + h + h * out + out
    return depth * layer + d * d + 2 * d


def run_logistic_table(args) -> None:
    """The logistic-regression rows (``--logistic``): every method, the floor, the reference's
    convergence summary; JSON to ``args.logistic_output`` and a table on stdout."""
    ref_g, ref_l, summary = load_logistic_reference()
    rows = [logistic_floor(ref_g, ref_l)]
    print(json.dumps(rows[-1]), flush=True)
    for m in args.methods:
        for seed in args.seeds:
            if m == "autokr_dense":
                row = {"model": "logistic", "method": m, "groups": 1000, "seed": seed,
                       "parameters": dense_monotone_parameters(2 * 1000 + 4),
                       "note": "not run: does not fit in memory (float32 weights, gradients and "
                               "Adam's two moments: 16 bytes per parameter)"}
            else:
                row = run_logistic(m, args.steps, args.particles, args.lr, seed)
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.logistic_output.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.logistic_output.write_text(json.dumps(
        {"rows": rows, "reference": summary, "settings": settings}, indent=1))
    cols = ["method", "seed", "cpu_seconds_per_step", "w2_globals", "sd_err_mu_a", "sd_err_mu_b",
            "sd_err_log_tau_a", "sd_err_log_tau_b", "mean_local_w2", "khat"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "-"))
                         for c in cols))


GRADIENT = "reparam"
"""The gradient estimator of the ``autokr_*`` guides (``--gradient``): ``"reparam"``, Pyro's
``Trace_ELBO`` (every stored row without a ``gradient`` field), or ``"path"``,
``pyro_kr.TransportELBO(None, gradient="path")`` (the same loss, sticking the landing). The
other guides always train with ``Trace_ELBO``."""


def make_elbo(name: str, particles: int):
    """The loss of guide ``name``: ``Trace_ELBO``, or the path-gradient ELBO for the
    ``autokr_*`` guides under ``--gradient path``."""
    if name.startswith("autokr") and GRADIENT == "path":
        return pyro_kr.TransportELBO(None, num_particles=particles, vectorize_particles=True,
                                     max_plate_nesting=1, gradient="path")
    return Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)


def set_order(order: str) -> None:
    """Use ``order`` for every ``autokr_*`` guide built from now on (``--order``)."""
    global MEASURED_ORDER
    MEASURED_ORDER = order


def make_guide(name: str):
    if name == "autokr_sparse":
        return pyro_kr.AutoKR(model, structure="plates", order=MEASURED_ORDER)
    if name == "autokr_sparse_affine":
        return pyro_kr.AutoKR(model, map="affine", structure="plates", order=MEASURED_ORDER)
    if name == "autokr_dense":
        return pyro_kr.AutoKR(model, order=MEASURED_ORDER)
    if name == "autonormal":
        return AutoNormal(model)
    if name == "lowrank_mvn":
        return AutoLowRankMultivariateNormal(model)
    if name == "structured":
        return AutoStructured(
            model,
            conditionals={"mu": "normal", "tau": "normal", "theta": "normal"},
            dependencies={"theta": {"mu": "linear", "tau": "linear"}},
        )
    if name == "iaf":
        return AutoIAFNormal(model)
    raise ValueError(name)


def draws_of(guide, y, sigma, num: int):
    pred = pyro.infer.Predictive(model, guide=guide, num_samples=num, parallel=True)
    with torch.no_grad():
        out = pred(y, sigma)
    g = np.stack([out["mu"].reshape(num).numpy(), out["tau"].reshape(num).log().numpy()], 1)
    return g, out["theta"].reshape(num, -1).numpy()


def kr_draws_of(guide, y, sigma, num: int):
    """As :func:`draws_of`, through ``AutoKR.sample_posterior`` (the packed map of all the
    groups): a guide trained with plate subsampling keeps the subsample in its plate, as
    Pyro's autoguides do, so ``Predictive`` of the full model cannot replay it."""
    with torch.no_grad():
        out = guide.sample_posterior(num, y, sigma)
    g = np.stack([out["mu"].reshape(num).numpy(), out["tau"].reshape(num).log().numpy()], 1)
    return g, out["theta"].reshape(num, -1).numpy()


def make_optim(lr: float, lrd: float, steps: int):
    """Adam at ``lr`` (``lrd = 1``), or Pyro's ``ClippedAdam`` with the step decaying by the
    factor ``lrd`` over ``steps`` (and its default gradient clipping at norm 10)."""
    if lrd == 1:
        return pyro.optim.Adam({"lr": lr})
    return pyro.optim.ClippedAdam({"lr": lr, "lrd": lrd ** (1 / steps)})


def run_one(name, n, steps, particles, lr, evaluate, seed=0, subsample=None, lrd=1.0,
            bias_draws=0, polish=(), polish_iterations=(2000,)):
    y, sigma = make_data(n)
    pyro.clear_param_store()
    torch.manual_seed(seed)
    guide = make_guide(name)
    svi = pyro.infer.SVI(model, guide, make_optim(lr, lrd, steps), make_elbo(name, particles))
    svi.step(y, sigma, subsample)  # setup outside the timing
    start = time.perf_counter()
    failed = None
    for step in range(steps - 1):
        try:
            loss = svi.step(y, sigma, subsample)
        except (ValueError, RuntimeError) as exc:  # NaN parameters (Pyro's validation)
            failed = f"step {step + 2}: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
            break
        if not math.isfinite(loss):
            failed = f"step {step + 2}: loss {loss}"
            break
    sec = (time.perf_counter() - start) / max(step + 1, 1)
    row = {"method": name, "groups": n, "steps": steps, "particles": particles, "lr": lr,
           "seed": seed, "seconds_per_step": sec}
    if name.startswith("autokr"):
        row["order"] = MEASURED_ORDER
        row["gradient"] = GRADIENT
    if lrd != 1:
        row["lrd"] = lrd
    if failed:
        row["failed"] = failed
        return row
    if polish and name.startswith("autokr"):
        stages = []
        for m, k in zip(polish, polish_iterations, strict=True):  # one polish per stage
            start = time.perf_counter()
            result = pyro_kr.polish(model, guide, y, sigma, num_particles=m, max_iter=k)
            stages.append({**vars(result), "particles": m, "max_iter": k,
                           "seconds": time.perf_counter() - start})
        last = stages[-1]
        row.update({f"polish_{k}": v for k, v in vars(result).items()},
                   polish_particles=last["particles"],
                   polish_seconds=sum(stage["seconds"] for stage in stages))
        if len(stages) > 1:
            row["polish_stages"] = stages
    if subsample is not None:
        row["subsample"] = subsample
    if not evaluate:
        return row
    ref_g, ref_t = reference(y, sigma, 4000)
    sample = draws_of if subsample is None else kr_draws_of
    g, t = sample(guide, y, sigma, 4000)
    row["w2_globals"] = w2_2d(g[:1000], ref_g[:1000])
    row["sd_err_mu"] = float(abs(g[:, 0].std() / ref_g[:, 0].std() - 1))
    row["sd_err_log_tau"] = float(abs(g[:, 1].std() / ref_g[:, 1].std() - 1))
    row["mean_local_w2"] = float(w2_1d(t, ref_t).mean())
    # where the globals' error sits (location or spread): guide and reference moments
    for i, k in enumerate(("mu", "log_tau")):
        row[f"mean_{k}"], row[f"sd_{k}"] = float(g[:, i].mean()), float(g[:, i].std())
        row[f"ref_mean_{k}"] = float(ref_g[:, i].mean())
        row[f"ref_sd_{k}"] = float(ref_g[:, i].std())
    if subsample is None:  # psis refuses a subsampled guide (it needs all groups' draws)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row["khat"] = float(psis(guide, model, y, sigma, num_samples=4000).khat)
    # noise floor: two independent reference sets
    ref2_g, ref2_t = reference(y, sigma, 4000, seed=1)
    row["floor_w2_globals"] = w2_2d(ref2_g[:1000], ref_g[:1000])
    row["floor_local_w2"] = float(w2_1d(ref2_t, ref_t).mean())
    if bias_draws:
        # the guide's own sd error, free of the reference's draw noise: bias_draws fresh draws
        # against the quadrature's sd (drawn last: the metrics above are unchanged)
        exact = exact_moments(y, sigma)
        # in chunks of 10,000: one call of 40,000 draws of the sparse monotone map at N = 1,000
        # peaked at 12 GB resident (its network runs per draw and group)
        chunks = [sample(guide, y, sigma, min(10000, bias_draws - start))[0]
                  for start in range(0, bias_draws, 10000)]
        big = np.concatenate(chunks)
        row["bias_draws"] = bias_draws
        for i, k in enumerate(("mu", "log_tau")):
            row[f"exact_sd_{k}"] = exact[f"exact_sd_{k}"]
            row[f"bias_sd_{k}"] = float(big[:, i].std() / exact[f"exact_sd_{k}"] - 1)
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--particles", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--lrd", type=float, default=1.0,
                   help="total decay of the step over the run (ClippedAdam; 1: constant Adam)")
    p.add_argument("--groups", type=int, nargs="*", default=[8, 100, 1000])
    p.add_argument("--timing-groups", type=int, nargs="*", default=[10000])
    p.add_argument("--dense-max-groups", type=int, default=100,
                   help="accuracy rows of autokr_dense only up to this N (N = 1,000 costs about "
                        "6 s/step: 1 hour for 600 steps on this machine)")
    p.add_argument("--timing-steps", type=int, default=20)
    p.add_argument("--timing-repeats", type=int, default=1)
    p.add_argument("--subsample", type=int, default=None,
                   help="also time the sparse guides with plate subsampling of this size")
    p.add_argument("--train-subsample", type=int, default=None,
                   help="train the accuracy rows with plate subsampling of this size (the "
                        "sparse autokr_* guides only; evaluated on all groups)")
    p.add_argument("--methods", nargs="+", default=[
        "autokr_sparse", "autokr_sparse_affine", "autokr_dense", "autonormal", "lowrank_mvn",
        "structured", "iaf"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="training seeds (initialization, draws); data and reference fixed")
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("--logistic", action="store_true",
                   help="run the hierarchical logistic regression (N = 1,000 groups, 20,000 rows) "
                        "with --methods against the stored NUTS reference; writes "
                        "--logistic-output")
    p.add_argument("--logistic-output", type=Path, default=LOGISTIC_RESULTS)
    p.add_argument("--logistic-reference", action="store_true",
                   help="(re)build the NUTS reference of the logistic regression "
                        f"({LOGISTIC_REF}) with --ref-chains/--ref-tune/--ref-draws/--ref-thin")
    p.add_argument("--ref-chains", type=int, default=4)
    p.add_argument("--ref-tune", type=int, default=500)
    p.add_argument("--ref-draws", type=int, default=2500)
    p.add_argument("--ref-thin", type=int, default=5)
    p.add_argument("--plot", type=Path, default=OUT / "hierarchical.png")
    p.add_argument("--bias-draws", type=int, default=0,
                   help="also score the guide's sd of mu and log tau from this many draws against "
                        "the quadrature's exact sd (row fields bias_sd_*; 0: off)")
    p.add_argument("--order", choices=["model", "auto"], default=MEASURED_ORDER,
                   help="AutoKR's order for the autokr_* guides (auto: the library's default, "
                        "scales first here; model: as the stored rows before 2026-12-06)")
    p.add_argument("--polish", type=int, nargs="+", default=[], metavar="M",
                   help="after SGD, pyro_kr.polish the autokr_* guides on M fixed Sobol draws "
                        "(several M: one polish after the other, e.g. 32768 65536)")
    p.add_argument("--polish-iterations", type=int, nargs="+", default=None, metavar="K",
                   help="the most L-BFGS iterations of each --polish stage (default 2000 each)")
    p.add_argument("--gradient", choices=["reparam", "path"], default="reparam",
                   help="the autokr_* guides' gradient estimator (path: TransportELBO(None, "
                        "gradient='path'), sticking the landing; reparam: Trace_ELBO)")
    args = p.parse_args()
    if args.train_subsample is not None and (
        args.train_subsample < 1 or any(not m.startswith("autokr_sparse") for m in args.methods)
    ):
        p.error("--train-subsample B needs B >= 1 and --methods among the sparse autokr_* "
                "guides (the others cannot subsample the groups)")
    if args.polish_iterations is None:
        args.polish_iterations = [2000] * len(args.polish)
    if len(args.polish_iterations) != len(args.polish):
        p.error(f"--polish-iterations needs one K per --polish stage ({len(args.polish)}), "
                f"got {len(args.polish_iterations)}")
    set_order(args.order)
    global GRADIENT
    GRADIENT = args.gradient
    torch.set_num_threads(1)
    if args.smoke:
        args.steps, args.groups, args.timing_groups, args.timing_steps = 20, [8], [100], 5
        args.output = OUT / "hierarchical_smoke.json"
    if args.logistic_reference:
        summary = logistic_reference(args.ref_draws, args.ref_tune, args.ref_chains,
                                     thin=args.ref_thin)
        print(json.dumps(summary), flush=True)
    if args.logistic:
        run_logistic_table(args)
    rows = []
    if not args.groups and not args.timing_groups:
        return
    for n in args.groups:
        for m in args.methods:
            if m == "autokr_dense" and n > args.dense_max_groups:
                rows.append(run_one(m, n, args.timing_steps, args.particles, args.lr, False))
                rows[-1]["note"] = f"accuracy not run (N > {args.dense_max_groups})"
                print(json.dumps(rows[-1]), flush=True)
                continue
            for seed in args.seeds:
                rows.append(run_one(m, n, args.steps, args.particles, args.lr, True, seed,
                                    lrd=args.lrd, bias_draws=args.bias_draws,
                                    subsample=args.train_subsample, polish=args.polish,
                                    polish_iterations=args.polish_iterations))
                print(json.dumps(rows[-1]), flush=True)
    # timing rows: --timing-repeats passes over all (N, method) pairs, interleaved, so that a
    # burst of load from other processes hits one repeat, not one method; tables take medians
    for rep in range(args.timing_repeats):
        for n in args.timing_groups:
            for m in args.methods:
                if m == "autokr_dense" and n > 1000:
                    continue  # d^2 = 1e8 parameters: does not fit
                if m == "iaf" and n > 1000:
                    continue  # MADE of width 3d + 1 = 30,007 over d = 10,002: no step finished
                rows.append(run_one(m, n, args.timing_steps, args.particles, args.lr, False))
                rows[-1]["repeat"] = rep
                print(json.dumps(rows[-1]), flush=True)
        if args.subsample:
            sizes = set(args.groups) | set(args.timing_groups)
            for n in sorted(n for n in sizes if n > args.subsample):
                for m in ("autokr_sparse", "autokr_sparse_affine"):
                    rows.append(run_one(m, n, args.timing_steps, args.particles, args.lr, False,
                                        subsample=args.subsample))
                    rows[-1]["repeat"] = rep
                    print(json.dumps(rows[-1]), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.output.write_text(json.dumps({"rows": rows, "settings": settings}, indent=1))
    cols = ["method", "groups", "seed", "subsample", "seconds_per_step", "w2_globals", "sd_err_mu",
            "sd_err_log_tau", "mean_local_w2", "khat"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "-"))
                         for c in cols))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        OUT.mkdir(exist_ok=True)
        fig, ax = plt.subplots(figsize=(5, 3.5))
        series = sorted({(r["method"], r.get("subsample")) for r in rows},
                        key=lambda k: (k[0], k[1] or 0))
        for m, sub in series:
            by_n: dict[int, list[float]] = {}
            for r in rows:
                if r["method"] == m and r.get("subsample") == sub:
                    by_n.setdefault(r["groups"], []).append(r["seconds_per_step"])
            pts = sorted((k, float(np.median(v))) for k, v in by_n.items())
            label = m if sub is None else f"{m} (subsample {sub})"
            ax.loglog(*zip(*pts, strict=True), "o--" if sub else "o-", label=label)
        ax.set_xlabel("groups N")
        ax.set_ylabel("seconds per step (median of repeats)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
    except ImportError:
        pass


if __name__ == "__main__":
    main()
