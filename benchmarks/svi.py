"""AutoKR against Pyro's autoguides at the same step budget (issue 3, Benchmark section).

Problems (``pyro_kr.bench.problems``): ``linear_gaussian`` (d = 10, exact reference), ``banana``
(2-d, shipped NUTS reference), ``funnel`` (d = 10, centered, exact reference) and
``eight_schools`` (centered, shipped NUTS reference). Methods (``pyro_kr.bench.methods``):
``AutoKR`` affine and monotone, each with the annealed ``TransportELBO`` and with the plain
ELBO (``*_elbo``), against ``AutoNormal``, ``AutoMultivariateNormal``, ``AutoIAFNormal`` and
``AutoNormalizingFlow(spline_autoregressive)``. Every method gets the same steps and seeds;
the runner (``pyro_kr.bench.runner.run``) computes W2 on standardized coordinates, max mean
and sd errors in reference-sd units (each with its noise floor), PSIS k-hat, seconds per step
and failures (non-finite loss or draws, or k-hat > 1). The parameter count of every guide is
recorded too. Every method trains through ``pyro_kr.fit`` with the same budget: ``--steps``
Adam steps of ``--particles`` vectorized ELBO particles (default 8). Writes
``benchmarks/results/svi.json`` (rewritten after every problem; running a subset of methods
replaces only those methods' entries, each with its own budget), the per-problem runner
output (draws, per-run records) under ``bench-out/svi/PROBLEM/`` (not committed), prints a
table per problem and checks the issue's targets.

    python benchmarks/svi.py                                # 5 seeds x 5000 steps (hours)
    python benchmarks/svi.py --steps 1000 --seeds 2         # what fits in ~30 min on 2 cores
    python benchmarks/svi.py --smoke                        # seconds
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import pyro
import torch

torch.set_num_threads(1)

from pyro_kr.bench import (  # noqa: E402
    BenchConfig,
    methods,
    problems,  # noqa: E402
    report,
    runner,
)

RESULTS = Path(__file__).parent / "results"
OUTPUT = Path(__file__).parent.parent / "bench-out"
"""Generated draws and per-run records (ignored by git)."""
PROBLEMS = ("linear_gaussian", "banana", "funnel", "eight_schools")
METHODS = (
    "autokr_monotone",
    "autokr_monotone_elbo",
    "autokr_affine",
    "autokr_affine_elbo",
    "auto_normal",
    "auto_mvn",
    "auto_iaf",
    "auto_spline",
)
METRICS = ("w2_standardized", "mean_error", "sd_error")


def param_count(problem, method: str) -> int:
    """Number of scalar parameters the method's guide creates (one training step)."""
    fit = methods.get(method)
    fit(problem, problem.observation(0), steps=1, seed=0, num_draws=2)
    return int(sum(p.numel() for p in pyro.get_param_store().values()))


def check_targets(entries: dict) -> list[dict]:
    """The issue's targets, each with the numbers it was judged on and ``met``."""
    out = []
    for name, entry in entries.items():
        ms = entry["methods"]
        w2 = {m: s.get("w2_standardized") for m, s in ms.items()}
        finite = {m: v for m, v in w2.items() if v is not None and math.isfinite(v)}
        best = min(finite, key=finite.get) if finite else None
        out.append({
            "target": f"{name}: autokr_monotone has the lowest W2 (standardized)",
            "numbers": finite,
            "best": best,
            "met": best == "autokr_monotone",
        })
        if name in ("linear_gaussian", "banana"):
            k = ms.get("autokr_monotone", {}).get("khat")
            out.append({
                "target": f"{name}: autokr_monotone k-hat < 0.7",
                "numbers": {"khat": k},
                "met": k is not None and k < 0.7,
            })
        for kind in ("monotone", "affine"):
            a = ms.get(f"autokr_{kind}", {}).get("failures")
            p = ms.get(f"autokr_{kind}_elbo", {}).get("failures")
            if a is not None and p is not None:
                out.append({
                    "target": f"{name}: autokr_{kind} annealed has no more failures than ELBO",
                    "numbers": {"annealed": a, "plain_elbo": p},
                    "met": a <= p,
                })
        mono, iaf = ms.get("autokr_monotone", {}), ms.get("auto_iaf", {})
        if mono.get("seconds_per_step") and iaf.get("seconds_per_step"):
            ratio = mono["seconds_per_step"] / iaf["seconds_per_step"]
            out.append({
                "target": f"{name}: autokr_monotone s/step within 1.5x of auto_iaf",
                "numbers": {
                    "ratio": ratio,
                    "params_autokr_monotone": entry["param_counts"].get("autokr_monotone"),
                    "params_auto_iaf": entry["param_counts"].get("auto_iaf"),
                },
                "met": ratio <= 1.5,
            })
    return out


