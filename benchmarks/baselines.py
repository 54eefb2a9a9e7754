"""Baseline numbers for every problem with a reference: NUTS cost and Pyro autoguide accuracy.

For each problem: a fresh PyMC NUTS run (wall time incl. compilation, sampling time, ESS/s,
max R-hat), the noise floor of each metric (two halves of the reference, n draws each), and
each Pyro autoguide's metrics and PSIS k-hat after ``--steps`` steps (default 5,000) of
``--particles`` ELBO particles (default 8, the bench's budget for every method), trained through
``pyro_kr.fit``. Writes ``benchmarks/results/baselines.json`` (rewritten after every problem),
the per-problem report, draws and plots under ``bench-out/baselines/PROBLEM/`` (not committed),
and prints a table.

    python benchmarks/baselines.py                      # everything (hours on 2 cores)
    python benchmarks/baselines.py --problems banana,funnel --steps 5000
    python benchmarks/baselines.py --steps-for lotka_volterra=400 --no-nuts-for lotka_volterra
    python benchmarks/baselines.py --smoke              # seconds: linear_gaussian, 50 steps
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

from pyro_kr.bench import BenchConfig, problems, reference, report, runner  # noqa: E402  # noqa: E402
from pyro_kr.bench.methods import PARTICLES, fresh_nuts, reference_options  # noqa: E402

GUIDES = ("auto_normal", "auto_mvn", "auto_iaf", "auto_spline")
RESULTS = Path(__file__).parent / "results"
OUTPUT = Path(__file__).parent.parent / "bench-out"
"""Generated reports, draws and plots (ignored by git)."""


def nuts_baseline(problem, *, draws: int, chains: int, tune: int, seed: int) -> dict:
    """Time a fresh (uncached) PyMC NUTS posterior; never refuses, reports R-hat and ESS.

    Uses the problem's reference sampler options (``target_accept``, ``compile_mode``).
    """
    options = reference_options(problem.name)
    try:
        idata = fresh_nuts(problem, 0, draws=draws, chains=chains, tune=tune, seed=seed)
    except Exception as exc:  # noqa: BLE001 - a baseline records failures, it does not stop
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}
    s = reference.summary(idata)
    sampling = float(s.get("sampling_time", math.nan))
    return {
        **options,
        "draws": draws,
        "chains": chains,
        "tune": tune,
        "wall_time_s": s["wall_time_s"],
        "sampling_time_s": sampling,
        "max_rhat": s["max_rhat"],
        "min_ess_bulk": s["min_ess_bulk"],
        "ess_per_s": s["ess_per_s"],
        "ess_per_sampling_s": s["min_ess_bulk"] / sampling if sampling > 0 else math.nan,
    }


def parse_steps_for(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        out[name] = int(value)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument(
        "--problems",
        default=None,
        help="comma-separated (default: all with a likelihood and a reference)",
    )
    ap.add_argument("--methods", default=",".join(GUIDES))
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--steps-for", action="append", default=[], help="NAME=STEPS override")
    ap.add_argument("--particles", type=int, default=PARTICLES, help="ELBO particles per step")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--num-draws", type=int, default=5000)
    ap.add_argument("--metric-n", type=int, default=2000)
    ap.add_argument("--nuts-draws", type=int, default=1000)
    ap.add_argument("--nuts-chains", type=int, default=2)
    ap.add_argument("--nuts-tune", type=int, default=1000)
    ap.add_argument("--no-nuts-for", action="append", default=[], help="skip NUTS for NAME")
    ap.add_argument("--out", default=str(RESULTS / "baselines.json"))
    ap.add_argument("--smoke", action="store_true", help="linear_gaussian, 50 steps, tiny draws")
    args = ap.parse_args(argv)

    if args.smoke:
        args.problems, args.methods, args.steps = "linear_gaussian", "auto_normal,auto_mvn", 50
        args.num_draws, args.metric_n, args.nuts_draws, args.nuts_tune = 400, 200, 200, 200
        # a smoke run never touches the committed results
        args.out = str(Path(tempfile.gettempdir()) / "pyro_kr_smoke" / "baselines_smoke.json")
        args.no_nuts_for = ["linear_gaussian"]
    names = args.problems.split(",") if args.problems else problems.names()
    method_names = [m for m in args.methods.split(",") if m]
    steps_for = parse_steps_for(args.steps_for)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # merge into an existing file, so problems can be run in separate invocations
    all_results: dict = {"problems": {}}
    if out_path.exists():
        all_results = json.loads(out_path.read_text())
    all_results["updated_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for name in names:
        try:
            p = problems.get(name)
            if not p.has_likelihood:
                continue
            ref, source = runner.load_reference(p, 0)  # shipped/exact, else cached NUTS
        except (LookupError, ImportError, NotImplementedError, ValueError) as exc:
            print(f"{name}: no reference ({type(exc).__name__}); skipped", file=sys.stderr)
            continue
        steps = steps_for.get(name, args.steps)
        config = BenchConfig(
            steps=steps, particles=args.particles, seeds=args.seeds, num_draws=args.num_draws,
            metric_n=args.metric_n,
        )
        print(f"== {name}: {', '.join(method_names)} x {steps} steps x {args.particles} "
              "particles", flush=True)
        run_dir = OUTPUT / out_path.stem / name  # baselines.json -> bench-out/baselines/NAME
        res = runner.run(
            p,
            method_names,
            run_dir,
            config=config,
            progress=False,
            reference=(ref, source),
        )
        report.write_report(res, run_dir, reference=ref)
        entry = {
            "reference": res["reference"],
            "steps": steps,
            "particles": args.particles,
            "settings": vars(args),
            "noise_floor": res["noise_floor"],
            "metric_n": res["config"]["metric_n_used"],
            "methods": {m: v["summary"] for m, v in res["methods"].items()},
        }
        if name not in args.no_nuts_for:
            print(f"   NUTS on {name}", flush=True)
            entry["nuts"] = nuts_baseline(
                p, draws=args.nuts_draws, chains=args.nuts_chains, tune=args.nuts_tune, seed=0
            )
        all_results["problems"][name] = entry
        runner.write_json_atomic(all_results, out_path)
        print(table_for(name, entry, config.metrics), flush=True)
    print(f"\nwrote {out_path}")
    return 0


def table_for(name: str, entry: dict, metrics) -> str:
    lines = [f"\n### {name} ({entry['steps']} steps x {entry.get('particles', '?')} particles, "
             f"metrics on n = {entry['metric_n']})", ""]
    head = ["method", "s/step", *metrics, "k-hat", "failures"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, s in entry["methods"].items():
        cells = [m, report.fmt(s.get("seconds_per_step"))]
        cells += [report.fmt(s.get(k)) for k in metrics]
        cells += [report.fmt(s.get("khat")), report.fmt(s.get("failures"))]
        lines.append("| " + " | ".join(cells) + " |")
    floor = entry["noise_floor"]
    lines.append(
        "| *noise floor* | | " + " | ".join(report.fmt(floor.get(k)) for k in metrics) + " | | |"
    )
    nuts = entry.get("nuts")
    if nuts:
        if "error" in nuts:
            lines.append(f"\nNUTS: {nuts['error']}")
        else:
            lines.append(
                f"\nNUTS ({nuts['chains']}x{nuts['draws']}, tune {nuts['tune']}, target_accept "
                f"{nuts.get('target_accept', 0.8)}): wall "
                f"{nuts['wall_time_s']:.1f} s (sampling {nuts['sampling_time_s']:.1f} s), "
                f"max R-hat {nuts['max_rhat']:.4f}, min bulk ESS {nuts['min_ess_bulk']:.0f}, "
                f"ESS/s {nuts['ess_per_s']:.1f} (per sampling second "
                f"{nuts['ess_per_sampling_s']:.1f})"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
