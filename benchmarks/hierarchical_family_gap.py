"""How far is the sparse map's family from the exact posterior, and is its narrow ``log tau``
the family's optimum or the optimizer's? (the centered model of ``benchmarks/hierarchical.py``)

Trains ``AutoKR(structure="plates", map=...)`` with the converged recipe of the benchmark
(``Trace_ELBO`` with 8 vectorized particles, ``ClippedAdam`` at 1e-2 decaying by ``--lrd``),
then minimizes a deterministic quadrature of the same objective with L-BFGS (strong Wolfe line
search): a product Gauss-Hermite rule, ``--nodes-globals`` nodes per reference coordinate of
the globals and ``--nodes-locals`` nodes shared by every group's coordinate (the objective is
the globals' term plus a sum of per-group terms, so each term gets an exact product rule).
The map is affine in a group's coordinate for ``map="affine"`` and the model's log density is
quadratic in ``theta``, so that direction is integrated exactly; the monotone map can bend
between the nodes and overfit the rule (measured: its random-draw sd drifts off while the
quadrature loss falls), so the default is ``affine``.

Reported per stage (after SVI, then every 25 L-BFGS iterations): the guide's own sd error of
``log tau`` and ``mu`` (``--draws`` draws against the quadrature's exact sd,
``hierarchical.exact_moments``) and ``KL(q || p)`` in nats from the quadrature,

    KL = E[log N(x) - log|det DT(x)| - log p(y, T(x))] + log p(y),

with ``log p(y)`` on a 2-d grid over ``(mu, log tau)`` (``theta`` integrated out exactly), and
the same KL from ``--mc-draws`` fresh random draws (with its standard error), which the
quadrature rule cannot have been fit to.
``--float64`` runs in double precision (float32 L-BFGS stops early on a loss of about 300 nats).

    OMP_NUM_THREADS=1 python benchmarks/hierarchical_family_gap.py --n 100 --seeds 0 1 2 --float64
    OMP_NUM_THREADS=1 python benchmarks/hierarchical_family_gap.py --n 100 --seeds 0 1 2 \
        --float64 --gradient path          # SVI with the path-derivative gradient
    python benchmarks/hierarchical_family_gap.py --gaussian-limit 8 100 1000
    python benchmarks/hierarchical_family_gap.py --smoke

``--gaussian-limit`` gives the best an affine map of the globals can do: the Gaussian closest in
reverse KL to the exact posterior of ``(mu, log tau)`` and its sd errors. ``--monotone-limit``
does the same for the sparse guide's own monotone map of the globals
(:func:`best_monotone_globals`):

    OMP_NUM_THREADS=1 python benchmarks/hierarchical_family_gap.py --monotone-limit 8

Writes ``benchmarks/results/hierarchical_family_gap.json`` (unless ``--smoke``) and a table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import torch

sys.path.insert(0, str(Path(__file__).parent))
import hierarchical as H  # noqa: E402

import pyro_kr  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "hierarchical_family_gap.json"


def log_evidence(y: torch.Tensor, sigma: torch.Tensor, grid: int = 800) -> float:
    """``log p(y)`` of the centered model: ``theta`` integrated out, then a ``grid x grid``
    rule over ``(mu, log tau)`` on the zoomed window of ``hierarchical.posterior_grid``."""
    mu_g, lt_g, _ = H.posterior_grid(y, sigma)
    y, s2 = y.double().numpy(), (sigma.double() ** 2).numpy()
    mu = np.linspace(mu_g.min(), mu_g.max(), grid)
    lt = np.linspace(lt_g.min(), lt_g.max(), grid)
    m, t = np.meshgrid(mu, lt, indexing="ij")
    f = -0.5 * np.log(2 * math.pi * 25) - 0.5 * m**2 / 25
    f = f + math.log(2 / (math.pi * 5)) - np.log1p(np.exp(2 * t) / 25) + t
    for k in range(0, len(y), 100):  # memory grid^2 x 100
        var = s2[None, None, k : k + 100] + np.exp(2 * t)[..., None]
        r2 = (y[k : k + 100] - m[..., None]) ** 2
        f = f - 0.5 * (np.log(2 * math.pi * var) + r2 / var).sum(-1)
    top = f.max()
    return float(top + np.log(np.exp(f - top).sum() * (mu[1] - mu[0]) * (lt[1] - lt[0])))


def best_gaussian_globals(y, sigma, nodes: int = 60) -> dict:
    """The Gaussian closest in reverse KL to the exact posterior of ``(mu, log tau)`` (``theta``
    integrated out): the best that an affine map of the globals can do, whatever the groups'
    maps. L-BFGS over the mean and Cholesky factor on a ``nodes x nodes`` Gauss-Hermite rule.
    Returns its sd errors against the quadrature's exact sds (``exact_moments``)."""
    exact = H.exact_moments(y, sigma)
    y, s2 = y.double(), sigma.double() ** 2

    def log_post(mu, lt):
        var = s2 + torch.exp(2 * lt)[..., None]
        ll = -0.5 * (torch.log(2 * math.pi * var) + (y - mu[..., None]) ** 2 / var).sum(-1)
        return ll - 0.5 * mu**2 / 25 - torch.log1p(torch.exp(2 * lt) / 25) + lt

    xg, wg = np.polynomial.hermite_e.hermegauss(nodes)
    a, b = np.meshgrid(xg, xg, indexing="ij")
    x = torch.as_tensor(np.stack([a.reshape(-1), b.reshape(-1)], -1))
    w = torch.as_tensor(np.outer(wg, wg).reshape(-1) / wg.sum() ** 2)
    loc = torch.tensor([exact["exact_mean_mu"], exact["exact_mean_log_tau"]], dtype=torch.float64,
                       requires_grad=True)
    raw = torch.tensor([math.log(exact["exact_sd_mu"]), 0.0, math.log(exact["exact_sd_log_tau"])],
                       dtype=torch.float64, requires_grad=True)

    def factor():
        zero = torch.zeros((), dtype=torch.float64)
        rows = [torch.stack([raw[0].exp(), zero]), torch.stack([raw[1], raw[2].exp()])]
        return torch.stack(rows)

    def loss():
        z = loc + x @ factor().T
        return -(raw[0] + raw[2]) - (w * log_post(z[:, 0], z[:, 1])).sum()

    opt = torch.optim.LBFGS([loc, raw], max_iter=500, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        value = loss()
        value.backward()
        return value

    for _ in range(5):
        opt.step(closure)
    cov = (factor() @ factor().T).detach()
    return {"sd_log_tau": float(cov[1, 1].sqrt() / exact["exact_sd_log_tau"] - 1),
            "sd_mu": float(cov[0, 0].sqrt() / exact["exact_sd_mu"] - 1)}


def best_monotone_globals(y, sigma, points: int = 16384, iterations: int = 1500,
                          depth: int = 2, num_bumps: int = 8, draws: int = 1_000_000,
                          adam_steps: int = 300) -> dict:
    """The closest map in the sparse guide's own family of the globals (``depth``
    :class:`~pyro_kr.MonotoneTriangular` layers then a triangular affine map, over
    ``(log tau, mu)``, the order ``AutoKR(order="auto")`` picks here) to the exact posterior of
    ``(mu, log tau)`` (``theta`` integrated out), in reverse KL: ``adam_steps`` Adam steps,
    then L-BFGS on ``points`` fixed Sobol reference draws
    (:func:`pyro_kr.polishing.reference_points`), in double precision. The best the sparse
    map's globals can do, whatever the groups' maps.
    Returns its sd errors against the quadrature's exact sds and its KL on ``draws`` fresh
    draws (``log p(y)``: :func:`log_evidence`)."""
    from pyro.distributions.transforms import ComposeTransformModule

    from pyro_kr import MonotoneTriangular, TriangularAffine
    from pyro_kr.polishing import reference_points

    exact = H.exact_moments(y, sigma)
    log_z = log_evidence(y, sigma)
    y, s2 = y.double(), sigma.double() ** 2

    def log_joint(z):  # z = (log tau, mu): the model's density of the globals, theta out
        lt, mu = z[..., 0], z[..., 1]
        var = s2 + torch.exp(2 * lt)[..., None]
        ll = -0.5 * (torch.log(2 * math.pi * var) + (y - mu[..., None]) ** 2 / var).sum(-1)
        prior = -0.5 * math.log(2 * math.pi * 25) - 0.5 * mu**2 / 25
        return ll + prior + math.log(2 / (math.pi * 5)) - torch.log1p(torch.exp(2 * lt) / 25) + lt

    torch.manual_seed(0)
    affine = TriangularAffine(2).double()
    affine.set_loc(torch.tensor([exact["exact_mean_log_tau"], exact["exact_mean_mu"]],
                                dtype=torch.float64))
    affine.set_scale_tril(0.5 * torch.eye(2, dtype=torch.float64))
    layers = [MonotoneTriangular(2, num_bumps=num_bumps).double() for _ in range(depth)]
    t = ComposeTransformModule([*layers, affine], cache_size=1)
    x = reference_points(points, 2)
    params = list(t.parameters())

    def loss():
        z = t(x)
        return (-t.log_abs_det_jacobian(x, z) - log_joint(z)).mean()

    adam = torch.optim.Adam(params, lr=1e-2)
    for _ in range(adam_steps):
        adam.zero_grad()
        loss().backward()
        adam.step()
    lbfgs = torch.optim.LBFGS(params, max_iter=iterations, history_size=50,
                              line_search_fn="strong_wolfe", tolerance_grad=1e-12,
                              tolerance_change=1e-13)

    def closure():
        lbfgs.zero_grad()
        value = loss()
        value.backward()
        return value

    lbfgs.step(closure)
    with torch.no_grad():
        xf = reference_points(draws, 2, sampler="mc", seed=1)
        zf = t(xf)
        normal = torch.distributions.Normal(0.0, 1.0).log_prob(xf).sum(-1)
        gap = normal - t.log_abs_det_jacobian(xf, zf) - log_joint(zf) + log_z
    return {"sd_log_tau": float(zf[:, 0].std() / exact["exact_sd_log_tau"] - 1),
            "sd_mu": float(zf[:, 1].std() / exact["exact_sd_mu"] - 1),
            "kl": float(gap.mean()), "kl_se": float(gap.std() / math.sqrt(draws)),
            "points": points, "iterations": lbfgs.state[params[0]]["n_iter"], "depth": depth,
            "num_bumps": num_bumps}


def quadrature(guide, nodes_globals: int, nodes_locals: int):
    """Points ``(M, d)`` and weights ``(M,)`` of the product rule (globals x shared local)."""
    ref = guide.get_transform()[-1].loc
    dg = sum(int(torch.Size(guide.unconstrained_shapes[n]).numel()) for n in ("mu", "tau"))
    xg, wg = np.polynomial.hermite_e.hermegauss(nodes_globals)
    xl, wl = np.polynomial.hermite_e.hermegauss(nodes_locals)
    axes = np.meshgrid(*([xg] * dg + [xl]), indexing="ij")
    w = np.prod(np.meshgrid(*([wg] * dg + [wl]), indexing="ij"), axis=0)
    x = torch.empty(w.size, guide.latent_dim, dtype=ref.dtype)
    for k in range(dg):
        x[:, k] = torch.as_tensor(axes[k].reshape(-1))
    x[:, dg:] = torch.as_tensor(axes[-1].reshape(-1))[:, None]
    w = torch.as_tensor(w.reshape(-1) / w.sum(), dtype=ref.dtype)
    return x, w


def neg_elbo_terms(guide, y, sigma, x):
    """``-log|det DT(x)| - log p(y, T(x))`` per point (the model's density written out)."""
    transform = guide.get_transform()
    z = transform(x)
    log_det = transform.log_abs_det_jacobian(x, z)
    sl = guide.site_slices()
    mu, u, theta = z[:, sl["mu"]].squeeze(-1), z[:, sl["tau"]].squeeze(-1), z[:, sl["theta"]]
    tau, s2 = u.exp(), sigma**2
    log_p = (
        -0.5 * math.log(2 * math.pi * 25) - 0.5 * mu**2 / 25
        + math.log(2 / (math.pi * 5)) - torch.log1p((tau / 5) ** 2) + u
        + torch.distributions.Normal(mu[:, None], tau[:, None]).log_prob(theta).sum(-1)
        - 0.5 * ((y - theta) ** 2 / s2 + torch.log(2 * math.pi * s2)).sum(-1)
    )
    return -log_det - log_p


def monte_carlo_kl(guide, y, sigma, log_z: float, draws: int, chunk: int = 2000) -> tuple:
    """``KL(q || p)`` and its standard error from ``draws`` random reference draws (a check
    of the quadrature's value: the rule cannot be overfit where the draws are fresh)."""
    torch.manual_seed(321)
    ref = guide.get_transform()[-1].loc
    terms = []
    with torch.no_grad():
        for start in range(0, draws, chunk):
            x = torch.randn(min(chunk, draws - start), guide.latent_dim, dtype=ref.dtype)
            log_base = -0.5 * (x**2).sum(-1) - 0.5 * guide.latent_dim * math.log(2 * math.pi)
            terms.append(log_base + neg_elbo_terms(guide, y, sigma, x))
    t = torch.cat(terms).double()
    return float(t.mean()) + log_z, float(t.std() / math.sqrt(len(t)))


def own_errors(guide, exact: dict, draws: int) -> dict:
    torch.manual_seed(123)
    with torch.no_grad():
        out = guide.sample_posterior(draws)
    lt, mu = out["tau"].reshape(-1).log(), out["mu"].reshape(-1)
    return {"own_sd_log_tau": float(lt.std() / exact["exact_sd_log_tau"] - 1),
            "own_sd_mu": float(mu.std() / exact["exact_sd_mu"] - 1)}


def run(n, seed, steps, lrd, map_kind, nodes_globals, nodes_locals, rounds, draws, float64,
        mc_draws=20000, gradient="reparam"):
    y, sigma = H.make_data(n)  # the benchmark's data (float32), cast below
    exact = H.exact_moments(y, sigma)
    log_z = log_evidence(y, sigma)
    dtype = torch.float64 if float64 else torch.float32
    y, sigma = y.to(dtype), sigma.to(dtype)
    pyro.clear_param_store()
    torch.manual_seed(seed)
    guide = pyro_kr.AutoKR(H.model, map=map_kind, structure="plates")
    if gradient == "path":  # the same loss, the path-derivative gradient
        elbo = pyro_kr.TransportELBO(None, num_particles=8, vectorize_particles=True,
                                     max_plate_nesting=1, gradient="path")
    else:
        elbo = pyro.infer.Trace_ELBO(num_particles=8, vectorize_particles=True,
                                     max_plate_nesting=1)
    svi = pyro.infer.SVI(H.model, guide, H.make_optim(1e-2, lrd, steps), elbo)
    start = time.perf_counter()
    for _ in range(steps):
        svi.step(y, sigma)
    x, w = quadrature(guide, nodes_globals, nodes_locals)
    entropy_ref = 0.5 * guide.latent_dim * (math.log(2 * math.pi) + 1)  # -E[log N(x)]

    def loss():
        return (w * neg_elbo_terms(guide, y, sigma, x)).sum()

    rows = []

    def record(stage, value):
        kl_mc, kl_mc_se = monte_carlo_kl(guide, y, sigma, log_z, mc_draws)
        rows.append({"n": n, "seed": seed, "map": map_kind, "steps": steps, "lrd": lrd,
                     "gradient": gradient,
                     "stage": stage, "kl": float(value) - entropy_ref + log_z,
                     "kl_mc": kl_mc, "kl_mc_se": kl_mc_se,
                     "nodes": [nodes_globals, nodes_locals], "float64": float64,
                     "minutes": (time.perf_counter() - start) / 60,
                     **own_errors(guide, exact, draws)})
        print(json.dumps(rows[-1]), flush=True)

    with torch.no_grad():
        record("svi", loss())
    params = [p for p in guide.parameters() if p.requires_grad]
    opt = torch.optim.LBFGS(params, lr=1, max_iter=25, history_size=50,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = loss()
        value.backward()
        return value

    for k in range(rounds):
        opt.step(closure)
        with torch.no_grad():
            record(f"lbfgs {25 * (k + 1)}", loss())
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--lrd", type=float, default=0.01)
    p.add_argument("--map", default="affine", choices=["affine", "monotone"])
    p.add_argument("--nodes-globals", type=int, default=16)
    p.add_argument("--nodes-locals", type=int, default=8)
    p.add_argument("--rounds", type=int, default=12, help="L-BFGS rounds of 25 iterations")
    p.add_argument("--draws", type=int, default=40000)
    p.add_argument("--mc-draws", type=int, default=20000,
                   help="random draws of the Monte Carlo check of the quadrature's KL")
    p.add_argument("--float64", action="store_true")
    p.add_argument("--gradient", choices=["reparam", "path"], default="reparam",
                   help="SVI's gradient: Trace_ELBO's (reparam) or TransportELBO(None, "
                        "gradient='path') (the path derivative); rows without a gradient "
                        "field are reparam")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--gaussian-limit", type=int, nargs="+", metavar="N",
                   help="only print the sd errors of the best Gaussian of the globals' exact "
                   "posterior (the affine map's limit) at these N, and exit")
    p.add_argument("--monotone-limit", type=int, nargs="+", metavar="N",
                   help="only print the sd errors and KL of the closest map in the sparse "
                   "guide's monotone family of the globals to their exact posterior at these "
                   "N (best_monotone_globals), and exit")
    p.add_argument("--smoke", action="store_true", help="N = 8, 50 steps, 1 round, no file")
    a = p.parse_args()
    if a.monotone_limit:
        for n in a.monotone_limit:
            y, sigma = H.make_data(n)
            print(json.dumps({"n": n, "best_monotone_globals": best_monotone_globals(y, sigma)}))
        return
    if a.gaussian_limit:
        for n in a.gaussian_limit:
            y, sigma = H.make_data(n)
            print(json.dumps({"n": n, "best_gaussian_globals": best_gaussian_globals(y, sigma)}))
        return
    if a.smoke:
        a.n, a.steps, a.rounds, a.draws, a.nodes_globals, a.nodes_locals = 8, 50, 1, 2000, 6, 4
        a.mc_draws = 2000
    torch.set_num_threads(1)
    rows = []
    for seed in a.seeds:
        rows += run(a.n, seed, a.steps, a.lrd, a.map, a.nodes_globals, a.nodes_locals,
                    a.rounds, a.draws, a.float64, a.mc_draws, a.gradient)
    print(f"\n{'seed':>4} {'stage':<11} {'KL nats':>8} {'KL MC (se)':>17} {'own sd log tau':>15} "
          f"{'own sd mu':>10}")
    for r in rows:
        mc = f"{r['kl_mc']:.4f} ({r['kl_mc_se']:.4f})"
        print(f"{r['seed']:>4} {r['stage']:<11} {r['kl']:>8.4f} {mc:>17} "
              f"{r['own_sd_log_tau']:>15.4f} {r['own_sd_mu']:>10.4f}")
    if not a.smoke:
        old = json.loads(a.out.read_text()) if a.out.exists() else []
        a.out.write_text(json.dumps(old + rows, indent=1) + "\n")
        print(f"appended {len(rows)} rows to {a.out}")


if __name__ == "__main__":
    main()