def table_for(name: str, entry: dict) -> str:
    lines = [f"\n### {name} ({entry['steps']} steps x {entry['seeds']} seeds, "
             f"metrics on n = {entry['metric_n']})", ""]
    head = ["method", "particles", "params", "s/step", *METRICS, "k-hat", "failures"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, s in entry["methods"].items():
        particles = entry.get("budget", {}).get(m, {}).get("particles", "?")
        cells = [m, str(particles), str(entry["param_counts"].get(m, "-")),
                 report.fmt(s.get("seconds_per_step"))]
        for k in (*METRICS, "khat"):
            v, sd = s.get(k), s.get(f"{k}_sd")
            cells.append(report.fmt(v) + (f" ± {report.fmt(sd)}" if sd is not None else ""))
        cells.append(f"{s.get('failures')}/{s.get('runs')}")
        lines.append("| " + " | ".join(cells) + " |")
    floor = entry["noise_floor"]
    lines.append("| *noise floor* | | | | " + " | ".join(report.fmt(floor.get(k)) for k in METRICS)
                 + " | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--problems", default=",".join(PROBLEMS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", type=int, default=5000, help="step budget of every method")
    ap.add_argument("--particles", type=int, default=methods.PARTICLES,
                    help="ELBO particles per step of every method")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--num-draws", type=int, default=5000)
    ap.add_argument("--metric-n", type=int, default=2000)
    ap.add_argument("--psis-draws", type=int, default=4000)
    ap.add_argument("--out", default=str(RESULTS / "svi.json"))
    ap.add_argument("--smoke", action="store_true", help="banana, 3 methods, 20 steps")
    args = ap.parse_args(argv)
    if args.smoke:
        args.problems, args.steps, args.seeds = "banana", 20, 1
        args.methods = "autokr_monotone,autokr_affine_elbo,auto_normal"
        args.num_draws, args.metric_n, args.psis_draws = 400, 200, 400
        args.out = str(OUTPUT / "svi_smoke.json")
    names = [n for n in args.problems.split(",") if n]
    method_names = [m for m in args.methods.split(",") if m]
    for m in method_names:
        methods.get(m)  # fail fast on a typo
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    results: dict = {"problems": {}}
    if out_path.exists():  # merge, so problems can be run in separate invocations
        results = json.loads(out_path.read_text())
        results.setdefault("problems", {})
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    results["updated_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    config = BenchConfig(
        steps=args.steps,
        particles=args.particles,
        seeds=args.seeds,
        num_draws=args.num_draws,
        metric_n=args.metric_n,
        metrics=METRICS,
        psis_draws=args.psis_draws,
    )
    for name in names:
        p = problems.get(name)
        ref, source = runner.load_reference(p, 0)
        print(f"== {name}: {', '.join(method_names)} x {args.steps} steps x "
              f"{args.particles} particles x {args.seeds} seeds", flush=True)
        counts = {m: param_count(p, m) for m in method_names}
        run_dir = OUTPUT / out_path.stem / name
        started = time.perf_counter()
        res = runner.run(p, method_names, run_dir, config=config, progress=False,
                         reference=(ref, source))
        budget = {"steps": args.steps, "particles": args.particles, "seeds": args.seeds,
                   "command": command}
        entry = results["problems"].get(name, {})
        if entry.get("steps", args.steps) != args.steps or entry.get("seeds", args.seeds) != (
            args.seeds
        ):
            entry = {}  # another budget: start the problem's entry afresh
        entry.update({
            "command": command,
            "settings": vars(args),
            "steps": args.steps,
            "seeds": args.seeds,
            "reference": res["reference"],
            "noise_floor": res["noise_floor"],
            "metric_n": res["config"]["metric_n_used"],
            "wall_s": entry.get("wall_s", 0.0) + time.perf_counter() - started,
        })
        entry["param_counts"] = {**entry.get("param_counts", {}), **counts}
        entry["budget"] = {**entry.get("budget", {}), **{m: budget for m in res["methods"]}}
        entry["methods"] = {
            **entry.get("methods", {}), **{m: v["summary"] for m, v in res["methods"].items()}
        }
        entry["failures"] = {
            **entry.get("failures", {}),
            **{m: [r["failed"] for r in v["runs"] if r["failed"]]
               for m, v in res["methods"].items()},
        }
        results["problems"][name] = entry
        results["targets"] = check_targets(results["problems"])
        runner.write_json_atomic(results, out_path)
        print(table_for(name, entry), flush=True)
    print("\n### targets\n")
    for t in results.get("targets", []):
        nums = ", ".join(
            f"{k}={report.fmt(v) if isinstance(v, float) else v}" for k, v in t["numbers"].items()
        )
        print(f"- [{'x' if t['met'] else ' '}] {t['target']}: {nums}")
    print(f"\nwrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
