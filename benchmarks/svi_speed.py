"""Seconds per SVI step: AutoKR (monotone) against AutoIAFNormal at matched particles and size.

Issue 3's speed target is "seconds per step within 1.5x of ``AutoIAFNormal`` at a comparable
parameter count". The accuracy benchmark (``benchmarks/svi.py``) cannot judge it: there the
AutoKR methods use 8 particles and the default monotone layers (25,600 parameters in 10-d)
against IAF's 1 particle and 2,272 parameters, and its timings share the machine with other
runs. This script times only the steps, on one problem, one thread, with every guide at the
same particle count (``Trace_ELBO`` for IAF, ``TransportELBO`` with the default annealing for
AutoKR, both vectorized over particles), for:

* ``autokr_default``: ``AutoKR(model)`` (2 monotone layers, hidden ``[max(32, 4d)] * 2``,
  8 bumps);
* ``autokr_small``: ``AutoKR(model, hidden_dims=[H, H], num_bumps=B)`` with ``H, B`` chosen so
  the parameter count is within 25% of IAF's;
* ``autokr_small_depth1``: the same with one monotone layer instead of two;
* ``auto_iaf``: ``AutoIAFNormal(model, num_transforms=2)`` (Pyro's default hidden width).

Each timing is the median over ``--repeats`` blocks of ``--steps`` steps after ``--warmup``
steps. Writes ``benchmarks/results/svi_speed.json`` and prints a table. Run it on an idle
machine: every other process on the 2 cores distorts the numbers.

    python benchmarks/svi_speed.py                   # ~2 minutes
    python benchmarks/svi_speed.py --smoke           # seconds, nothing written
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
from pyro_kr._atomic import atomic_path  # noqa: E402
from pyro_kr.bench import problems  # noqa: E402

RESULTS = Path(__file__).parent / "results"
GUIDES = ("auto_iaf", "autokr_small", "autokr_small_depth1", "autokr_default")


def make_guide(name: str, model, hidden: int, bumps: int):
    from pyro.infer.autoguide import AutoIAFNormal

    if name == "auto_iaf":
        return AutoIAFNormal(model, num_transforms=2)
    if name == "autokr_small":
        return pyro_kr.AutoKR(model, hidden_dims=[hidden, hidden], num_bumps=bumps)
    if name == "autokr_small_depth1":
        return pyro_kr.AutoKR(model, depth=1, hidden_dims=[hidden, hidden], num_bumps=bumps)
    return pyro_kr.AutoKR(model)


def make_loss(name: str, particles: int, steps: int):
    from pyro.infer import Trace_ELBO

    if name == "auto_iaf":
        return Trace_ELBO(num_particles=particles, vectorize_particles=particles > 1)
    schedule = pyro_kr.Annealing(steps=steps)
    return pyro_kr.TransportELBO(schedule, num_particles=particles,
                                 vectorize_particles=particles > 1)


def time_guide(problem, y, name: str, *, particles: int, args) -> dict:
    """Median seconds per step over ``args.repeats`` blocks, and the parameter count."""
    from pyro.infer import SVI
    from pyro.optim import Adam

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    total = args.warmup + args.repeats * args.steps
    guide = make_guide(name, problem.model, args.hidden, args.bumps)
    svi = SVI(problem.model, guide, Adam({"lr": 1e-2}), make_loss(name, particles, total))
    for _ in range(args.warmup):
        svi.step(y=y)
    blocks = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            svi.step(y=y)
        blocks.append((time.perf_counter() - start) / args.steps)
    params = int(sum(p.numel() for p in pyro.get_param_store().values()))
    return {"seconds_per_step": statistics.median(blocks), "blocks": blocks, "params": params}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--problem", default="linear_gaussian")
    ap.add_argument("--particles", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--hidden", type=int, default=10, help="autokr_small hidden width")
    ap.add_argument("--bumps", type=int, default=2, help="autokr_small bumps per component")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "svi_speed.json"))
    ap.add_argument("--smoke", action="store_true", help="a few steps, nothing written")
    args = ap.parse_args(argv)
    if args.smoke:
        args.warmup, args.steps, args.repeats, args.particles = 2, 3, 1, [2]
    p = problems.get(args.problem)
    y = p.observation(0)
    torch.set_default_dtype(torch.float64)
    rows = {}
    for particles in args.particles:
        for name in GUIDES:
            rows[f"{name}/{particles}"] = {
                "guide": name, "particles": particles,
                **time_guide(p, y, name, particles=particles, args=args),
            }
    for particles in args.particles:
        iaf = rows[f"auto_iaf/{particles}"]["seconds_per_step"]
        for name in GUIDES[1:]:
            row = rows[f"{name}/{particles}"]
            row["ratio_to_iaf"] = row["seconds_per_step"] / iaf
    lines = [f"\n### {args.problem} (d = {p.dim}), seconds per step, 1 thread", "",
             "| guide | particles | params | s/step | ratio to auto_iaf |",
             "|---|---|---|---|---|"]
    for row in rows.values():
        ratio = row.get("ratio_to_iaf")
        ratio_text = "" if ratio is None else f"{ratio:.2f}"
        lines.append(f"| {row['guide']} | {row['particles']} | {row['params']} | "
                     f"{row['seconds_per_step']:.5f} | {ratio_text} |")
    print("\n".join(lines))
    if args.smoke:
        return 0
    payload = {
        "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
        "settings": vars(args),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__,
        "rows": rows,
    }
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(payload, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
