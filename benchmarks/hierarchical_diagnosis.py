"""Diagnosis of the hierarchical benchmark's normal model: what makes ``log tau`` too narrow.

Trains one guide on one variant of the eight-schools-style model of
``benchmarks/hierarchical.py`` (same data, exact reference, W2 of ``(mu, log tau)``) and prints
one JSON line per training seed with W2, the sd and mean of ``log tau`` and ``mu`` against the
exact values and ``-ELBO`` (8,000 particles). Variants: ``centered`` (the benchmark's model),
``noncentered`` (``theta = mu + tau z``), ``marginal`` (``theta`` integrated out: the exact
2-d posterior of the globals; its ``-ELBO - (-log Z)`` is ``KL(q || p)``). Guides: ``sparse``
(``AutoKR(structure="plates")``), ``dense`` (``AutoKR()``), both with ``order="model"`` (as
the runs in the docs were measured) unless ``--kw`` sets it, ``iaf``. Options: steps,
particles, step size, a step size decaying by ``--lrd`` over the run (``ClippedAdam``),
``--kw`` (JSON of AutoKR keyword arguments), ``--bias-draws K`` (the guide's own sd error of
``mu`` and ``log tau`` from ``K`` draws against the quadrature), ``--no-scale-slope`` (the
sparse map without its per-group log-scale slopes, as before 2026-12-06), ``--gradient path``
(``pyro_kr.TransportELBO(None, gradient="path")`` in place of ``Trace_ELBO``).
docs/hierarchical.md, "What limits N = 8", lists the runs, e.g.

    python benchmarks/hierarchical_diagnosis.py marginal dense --seeds 0 1 2 --lrd 0.1
    python benchmarks/hierarchical_diagnosis.py centered sparse --n 1000 --steps 1500
    python benchmarks/hierarchical_diagnosis.py centered sparse --n 1000 --steps 6000 \
        --lrd 0.01 --particles 8 --seeds 0 1 2 [--no-scale-slope] [--kw '{"map": "affine"}']
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoIAFNormal

sys.path.insert(0, str(Path(__file__).parent))
import hierarchical as H  # noqa: E402

import pyro_kr  # noqa: E402
from pyro_kr.guides import sparse  # noqa: E402


def noncentered(y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("groups", len(y)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(mu + tau * z, sigma), obs=y)


def marginal(y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("groups", len(y)):
        pyro.sample("y", dist.Normal(mu, (sigma**2 + tau**2).sqrt()), obs=y)


MODELS = {"centered": H.model, "noncentered": noncentered, "marginal": marginal}


def make_guide(name, model, kw):
    if name == "sparse":
        return pyro_kr.AutoKR(model, structure="plates", **{"order": "model", **kw})
    if name == "dense":
        return pyro_kr.AutoKR(model, **{"order": "model", **kw})
    if name == "iaf":
        return AutoIAFNormal(model)
    raise ValueError(f"guide must be sparse, dense or iaf, got {name!r}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("variant", choices=sorted(MODELS))
    p.add_argument("guide", choices=["sparse", "dense", "iaf"])
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--particles", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--kw", default="{}")
    p.add_argument("--lrd", type=float, default=1.0,
                   help="total step-size decay over the run (1: constant Adam)")
    p.add_argument("--bias-draws", type=int, default=0,
                   help="also give the sd of mu and log tau from this many guide draws against "
                        "the quadrature's exact sd (fields bias_sd_*; 0: off)")
    p.add_argument("--no-scale-slope", action="store_true",
                   help="ablation: the sparse map without its per-group log-scale slopes "
                        "(pyro_kr.guides.sparse.SCALE_SLOPE = False, the map before 2026-12-06)")
    p.add_argument("--gradient", choices=["reparam", "path"], default="reparam",
                   help="path: TransportELBO(None, gradient=\"path\") (sticking the landing)")
    a = p.parse_args()
    if a.no_scale_slope:
        sparse.SCALE_SLOPE = False
    torch.set_num_threads(1)
    y, sigma = H.make_data(a.n)
    model = MODELS[a.variant]
    ref_g, _ = H.reference(y, sigma, 4000)
    for seed in a.seeds:
        pyro.clear_param_store()
        torch.manual_seed(seed)
        guide = make_guide(a.guide, model, json.loads(a.kw))
        if a.gradient == "path":
            elbo = pyro_kr.TransportELBO(None, num_particles=a.particles,
                                         vectorize_particles=True, max_plate_nesting=1,
                                         gradient="path")
        else:
            elbo = pyro.infer.Trace_ELBO(num_particles=a.particles, vectorize_particles=True,
                                         max_plate_nesting=1)
        if a.lrd != 1:
            optim = pyro.optim.ClippedAdam({"lr": a.lr, "lrd": a.lrd ** (1 / a.steps)})
        else:
            optim = pyro.optim.Adam({"lr": a.lr})
        svi = pyro.infer.SVI(model, guide, optim, elbo)
        c0 = time.process_time()
        for _ in range(a.steps):
            svi.step(y, sigma)
        pred = pyro.infer.Predictive(model, guide=guide, num_samples=4000, parallel=True,
                                     return_sites=["mu", "tau"])
        with torch.no_grad():
            out = pred(y, sigma)
            big = pyro.infer.Trace_ELBO(num_particles=8000, vectorize_particles=True,
                                        max_plate_nesting=1)
            neg_elbo = big.loss(model, guide, y, sigma)
        g = np.stack([out["mu"].reshape(-1).numpy(), out["tau"].reshape(-1).log().numpy()], 1)
        row = dict(variant=a.variant, guide=a.guide, kw=a.kw, gradient=a.gradient,
                   scale_slope=not a.no_scale_slope,
                   n=a.n, seed=seed, steps=a.steps,
                   lr=a.lr, lrd=a.lrd, particles=a.particles,
                   w2=H.w2_2d(g[:1000], ref_g[:1000]),
                   sd_lt=float(g[:, 1].std()), ref_sd_lt=float(ref_g[:, 1].std()),
                   mean_lt=float(g[:, 1].mean()), ref_mean_lt=float(ref_g[:, 1].mean()),
                   sd_mu=float(g[:, 0].std()), ref_sd_mu=float(ref_g[:, 0].std()),
                   negelbo=neg_elbo, cpu=time.process_time() - c0)
        if a.bias_draws:  # every variant has the same posterior of (mu, tau)
            exact = H.exact_moments(y, sigma)
            with torch.no_grad():
                big = pyro.infer.Predictive(model, guide=guide, num_samples=a.bias_draws,
                                            parallel=True, return_sites=["mu", "tau"])(y, sigma)
            row["bias_sd_mu"] = float(big["mu"].std() / exact["exact_sd_mu"] - 1)
            row["bias_sd_lt"] = float(big["tau"].log().std() / exact["exact_sd_log_tau"] - 1)
        print(json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v
                          for k, v in row.items()}), flush=True)


if __name__ == "__main__":
    main()
