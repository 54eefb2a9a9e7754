"""Why the leading global's spread comes out narrow: SGD on the exact posterior of the globals.

The hierarchical benchmark's normal model at N = 8 (``benchmarks/hierarchical.py``) with the
groups integrated out has the exact 2-d posterior ``p(mu, log tau | y)`` in closed form. This
script fits the library's dense map of two globals to it (two
:class:`~pyro_kr.MonotoneTriangular` layers and a :class:`~pyro_kr.TriangularAffine`, as
``AutoKR`` builds it, starting at scale ``0.1``) by the reverse KL with the path gradient
(the score of :func:`pyro_kr.transforms.score.log_density_score`), Adam at 1e-2 decaying 100x
over the run and gradient clipping at norm 10, as the benchmark's converged recipe, and reports
the map's own sd errors of ``log tau`` and ``mu`` (200,000 draws against the exact sd: the
closed-form marginal of ``log tau`` on a fine grid, ``mu | log tau`` Gaussian). Options:

* ``--order tau|mu``: which global leads the KR order (``AutoKR``'s ``order="auto"`` puts the
  scale ``tau`` first);
* ``--particles``, ``--steps``, ``--seeds``;
* ``--sampler rqmc``: scrambled Sobol reference draws instead of Monte Carlo;
* ``--reference-scale s``: draw the reference ``x ~ N(0, s^2 I)`` and weight each draw's
  gradient by ``N(x; 0, I) / N(x; 0, s^2 I)`` (importance sampling: the same expected gradient,
  more draws in the reference's tails);
* ``--full``: the same loop on the whole centered model (the 8 groups' ``theta`` not
  integrated out) with the library's sparse ``AutoKR`` in its default order; only the
  globals' reference coordinates are drawn wide under ``--reference-scale``;
* ``--full --iw K``: the importance-weighted bound of each ``K`` consecutive particles in
  place of the ELBO, with its doubly reparameterized gradient (each particle's path gradient
  weighted by ``K wbar_k^2``, ``wbar`` the self-normalized weights ``p(y, z_k) / q(z_k)`` of
  its group; Tucker, Lawson, Gu and Maddison 2019), whose optimum moves from the mode-seeking
  reverse KL towards the mass-covering ``chi^2`` as ``K`` grows;
* ``--full --polish M``: after SGD, L-BFGS (at most ``--polish-iterations``) on the
  sample-average KL of ``M`` fixed reference draws (a deterministic objective: the sample
  average approximation of Burroni, Domke and Sheldon 2024, and Giordano, Ingram and
  Broderick's DADVI), reporting the KL on 40,000 fresh draws before and after (``KL =
  E_q[log q - log p(y, z)] + log p(y)``, ``log p(y)`` by quadrature) and the fixed draws'
  own KL (below the fresh one where the map fits the sample); with ``--reference-scale s``
  the fixed draws' globals are drawn wide and weighted, with ``--polish-sampler rqmc`` they
  are scrambled Sobol points;
* ``--family-optimum``: instead of SGD, the reverse-KL optimum of the 1-d map family for the
  exact marginal of ``log tau`` (Gauss-Hermite quadrature, Adam then L-BFGS, double precision).

Rows (one per seed, with the command) are appended to ``results/hierarchical_leading_tail.json``
(``--output``) and printed as a table. docs/hierarchical.md, "N = 8: the leading global's
tail", lists the runs, e.g.

    OMP_NUM_THREADS=1 python benchmarks/hierarchical_leading_tail.py --order tau --seeds 0 1 2
    OMP_NUM_THREADS=1 python benchmarks/hierarchical_leading_tail.py --reference-scale 1.5
    OMP_NUM_THREADS=1 python benchmarks/hierarchical_leading_tail.py --family-optimum
    OMP_NUM_THREADS=1 python benchmarks/hierarchical_leading_tail.py --full --iw 8 --seeds 0 1 2
    OMP_NUM_THREADS=1 python benchmarks/hierarchical_leading_tail.py --full --polish 32768
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
from pyro.distributions.torch_transform import ComposeTransformModule

sys.path.insert(0, str(Path(__file__).parent))
import hierarchical as H  # noqa: E402

import pyro_kr  # noqa: E402
from pyro_kr.transforms import MonotoneTriangular, TriangularAffine  # noqa: E402
from pyro_kr.transforms.score import log_density_score  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "hierarchical_leading_tail.json"
GROUPS = 8
OPTIMUM_ADAM_STEPS = 4000  # before L-BFGS, for --family-optimum
POLISH_ITERATIONS = 2000  # L-BFGS iterations of --polish (default of --polish-iterations)


def log_posterior(y: torch.Tensor, s2: torch.Tensor, mu: torch.Tensor, lt: torch.Tensor):
    """``log p(mu, log tau | y)`` up to a constant, the groups integrated out."""
    v = s2 + (2 * lt).exp()[..., None]
    lik = -0.5 * v.log().sum(-1) - 0.5 * ((y - mu[..., None]) ** 2 / v).sum(-1)
    return lik - 0.5 * mu**2 / 25 - (1 + (lt.exp() / 5) ** 2).log() + lt


def log_marginal_log_tau(y: torch.Tensor, s2: torch.Tensor, lt: torch.Tensor):
    """``log p(log tau | y)`` up to a constant (``mu`` integrated out in closed form)."""
    v = s2 + (2 * lt).exp()[..., None]
    prec = 1 / 25 + (1 / v).sum(-1)
    b = (y / v).sum(-1)
    lik = -0.5 * v.log().sum(-1) - 0.5 * (y**2 / v).sum(-1) + 0.5 * b**2 / prec
    return lik - 0.5 * (25 * prec).log() - (1 + (lt.exp() / 5) ** 2).log() + lt


def exact_globals(y: torch.Tensor, s2: torch.Tensor) -> dict:
    """Exact mean and sd of ``log tau`` and ``mu``, by quadrature of the closed-form marginal
    of ``log tau`` on a fine 1-d grid (``mu | log tau`` is Gaussian), double precision."""
    y, s2 = y.double(), s2.double()
    lt = torch.linspace(-10, 5, 200_001, dtype=torch.float64)
    lp = log_marginal_log_tau(y, s2, lt)
    w = (lp - lp.max()).exp()
    w = w / w.sum()
    v = s2 + (2 * lt).exp()[:, None]
    prec = 1 / 25 + (1 / v).sum(-1)
    m = (y / v).sum(-1) / prec  # mean of mu given log tau
    mean_lt, mean_mu = (w * lt).sum(), (w * m).sum()
    sd_lt = ((w * (lt - mean_lt) ** 2).sum()).sqrt()
    sd_mu = ((w * (1 / prec + (m - mean_mu) ** 2)).sum()).sqrt()
    log_z = torch.logsumexp(lp, 0) + math.log(float(lt[1] - lt[0]))
    # the whole model's log p(y) in the convention of full_model's log density (the groups
    # and mu integrated out: mu's Gaussian integral and the groups' normal constants)
    log_z_full = log_z + 0.5 * math.log(25 * 2 * math.pi) - 0.5 * len(y) * math.log(2 * math.pi)
    return dict(exact_mean_log_tau=float(mean_lt), exact_sd_log_tau=float(sd_lt),
                exact_mean_mu=float(mean_mu), exact_sd_mu=float(sd_mu), log_z=float(log_z),
                log_z_full=float(log_z_full))


def make_map(dim: int, loc: torch.Tensor) -> ComposeTransformModule:
    """``AutoKR``'s dense map of ``dim`` coordinates: two monotone layers, then affine."""
    affine = TriangularAffine(dim).to(loc)
    affine.set_loc(loc)
    affine.set_scale_tril(torch.eye(dim).to(loc) * 0.1)
    layers = [MonotoneTriangular(dim).to(loc) for _ in range(2)]
    return ComposeTransformModule([*layers, affine])


