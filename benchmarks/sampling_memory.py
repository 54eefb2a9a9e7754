"""Peak resident memory of sampling a sparse ``AutoKR`` (``structure="plates"``), chunked or not.

Each measurement runs in a fresh Python process (``ru_maxrss`` is a per-process peak): build the
sparse monotone ``AutoKR`` of the centered hierarchy of ``benchmarks/hierarchical.py`` with
``--groups`` groups, run it once, then draw ``--draws`` draws with ``sample_posterior`` or
``pyro_kr.diagnostics.psis`` under a chunk budget (``pyro_kr.guides.chunks.
SAMPLE_CHUNK_COORDINATES``: the library's default, or ``inf`` for one call, as before chunking).
Reported: the growth of the peak resident memory over the built guide, bytes per drawn
coordinate (draws x latents) and wall seconds (``budget`` null: one call; the budget is divided
by the guide's ``sampling_cost``, 8 for this sparse map). The map is not trained (memory does
not depend on the parameters' values).

    OMP_NUM_THREADS=1 python benchmarks/sampling_memory.py            # N = 1,000, 4,000 draws
    python benchmarks/sampling_memory.py --smoke                      # N = 50, 500 draws, no file

Writes ``benchmarks/results/sampling_memory.json`` (rows) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "sampling_memory.json"


def measure(mode: str, groups: int, draws: int, budget: str) -> dict:
    """One measurement in this process (call it in a fresh one)."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    import hierarchical as H

    import pyro_kr
    from pyro_kr.diagnostics import psis
    from pyro_kr.guides import chunks

    torch.set_num_threads(1)
    if budget != "default":
        chunks.SAMPLE_CHUNK_COORDINATES = float(budget)
    y, sigma = H.make_data(groups)
    guide = pyro_kr.AutoKR(H.model, structure="plates")
    guide(y, sigma)
    psis(guide, H.model, y, sigma, num_samples=2)  # imports arviz before measuring
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # noqa: E731
    base = rss()
    start = time.perf_counter()
    if mode == "sample_posterior":
        guide.sample_posterior(draws, y, sigma)
    else:
        psis(guide, H.model, y, sigma, num_samples=draws)
    seconds = time.perf_counter() - start
    grown = rss() - base
    coords = draws * guide.latent_dim
    return {"mode": mode, "groups": groups, "latents": guide.latent_dim, "draws": draws,
            "budget": None if math.isinf(chunks.SAMPLE_CHUNK_COORDINATES)
            else int(chunks.SAMPLE_CHUNK_COORDINATES),
            "sampling_cost": guide.sampling_cost,
            "grown_mb": grown / 2**20, "bytes_per_coordinate": grown / coords,
            "seconds": seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", type=int, default=1000)
    p.add_argument("--draws", type=int, default=4000)
    p.add_argument("--modes", nargs="+", default=["sample_posterior", "psis"],
                   choices=["sample_posterior", "psis"])
    p.add_argument("--budgets", nargs="+", default=["default", "inf"],
                   help="chunk budgets in coordinates: 'default' (the library's) or a number")
    p.add_argument("--smoke", action="store_true", help="N = 50, 500 draws, no file written")
    p.add_argument("--child", nargs=4, metavar=("MODE", "GROUPS", "DRAWS", "BUDGET"),
                   help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        mode, groups, draws, budget = a.child
        print(json.dumps(measure(mode, int(groups), int(draws), budget)))
        return
    if a.smoke:
        a.groups, a.draws = 50, 500
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    for mode in a.modes:
        for budget in a.budgets:
            if budget != "default" and not float(budget) > 0:
                raise SystemExit(f"--budgets: {budget!r} is not 'default' or a positive number")
            cmd = [sys.executable, __file__, "--child", mode, str(a.groups), str(a.draws), budget]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'mode':<17} {'groups':>6} {'draws':>6} {'budget/cost':>12} {'grown MB':>9} "
          f"{'B/coord':>8} {'s':>6}")
    for r in rows:
        budget = "one call" if r["budget"] is None else f"{r['budget']}/{r['sampling_cost']:g}"
        print(f"{r['mode']:<17} {r['groups']:>6} {r['draws']:>6} {budget:>12} "
              f"{r['grown_mb']:>9.0f} {r['bytes_per_coordinate']:>8.0f} {r['seconds']:>6.2f}")
    if not a.smoke:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
