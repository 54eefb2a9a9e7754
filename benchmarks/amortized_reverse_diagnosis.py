"""Why is reverse-mode amortized KR overconfident? Per-dataset measurements (issue 12).

Trains :class:`pyro_kr.AmortizedKR` by reverse KL for ``--steps`` steps (``--objective elbo``
or the per-dataset importance-weighted bound ``iwae``), then, on ``--datasets`` fresh
prior-predictive datasets ``(u*, y)``:

* the per-dataset negative ELBO, an importance-sampling estimate of ``log p(y)`` with ``q`` as
  proposal (``--particles`` draws), hence ``KL(q || p(.|y)) ~ log p(y) - ELBO`` (a lower
  estimate), and the importance-sampling ESS share (near ``1/particles``: ``q`` too narrow);
* the norm of each dataset's gradient of the loss with respect to the guide's parameters, and
  the share of the summed squared gradient norm carried by the top 5% of datasets;
* the rank correlation of those gradient norms with the dataset's log-likelihood scale;
* the joint HPD coverage of the true ``u*`` at 0.5 / 0.9 / 0.95 (calibrated: equal).

Usage:
    python benchmarks/amortized_reverse_diagnosis.py --problem lotka_volterra --steps 1000
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import pyro
import torch

import pyro_kr
import pyro_kr.bench.problems as problems

OUT = Path(__file__).resolve().parent.parent / "bench-out" / "reverse_diagnosis"


def log_joint(problem, guide, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``log p(u, y)`` in the guide's packed unconstrained coordinates (Jacobian included)."""
    values, ladj = {}, 0.0
    for name, sl in guide.site_slices().items():
        site = guide.prototype_trace.nodes[name]
        t = torch.distributions.biject_to(site["fn"].support)
        part = z[..., sl].reshape(z.shape[:-1] + site["value"].shape)
        values[name] = t(part)
        ladj = ladj + t.log_abs_det_jacobian(part, values[name]).reshape(
            z.shape[:-1] + (-1,)).sum(-1)
    prior = problem.prior()
    lp = sum(prior[k].log_prob(values[k]).reshape(z.shape[:-1] + (-1,)).sum(-1) for k in prior)
    return lp + ladj + problem.likelihood(values).log_prob(y)


def per_dataset(problem, guide, y: torch.Tensor, particles: int, grad_draws: int):
    post = guide.posterior(y)  # batch (B,)
    params = [p for p in guide.networks().parameters() if p.requires_grad]
    z = post.rsample((grad_draws,))  # (M, B, d)
    log_q = post.log_prob(z)
    loss = -(log_joint(problem, guide, z, y) - log_q).mean(0)  # (B,) -ELBO per dataset
    norms = []
    for i in range(len(y)):
        grads = torch.autograd.grad(loss[i], params, retain_graph=True, allow_unused=True)
        norms.append(math.sqrt(sum(float((g**2).sum()) for g in grads if g is not None)))
    with torch.no_grad():
        zs = post.sample((particles,))
        log_w = log_joint(problem, guide, zs, y) - post.log_prob(zs)  # (K, B)
        log_z = torch.logsumexp(log_w, 0) - math.log(particles)
        w = torch.softmax(log_w, 0)
        ess = 1.0 / (w**2).sum(0) / particles
        elbo = log_w.mean(0)
    return loss.detach(), torch.tensor(norms), log_z, elbo, ess


def quantiles(x: torch.Tensor, qs=(0.1, 0.5, 0.9, 1.0)) -> list[float]:
    x = x.double()
    return torch.quantile(x, torch.tensor(qs, dtype=x.dtype)).tolist()


def rank_corr(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.double().argsort().argsort().double(), b.double().argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", default="lotka_volterra")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--objective", choices=["elbo", "iwae"], default="elbo")
    parser.add_argument("--num-particles", type=int, default=None,
                        help="training particles per dataset (default 1 / 8 for iwae)")
    parser.add_argument("--datasets", type=int, default=128)
    parser.add_argument("--particles", type=int, default=1000)
    parser.add_argument("--grad-draws", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    problem = problems.get(args.problem)
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    guide = pyro_kr.AmortizedKR(problem.model, observed="y", embedding_dim=16)
    t0 = time.perf_counter()
    kw = {"objective": args.objective, "num_particles": args.num_particles}
    optim = pyro.optim.ClippedAdam({"lr": args.lr, "clip_norm": 10.0})
    pyro_kr.fit_amortized(problem.model, guide, mode="reverse", steps=args.steps,
                          batch_size=args.batch_size, optim=optim, progress=False, **kw)
    train_s = time.perf_counter() - t0
    u, y = problem.simulate(args.datasets, seed=12345)
    loss, norms, log_z, elbo, ess = per_dataset(problem, guide, y, args.particles,
                                                args.grad_draws)
    with torch.no_grad():  # joint HPD coverage: share of draws with a higher q density than u*
        post = guide.posterior(y)
        draws = post.sample((args.particles,))
        u_star = guide.pack(u)
        above = (post.log_prob(draws) > post.log_prob(u_star)).double().mean(0)
    coverage = {str(a): float((above < a).double().mean()) for a in (0.5, 0.9, 0.95)}
    kl = log_z - elbo
    # the log-likelihood scale of each dataset: -log p(y | u*) at the true parameters
    nll_true = -problem.likelihood(u).log_prob(y)
    top = norms.pow(2).sort(descending=True).values
    k = max(1, int(0.05 * len(top)))
    result = {
        "problem": args.problem, "steps": args.steps, "objective": args.objective,
        "num_particles": args.num_particles, "batch_size": args.batch_size,
        "joint_coverage": coverage,
        "train_seconds": train_s,
        "kl_quantiles": quantiles(kl),
        "ess_share_quantiles": quantiles(ess, (0.1, 0.5, 0.9)),
        "grad_norm_quantiles": quantiles(norms),
        "top5pct_share_of_squared_grad": float(top[:k].sum() / top.sum()),
        "rank_corr_gradnorm_vs_nll_true": rank_corr(norms, nll_true),
        "rank_corr_gradnorm_vs_kl": rank_corr(norms, kl),
        "rank_corr_kl_vs_max_log_y": rank_corr(kl, y.log().amax(-1)) if args.problem ==
        "lotka_volterra" else None,
        "loss_quantiles": quantiles(loss),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.problem}_{args.objective}_{args.steps}{args.tag}.json").write_text(
        json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