def reference_draws(num: int, dim: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` draws ``x ~ N(0, scale^2 I_dim)`` and their weights ``N(x; 0, I) / N(x; 0,
    scale^2 I)``, so that ``mean(weight * f(x))`` estimates ``E_{N(0, I)} f`` without bias."""
    x = torch.randn(num, dim) * scale
    log_weight = (0.5 * (x / scale) ** 2 - 0.5 * x**2).sum(-1) + dim * math.log(scale)
    return x, log_weight.exp()


def path_step(optim, params, z, score_q, logp, weight) -> None:
    """One step on the path gradient of ``KL(q || p)``, ``mean(weight (score_q - score_p) .
    dz/dphi)``, for draws ``z (n, d)`` with graph to the parameters and their scores under
    ``q``; per-parameter gradient clipping at norm 10 (as Pyro's ``ClippedAdam``)."""
    zd = z.detach().requires_grad_(True)
    (score_p,) = torch.autograd.grad(logp(zd).sum(), zd)
    optim.zero_grad()
    ((weight[:, None] * (score_q - score_p)).detach() * z).sum().div(len(z)).backward()
    for p in params:
        torch.nn.utils.clip_grad_norm_([p], 10.0)
    optim.step()


def dreg_weights(smap, x, z, logp, k: int) -> torch.Tensor:
    """Per-draw weights ``k * w_i^2`` (``w`` self-normalized importance weights
    ``p(y, z) / q(z)`` within each group of ``k`` consecutive draws), which turn the path
    gradient of the ELBO into the doubly reparameterized gradient of the importance-weighted
    bound ``E log (1/k) sum_i p(y, z_i) / q(z_i)`` (Tucker, Lawson, Gu and Maddison 2019)."""
    with torch.no_grad():
        zd = z.detach()
        log_q = (torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)
                 - smap.log_abs_det_jacobian(x, zd))
        log_w = (logp(zd) - log_q).reshape(-1, k)
        w = torch.softmax(log_w, -1)
        return (k * w**2).reshape(-1)


def sgd(a, seed: int, y, s2, exact: dict) -> dict:
    first_tau = a.order == "tau"

    def logp(z):
        mu, lt = (z[..., 1], z[..., 0]) if first_tau else (z[..., 0], z[..., 1])
        return log_posterior(y, s2, mu, lt)

    torch.manual_seed(seed)
    start = torch.tensor([exact["exact_mean_log_tau"], exact["exact_mean_mu"]])
    T = make_map(2, start if first_tau else start.flip(0))
    params = list(T.parameters())
    optim = torch.optim.Adam(params, lr=1e-2)
    decay = torch.optim.lr_scheduler.LambdaLR(optim, lambda k: 0.01 ** (k / a.steps))
    sobol = torch.quasirandom.SobolEngine(2, scramble=True, seed=seed)
    s = a.reference_scale
    for _ in range(a.steps):
        if a.sampler == "rqmc":
            x = torch.special.ndtri(sobol.draw(a.particles).clamp(1e-7, 1 - 1e-7))
            weight = torch.ones(a.particles)
        else:
            x, weight = reference_draws(a.particles, 2, s)
        path_step(optim, params, *log_density_score(T, x), logp, weight)
        decay.step()
    with torch.no_grad():
        z = T(torch.randn(200_000, 2))
    mu, lt = (z[:, 1], z[:, 0]) if first_tau else (z[:, 0], z[:, 1])
    return dict(own_sd_error_log_tau=float(lt.std() / exact["exact_sd_log_tau"] - 1),
                own_sd_error_mu=float(mu.std() / exact["exact_sd_mu"] - 1))


def full_model(a, seed: int, y, sigma, exact: dict) -> dict:
    """The same loop on the whole centered model (the groups not integrated out): the
    library's sparse ``AutoKR`` (``structure="plates"``, default order: ``tau``, ``mu``, then
    the groups), only the globals' reference coordinates drawn wide."""
    pyro.clear_param_store()
    torch.manual_seed(seed)
    guide = pyro_kr.AutoKR(H.model, structure="plates")
    guide(y, sigma)  # set up
    if guide.order[:2] != ["tau", "mu"]:
        raise RuntimeError(f"expected the order tau, mu, theta; got {guide.order}")
    smap, d = guide.get_transform(), guide.latent_dim

    def logp(z):  # log p(y, z) in the unconstrained coordinates (log tau, mu, theta)
        lt, mu, theta = z[..., 0], z[..., 1], z[..., 2:]
        tau = lt.exp()
        out = -0.5 * mu**2 / 25 - (1 + (tau / 5) ** 2).log() + lt
        normal = torch.distributions.Normal
        out = out + normal(mu[..., None], tau[..., None]).log_prob(theta).sum(-1)
        return out + normal(theta, sigma).log_prob(y).sum(-1)

    params = list(guide.parameters())
    optim = torch.optim.Adam(params, lr=1e-2)
    decay = torch.optim.lr_scheduler.LambdaLR(optim, lambda k: 0.01 ** (k / a.steps))
    for _ in range(a.steps):
        x_g, weight = reference_draws(a.particles, 2, a.reference_scale)
        x = torch.cat([x_g, torch.randn(a.particles, d - 2)], -1)
        z, score_q = smap.log_density_score(x)
        if a.iw > 1:
            weight = weight * dreg_weights(smap, x, z, logp, a.iw)
        path_step(optim, params, z, score_q, logp, weight)
        decay.step()
    out = {}
    if a.polish:
        out = polish(smap, params, d, logp, a.polish, a.reference_scale, a.polish_sampler,
                     seed, exact, a.polish_iterations)
    with torch.no_grad():
        z = smap(torch.randn(40_000, d))
    return dict(own_sd_error_log_tau=float(z[:, 0].std() / exact["exact_sd_log_tau"] - 1),
                own_sd_error_mu=float(z[:, 1].std() / exact["exact_sd_mu"] - 1), **out)


def fresh_kl(smap, d: int, logp, log_z: float, num: int = 40_000,
             dtype: torch.dtype = torch.float32) -> float:
    """``KL(q || p) = E_q[log q - log p(y, z)] + log p(y)`` on ``num`` fresh draws."""
    with torch.no_grad():
        x = torch.randn(num, d, dtype=dtype)
        z = smap(x)
        log_q = (torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)
                 - smap.log_abs_det_jacobian(x, z))
        return float((log_q - logp(z)).mean()) + log_z


def polish(smap, params, d: int, logp, num: int, scale: float, sampler: str, seed: int,
           exact: dict, iterations: int = POLISH_ITERATIONS) -> dict:
    """After SGD: L-BFGS on the sample-average KL of ``num`` fixed reference draws (a
    deterministic objective, so the optimizer can settle where SGD's noise cannot; the
    globals' coordinates drawn at ``scale`` and weighted as in :func:`reference_draws`),
    reporting the KL on fresh draws before and after and the own sd errors before."""
    with torch.no_grad():
        z = smap(torch.randn(40_000, d))
    before = dict(sgd_own_sd_error_log_tau=float(z[:, 0].std() / exact["exact_sd_log_tau"] - 1),
                  sgd_own_sd_error_mu=float(z[:, 1].std() / exact["exact_sd_mu"] - 1),
                  sgd_kl=fresh_kl(smap, d, logp, exact["log_z_full"]))
    if sampler == "rqmc":  # scrambled Sobol points pushed through the normal quantile
        sobol = torch.quasirandom.SobolEngine(d, scramble=True, seed=seed)
        x = torch.special.ndtri(sobol.draw(num, dtype=torch.float64).clamp(1e-10, 1 - 1e-10))
        weight = torch.ones(num, dtype=torch.float64)
    else:
        x_g, weight = reference_draws(num, 2, scale)
        x = torch.cat([x_g, torch.randn(num, d - 2)], -1).double()
        weight = weight.double()
    log_ref = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(-1)
    dtype = params[0].dtype
    smap.double()  # in double precision: in single, L-BFGS can stop early on rounding

    def closure():
        lbfgs.zero_grad()
        z = smap(x)
        value = (weight * (log_ref - smap.log_abs_det_jacobian(x, z) - logp(z))).mean()
        value.backward()
        return value

    iterations_done = evaluations = rounds = 0
    while iterations_done < iterations:  # a fresh L-BFGS where one stops early, until stuck
        lbfgs = torch.optim.LBFGS(params, max_iter=iterations - iterations_done,
                                  history_size=50, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-9, tolerance_change=1e-14)
        lbfgs.step(closure)
        state = lbfgs.state[params[0]]
        iterations_done += state["n_iter"]
        evaluations += state["func_evals"]
        rounds += 1
        if state["n_iter"] < 5:
            break
    sample_kl = float(closure().detach()) + exact["log_z_full"]
    kl = fresh_kl(smap, d, logp, exact["log_z_full"], dtype=torch.float64)
    smap.to(dtype)
    return dict(polish_draws=num, polish_iterations=iterations_done,
                polish_evaluations=evaluations, polish_rounds=rounds,
                polish_sample_kl=sample_kl, polish_kl=kl, **before)


def family_optimum(seed: int, y, s2, exact: dict) -> dict:
    y, s2 = y.double(), s2.double()
    nodes, weights = np.polynomial.hermite_e.hermegauss(150)
    nodes = torch.tensor(nodes)[:, None]
    weights = torch.tensor(weights) / math.sqrt(2 * math.pi)
    torch.manual_seed(seed)
    T = make_map(1, torch.tensor([exact["exact_mean_log_tau"]], dtype=torch.float64))

    def kl():  # KL(q || p) up to the constant log Z, by quadrature over the reference
        z = T(nodes)
        log_q = -0.5 * nodes[:, 0] ** 2 - T.log_abs_det_jacobian(nodes, z).reshape(-1)
        return (weights * (log_q - log_marginal_log_tau(y, s2, z[:, 0]))).sum()

    adam = torch.optim.Adam(T.parameters(), lr=1e-2)
    for _ in range(OPTIMUM_ADAM_STEPS):
        adam.zero_grad()
        kl().backward()
        adam.step()
    lbfgs = torch.optim.LBFGS(T.parameters(), max_iter=2000, line_search_fn="strong_wolfe",
                              tolerance_grad=1e-12, tolerance_change=1e-15)

    def closure():
        lbfgs.zero_grad()
        value = kl()
        value.backward()
        return value

    lbfgs.step(closure)
    with torch.no_grad():  # KL on fresh draws (the fit could exploit the nodes)
        x = torch.randn(400_000, 1, dtype=torch.float64)
        z = T(x)
        log_q = -0.5 * x[:, 0] ** 2 - T.log_abs_det_jacobian(x, z).reshape(-1)
        value = float((log_q - log_marginal_log_tau(y, s2, z[:, 0])).mean()) + exact["log_z"]
    return dict(own_sd_error_log_tau=float(z[:, 0].std() / exact["exact_sd_log_tau"] - 1),
                kl=value - 0.5 * math.log(2 * math.pi))

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--order", choices=["tau", "mu"], default="tau")
    p.add_argument("--particles", type=int, default=8)
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--sampler", choices=["mc", "rqmc"], default="mc")
    p.add_argument("--reference-scale", type=float, default=1.0)
    p.add_argument("--family-optimum", action="store_true")
    p.add_argument("--full", action="store_true")
    p.add_argument("--iw", type=int, default=1,
                   help="with --full: the importance-weighted bound of groups of this many "
                        "particles (doubly reparameterized gradient); 1: the ELBO")
    p.add_argument("--polish", type=int, default=0, metavar="M",
                   help="with --full: after SGD, L-BFGS on the sample-average KL of M fixed "
                        "reference draws")
    p.add_argument("--polish-iterations", type=int, default=POLISH_ITERATIONS,
                   help="the most L-BFGS iterations of --polish")
    p.add_argument("--polish-sampler", choices=["mc", "rqmc"], default="mc",
                   help="the fixed draws of --polish: Monte Carlo or scrambled Sobol points")
    p.add_argument("--output", type=Path, default=RESULTS)
    a = p.parse_args()
    if a.reference_scale != 1.0 and a.sampler == "rqmc":
        p.error("--reference-scale applies to Monte Carlo draws (--sampler mc)")
    if a.full and (a.sampler != "mc" or a.order != "tau" or a.family_optimum):
        p.error("--full takes the library's default order and Monte Carlo draws only")
    if a.polish and (not a.full or a.polish < 2
                     or (a.polish_sampler == "rqmc" and a.reference_scale != 1)):
        p.error("--polish M needs --full and M >= 2; --polish-sampler rqmc needs "
                "--reference-scale 1")
    if a.iw != 1 and (not a.full or a.iw < 1 or a.particles % a.iw or a.reference_scale != 1):
        p.error("--iw K needs --full, K >= 1 dividing --particles, and --reference-scale 1")
    torch.set_num_threads(1)
    y, sigma = H.make_data(GROUPS)
    exact = exact_globals(y, sigma**2)
    command = "python benchmarks/hierarchical_leading_tail.py " + " ".join(sys.argv[1:])
    rows = []
    for seed in a.seeds:
        c0 = time.process_time()
        if a.family_optimum:
            row = dict(kind="family_optimum", n=GROUPS, seed=seed,
                       **family_optimum(seed, y, sigma**2, exact))
        elif a.full:
            row = dict(kind="full_model", n=GROUPS, seed=seed, order="auto",
                       particles=a.particles, steps=a.steps, sampler="mc",
                       reference_scale=a.reference_scale, iw=a.iw, polish=a.polish,
                       polish_sampler=a.polish_sampler,
                       polish_iterations_max=a.polish_iterations if a.polish else None,
                       **full_model(a, seed, y, sigma, exact))
        else:
            row = dict(kind="sgd", n=GROUPS, seed=seed, order=a.order, particles=a.particles,
                       steps=a.steps, sampler=a.sampler, reference_scale=a.reference_scale,
                       **sgd(a, seed, y, sigma**2, exact))
        row.update(cpu_s=round(time.process_time() - c0, 1), command=command)
        rows.append(row)
        print(json.dumps(row), flush=True)
    stored = json.loads(a.output.read_text()) if a.output.exists() else []
    a.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.output.with_suffix(".tmp")
    tmp.write_text(json.dumps(stored + rows, indent=1) + "\n")
    tmp.replace(a.output)
    print("| kind | order | particles | iw | steps | sampler | scale | seed "
          "| own sd err: log tau | mu |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r.get('order', '')} | {r.get('particles', '')} | "
              f"{r.get('iw', '')} | {r.get('steps', '')} | {r.get('sampler', '')} | "
              f"{r.get('reference_scale', '')} | {r['seed']} | {r['own_sd_error_log_tau']:+.4f} | "
              f"{r.get('own_sd_error_mu', float('nan')):+.4f} |")


if __name__ == "__main__":
    main()
