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
learning rate (stated in the JSON).

Run: ``OMP_NUM_THREADS=1 nice -n 10 python benchmarks/hierarchical.py`` (``--smoke`` for a
tiny run). Writes ``benchmarks/results/hierarchical.json`` and ``bench-out/hierarchical.png``.
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
OUT = Path("bench-out")


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


def reference(y, sigma, num: int, seed: int = 0, grid: int = 400):
    """Exact draws of ``(mu, log tau)`` and ``theta`` by quadrature on a 2-d grid."""
    y, s2 = y.double().numpy(), sigma.double().numpy() ** 2
    lt = np.linspace(-8.0, 3.5, grid)
    se = math.sqrt(1.0 / np.sum(1.0 / (s2 + 1.0)))
    mu = np.linspace(y.mean() - 12 * se - 2, y.mean() + 12 * se + 2, grid)
    m, t = np.meshgrid(mu, np.exp(lt), indexing="ij")
    var = s2[None, None, :] + t[..., None] ** 2
    ll = -0.5 * (np.log(var) + (y - m[..., None]) ** 2 / var).sum(-1)
    lp = ll - 0.5 * m**2 / 25 + np.log(2 / (math.pi * 5 * (1 + (t / 5) ** 2))) + np.log(t)
    w = np.exp(lp - lp.max()).ravel()
    w /= w.sum()
    rng = np.random.default_rng(seed)
    cells = rng.choice(w.size, size=num, p=w)
    i, j = np.unravel_index(cells, m.shape)
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


def make_guide(name: str):
    if name == "autokr_sparse":
        return pyro_kr.AutoKR(model, structure="plates")
    if name == "autokr_sparse_affine":
        return pyro_kr.AutoKR(model, map="affine", structure="plates")
    if name == "autokr_dense":
        return pyro_kr.AutoKR(model)
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


def run_one(name, n, steps, particles, lr, evaluate, seed=0, subsample=None):
    y, sigma = make_data(n)
    pyro.clear_param_store()
    torch.manual_seed(seed)
    guide = make_guide(name)
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": lr}), elbo)
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
    if failed:
        row["failed"] = failed
        return row
    if subsample is not None:
        row["subsample"] = subsample
    if not evaluate:
        return row
    ref_g, ref_t = reference(y, sigma, 4000)
    g, t = draws_of(guide, y, sigma, 4000)
    row["w2_globals"] = w2_2d(g[:1000], ref_g[:1000])
    row["sd_err_mu"] = float(abs(g[:, 0].std() / ref_g[:, 0].std() - 1))
    row["sd_err_log_tau"] = float(abs(g[:, 1].std() / ref_g[:, 1].std() - 1))
    row["mean_local_w2"] = float(w2_1d(t, ref_t).mean())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row["khat"] = float(psis(guide, model, y, sigma, num_samples=4000).khat)
    # noise floor: two independent reference sets
    ref2_g, ref2_t = reference(y, sigma, 4000, seed=1)
    row["floor_w2_globals"] = w2_2d(ref2_g[:1000], ref_g[:1000])
    row["floor_local_w2"] = float(w2_1d(ref2_t, ref_t).mean())
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--particles", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--groups", type=int, nargs="*", default=[8, 100, 1000])
    p.add_argument("--timing-groups", type=int, nargs="*", default=[10000])
    p.add_argument("--dense-max-groups", type=int, default=100,
                   help="accuracy rows of autokr_dense only up to this N (N = 1,000 costs about "
                        "6 s/step: 1 hour for 600 steps on this machine)")
    p.add_argument("--timing-steps", type=int, default=20)
    p.add_argument("--timing-repeats", type=int, default=1)
    p.add_argument("--subsample", type=int, default=None,
                   help="also time the sparse guides with plate subsampling of this size")
    p.add_argument("--methods", nargs="+", default=[
        "autokr_sparse", "autokr_sparse_affine", "autokr_dense", "autonormal", "lowrank_mvn",
        "structured", "iaf"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="training seeds (initialization, draws); data and reference fixed")
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("--plot", type=Path, default=OUT / "hierarchical.png")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.smoke:
        args.steps, args.groups, args.timing_groups, args.timing_steps = 20, [8], [100], 5
        args.output = OUT / "hierarchical_smoke.json"
    rows = []
    for n in args.groups:
        for m in args.methods:
            if m == "autokr_dense" and n > args.dense_max_groups:
                rows.append(run_one(m, n, args.timing_steps, args.particles, args.lr, False))
                rows[-1]["note"] = f"accuracy not run (N > {args.dense_max_groups})"
                print(json.dumps(rows[-1]), flush=True)
                continue
            for seed in args.seeds:
                rows.append(run_one(m, n, args.steps, args.particles, args.lr, True, seed))
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
    args.output.write_text(json.dumps({"rows": rows, "settings": vars(args) | {
        "output": str(args.output), "plot": str(args.plot)}}, indent=1))
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
