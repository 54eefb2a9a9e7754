"""KR order: the model's order vs ``AutoKR(order="auto")`` vs the problem's hand order (issue 18).

Every run: default ``AutoKR(model)`` (monotone map, ``init_scale=0.1``) with only ``order``
changed, annealed ``TransportELBO`` (``Annealing.over(steps, beta=1.0)``: the default ramps
over 70 %, without the likelihood tempering that became the default on 2026-12-05, as
measured), ``--particles`` vectorized particles, constant Adam(lr=1e-2) through ``pyro_kr.fit``
(``lr_decay=False``), float64; the
same seeds for every order. Scored against the problem's shipped reference: W2 on
standardized coordinates (with its noise floor), max mean / sd error in reference-sd units,
PSIS k-hat. ``hand`` is ``problem.kr_order`` (the order the problem's structure suggests);
where the problem declares none, ``hand`` is left out. Writes ``benchmarks/results/order.json``
and prints a table.

    nice -n 10 python benchmarks/order.py --problems banana --steps 2000 --seeds 3
    python benchmarks/order.py --smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

torch.set_num_threads(1)

import pyro_kr  # noqa: E402
from pyro_kr import diagnostics, metrics  # noqa: E402
from pyro_kr.bench import (  # noqa: E402
    methods,
    problems,  # noqa: E402
    runner,
)
from pyro_kr.guides.order import auto_order  # noqa: E402

RESULTS = Path(__file__).parent / "results"
METRICS = ("w2_standardized", "mean_error", "sd_error")


def orders(problem, y) -> dict[str, list[str] | str | None]:
    out: dict[str, list[str] | str | None] = {"model": None, "auto": "auto"}
    if problem.kr_order:
        out["hand"] = list(problem.kr_order)
    return out


def one_run(problem, y, ref, order, *, steps, particles, seed, num_draws):
    with methods.float64():
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        guide = pyro_kr.AutoKR(problem.model, order=order)
        loss = pyro_kr.TransportELBO(
            pyro_kr.Annealing.over(steps, beta=1.0),  # the recipe measured: no tempering
            num_particles=particles,
            vectorize_particles=particles > 1,
        )
        began = time.perf_counter()
        try:
            history = pyro_kr.fit(
                problem.model, guide, y=y, loss=loss, steps=steps, lr=1e-2, progress=False,
                lr_decay=False,
            )
        except pyro_kr.NonFiniteLossError as exc:
            return {"seed": seed, "failed": str(exc).splitlines()[0][:200]}
        wall = time.perf_counter() - began
        draws = methods.sample_guide(
            guide, problem.param_names, num_draws, problem.param_shapes, y=y
        )
        n = min(2000, num_draws, len(next(iter(ref.values()))) // 2)
        scores = metrics.compare(draws, ref, metrics=METRICS, n=n, seed=seed)
        khat = float(diagnostics.psis(guide, problem.model, y=y, num_samples=4000).khat)
    return {
        "seed": seed,
        "failed": None,
        "order": list(guide.order),
        "final_elbo": float(statistics.fmean(history.elbo[-100:])),
        "wall_time_s": wall,
        "khat": khat,
        **{m: float(scores[m]) for m in METRICS},
        **{f"{m}_noise_floor": float(scores[f"{m}_noise_floor"]) for m in METRICS},
    }


def summarize(runs: list[dict]) -> dict:
    ok = [r for r in runs if not r["failed"]]
    out = {"runs": len(runs), "failures": len(runs) - len(ok) + sum(r["khat"] > 1 for r in ok)}
    for key in (*METRICS, "khat", "final_elbo", "wall_time_s"):
        vals = [r[key] for r in ok]
        out[f"{key}_median"] = statistics.median(vals) if vals else None
        out[f"{key}_min"] = min(vals) if vals else None
        out[f"{key}_max"] = max(vals) if vals else None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=["banana", "eight_schools", "funnel"])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--particles", type=int, default=methods.PARTICLES)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--num-draws", type=int, default=4000)
    parser.add_argument("--smoke", action="store_true", help="tiny budget, nothing written")
    parser.add_argument("--out", default=str(RESULTS / "order.json"))
    args = parser.parse_args(argv)
    if args.smoke:
        args.problems, args.steps, args.seeds, args.num_draws = ["banana"], 20, 1, 500
    path = Path(args.out)
    results = json.loads(path.read_text()) if path.exists() and not args.smoke else {}
    results.setdefault("problems", {})
    results["budget"] = {
        "steps": args.steps,
        "particles": args.particles,
        "seeds": args.seeds,
        "lr": 1e-2,
        "annealing_steps": max(int(0.7 * args.steps), 1),
        "guide": "AutoKR(model, order=...) defaults (monotone, depth 2, init_scale 0.1)",
    }
    for name in args.problems:
        problem = problems.get(name)
        y = problem.observation(0)
        ref, source = runner.load_reference(problem, 0)
        entry = {
            "reference": source,
            "auto_order": auto_order(problem.model, (), {"y": y}),
            "methods": {},
        }
        for label, order in orders(problem, y).items():
            runs = []
            for seed in range(args.seeds):
                runs.append(
                    one_run(
                        problem, y, ref, order, steps=args.steps, particles=args.particles,
                        seed=seed, num_draws=args.num_draws,
                    )
                )
                print(f"{name} {label} seed {seed}: {runs[-1]}", file=sys.stderr, flush=True)
            entry["methods"][label] = {"summary": summarize(runs), "runs": runs}
        results["problems"][name] = entry
        if not args.smoke:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=1))
    print_table(results)
    return 0


def print_table(results: dict) -> None:
    b = results["budget"]
    print(f"budget: {b['steps']} steps x {b['particles']} particles, {b['seeds']} seeds")
    print(f"{'problem':15} {'order':6} {'W2 med [min, max]':26} {'floor':>6} {'k-hat med':>9} "
          f"{'fail':>4}  order used")
    for name, entry in results["problems"].items():
        for label, m in entry["methods"].items():
            s = m["summary"]
            ok = [r for r in m["runs"] if not r["failed"]]
            floor = ok[0]["w2_standardized_noise_floor"] if ok else float("nan")
            w2 = (f"{s['w2_standardized_median']:.3f} [{s['w2_standardized_min']:.3f}, "
                  f"{s['w2_standardized_max']:.3f}]" if ok else "-")
            khat = f"{s['khat_median']:.2f}" if ok else "-"
            used = ok[0]["order"] if ok else "-"
            print(f"{name:15} {label:6} {w2:26} {floor:6.3f} {khat:>9} {s['failures']:>4}  "
                  f"{used}")


if __name__ == "__main__":
    sys.exit(main())
