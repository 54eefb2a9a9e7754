"""Sweep of annealing schedules for ``TransportELBO``: the evidence behind the defaults.

``pyro_kr.Annealing()`` ramps ``eps`` and ``lam`` geometrically between
``DEFAULT_EPS`` / ``DEFAULT_LAM`` (``pyro_kr/objective/schedules.py``). This script trains
``AutoKR`` with each schedule of a grid on two small targets and scores the result:

* ``gaussian``: ``linear_gaussian`` with 4 parameters and 6 observations (exact posterior);
  ``AutoKR(map="affine")``; scores: exact ``KL(q || p)`` (both Gaussian) and the max error of
  the learned factor against ``cholesky(posterior cov)`` (the KR map);
* ``banana``: the 2-d banana posterior (shipped NUTS reference); ``AutoKR(map="monotone")``;
  scores: ``-ELBO`` estimated with 4000 draws (``KL + const``: lower is better), W2 on
  standardized coordinates to the reference (with its noise floor) and PSIS k-hat.

Every run uses ``TransportELBO(schedule, num_particles=8)``, Adam(lr 1e-2) and the same step
budget; ``plain_elbo`` is ``schedule=None`` (``lam = inf``). Each schedule's rank is averaged
over targets and seeds (rank of the mean KL / -ELBO), and the table says which is best.
Writes ``benchmarks/results/schedules.json`` and prints a table.

    python benchmarks/schedules.py                       # 1000 steps, 3 seeds (~15 min, 1 core)
    python benchmarks/schedules.py --steps 2000 --seeds 5
    python benchmarks/schedules.py --smoke               # seconds
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyro
import torch

torch.set_num_threads(1)

import pyro_kr  # noqa: E402
from pyro_kr import metrics  # noqa: E402
from pyro_kr.bench import problems  # noqa: E402
from pyro_kr.bench.runner import write_json_atomic  # noqa: E402
from pyro_kr.objective.schedules import DEFAULT_EPS, DEFAULT_LAM  # noqa: E402

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Choice:
    """One schedule of the grid (``ramp`` is the fraction of the budget spent annealing)."""

    name: str
    eps: tuple[float, float] | None = DEFAULT_EPS
    lam: tuple[float, float] | None = DEFAULT_LAM
    ramp: float = 0.7
    kind: str = "geometric"

    def annealing(self, steps: int) -> pyro_kr.Annealing | None:
        if self.eps is None:
            return None
        return pyro_kr.Annealing(
            eps=self.eps, lam=self.lam, steps=max(int(self.ramp * steps), 1), kind=self.kind
        )


GRID = (
    Choice("plain_elbo", eps=None, lam=None),
    Choice("default"),
    Choice("eps_end=1e-2", eps=(1.0, 1e-2)),
    Choice("eps_end=1e-4", eps=(1.0, 1e-4)),
    Choice("lam_end=1e2", lam=(1.0, 1e2)),
    Choice("lam_end=1e3", lam=(1.0, 1e3)),
    Choice("lam_end=1e5", lam=(1.0, 1e5)),
    Choice("lam_start=0.1", lam=(0.1, 1e4)),
    Choice("lam_start=10", lam=(10.0, 1e4)),
    Choice("ramp=0.3", ramp=0.3),
    Choice("ramp=1.0", ramp=1.0),
    Choice("linear", kind="linear"),
    Choice("cosine", kind="cosine"),
)


def _gaussian_kl(loc, scale_tril, mean, cov) -> float:
    """Exact ``KL(N(loc, LL^T) || N(mean, cov))``."""
    q = torch.distributions.MultivariateNormal(loc, scale_tril=scale_tril)
    p = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    return float(torch.distributions.kl_divergence(q, p))


def _fit(problem, y, choice: Choice, *, map_kind: str, steps: int, seed: int, particles: int):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = pyro_kr.AutoKR(problem.model, map=map_kind)
    loss = pyro_kr.TransportELBO(choice.annealing(steps), num_particles=particles)
    start = time.perf_counter()
    try:
        pyro_kr.fit(problem.model, guide, y=y, loss=loss, steps=steps, lr=1e-2, progress=False,
                    lr_decay=False)  # constant lr, as measured
    except pyro_kr.NonFiniteLossError as exc:
        return guide, str(exc), time.perf_counter() - start
    return guide, None, time.perf_counter() - start


def run_gaussian(choice: Choice, args, seed: int) -> dict:
    p = problems.get("linear_gaussian", dim_theta=4, dim_y=6, s_max=3.0, s_min=0.3)
    y = p.observation(0)
    mean, cov = p.exact_posterior(y)
    guide, failed, wall = _fit(
        p, y, choice, map_kind="affine", steps=args.steps, seed=seed, particles=args.particles
    )
    if failed:
        return {"failed": failed, "wall_s": wall}
    affine = guide.transform[-1]
    loc, tril = affine.loc.detach(), affine.scale_tril.detach()
    return {
        "failed": None,
        "wall_s": wall,
        "score": _gaussian_kl(loc, tril, mean, cov),
        "kl": _gaussian_kl(loc, tril, mean, cov),
        "cholesky_error": float((tril - torch.linalg.cholesky(cov)).abs().max()),
        "mean_error": float((loc - mean).abs().max()),
    }


def run_banana(choice: Choice, args, seed: int, ref: dict) -> dict:
    from pyro_kr import diagnostics

    p = problems.get("banana")
    y = p.observation(0)
    guide, failed, wall = _fit(
        p, y, choice, map_kind="monotone", steps=args.steps, seed=seed, particles=args.particles
    )
    if failed:
        return {"failed": failed, "wall_s": wall}
    with torch.no_grad():
        neg_elbo = pyro.infer.Trace_ELBO(
            num_particles=args.elbo_draws, vectorize_particles=True, max_plate_nesting=0
        ).loss(p.model, guide, y=y)
        draws = guide.sample_posterior(args.metric_n, y=y)
    draws = {k: v.numpy() for k, v in draws.items()}
    scores = metrics.compare(
        draws, ref, metrics=("w2_standardized",), n=args.metric_n, seed=seed
    )
    khat = float(diagnostics.psis(guide, p.model, y=y, num_samples=args.elbo_draws).khat)
    return {
        "failed": None,
        "wall_s": wall,
        "score": float(neg_elbo),
        "neg_elbo": float(neg_elbo),
        "w2_standardized": scores["w2_standardized"],
        "w2_standardized_noise_floor": scores["w2_standardized_noise_floor"],
        "khat": khat,
    }


def _mean(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if not r["failed"] and r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def summarize(results: dict) -> dict:
    """Mean of every score per (target, schedule), and the average rank of each schedule."""
    summary: dict = {}
    ranks: dict[str, list[float]] = {c: [] for c in results["choices"]}
    for target, by_choice in results["runs"].items():
        summary[target] = {}
        for choice, runs in by_choice.items():
            keys = sorted({k for r in runs for k in r if k not in ("failed", "seed")})
            row = {k: _mean(runs, k) for k in keys}
            row["failures"] = sum(1 for r in runs if r["failed"])
            summary[target][choice] = row
        scored = [
            (r["score"], c) for c, r in summary[target].items() if r.get("score") is not None
        ]
        for rank, (_, c) in enumerate(sorted(scored), start=1):
            ranks[c].append(rank)
    mean_rank = {c: float(np.mean(r)) if r else math.inf for c, r in ranks.items()}
    best = min(mean_rank, key=mean_rank.get)
    return {"by_target": summary, "mean_rank": mean_rank, "best": best}


def table(summary: dict, args) -> str:
    g, b = summary["by_target"].get("gaussian", {}), summary["by_target"].get("banana", {})
    head = ["schedule", "mean rank", "gauss KL", "gauss chol err", "banana -ELBO",
            "banana W2 std", "banana k-hat", "failures"]
    lines = [f"\n{args.steps} steps, {args.seeds} seeds, {args.particles} particles", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def fmt(v) -> str:
        return "-" if v is None else f"{v:.4g}"

    for c, rank in sorted(summary["mean_rank"].items(), key=lambda kv: kv[1]):
        gr, br = g.get(c, {}), b.get(c, {})
        fails = gr.get("failures", 0) + br.get("failures", 0)
        cells = [c, fmt(rank), fmt(gr.get("kl")), fmt(gr.get("cholesky_error")),
                 fmt(br.get("neg_elbo")), fmt(br.get("w2_standardized")), fmt(br.get("khat")),
                 str(fails)]
        lines.append("| " + " | ".join(cells) + " |")
    floor = b.get("default", {}).get("w2_standardized_noise_floor")
    lines.append(f"\nbanana W2 noise floor (n = {args.metric_n}): {fmt(floor)}")
    lines.append(f"best mean rank: {summary['best']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=1000, help="step budget per run")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--particles", type=int, default=8)
    ap.add_argument("--metric-n", type=int, default=1000)
    ap.add_argument("--elbo-draws", type=int, default=4000)
    ap.add_argument("--targets", default="gaussian,banana")
    ap.add_argument("--choices", default=None, help="comma-separated names (default: all)")
    ap.add_argument("--out", default=str(RESULTS / "schedules.json"))
    ap.add_argument("--smoke", action="store_true", help="30 steps, 1 seed, 3 schedules")
    args = ap.parse_args(argv)
    if args.smoke:
        args.steps, args.seeds, args.metric_n, args.elbo_draws = 30, 1, 200, 500
        args.choices = args.choices or "plain_elbo,default,linear"
        args.out = str(RESULTS / "schedules_smoke.json")
    grid = [c for c in GRID if args.choices is None or c.name in args.choices.split(",")]
    targets = [t for t in args.targets.split(",") if t]
    unknown = [t for t in targets if t not in ("gaussian", "banana")]
    if unknown or not grid:
        raise SystemExit(f"unknown targets {unknown} or empty schedule list {args.choices!r}")
    torch.set_default_dtype(torch.float64)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "command": " ".join(["python", sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
        "settings": vars(args),
        "defaults": {"eps": DEFAULT_EPS, "lam": DEFAULT_LAM},
        "choices": {c.name: asdict(c) for c in grid},
        "runs": {t: {c.name: [] for c in grid} for t in targets},
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    ref = problems.get("banana").reference(0) if "banana" in targets else None
    for seed in range(args.seeds):
        for choice in grid:
            for target in targets:
                if target == "gaussian":
                    rec = run_gaussian(choice, args, seed)
                else:
                    rec = run_banana(choice, args, seed, ref)
                rec["seed"] = seed
                results["runs"][target][choice.name].append(rec)
                print(f"seed {seed} {target:8s} {choice.name:14s} "
                      f"score {rec.get('score', float('nan')):.5g} ({rec['wall_s']:.1f} s)",
                      flush=True)
            results["summary"] = summarize(results)
            write_json_atomic(results, out)
    results["summary"] = summarize(results)
    results["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json_atomic(results, out)
    print(table(results["summary"], args))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
