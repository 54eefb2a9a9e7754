"""Replay ``fit_amortized(stop_after_cuts=k)`` on the stored forward runs' validation traces.

The forward phase's steps do not depend on when it stops: the minibatches come from the
seeded generator, the checks draw nothing, and the lr cuts follow the smoothed validation
loss. So a run that stops earlier is a prefix of the stored run, and the parameters it keeps
are those of the best check in that prefix. This script reads every forward row with
``fit_amortized``'s defaults in ``benchmarks/results/amortized_peers.json`` (their
``val_step``, ``val_loss`` and ``lr_cuts``) and reports, for ``k`` = 2, 3, 4: where the run
would have stopped (the check of the ``k``-th lr cut after the best check so far, or the
stored stop if earlier), how many steps that saves, and whether the kept check is the stored
run's best (then W2, MMD² and every parameter are those of the stored run, bit for bit).
It also gives, per run, the most cuts that came between one best check and the next.

    python benchmarks/amortized_stop_replay.py          # table + results JSON

Writes ``benchmarks/results/amortized_stop_replay.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "results" / "amortized_peers.json"
OUT = ROOT / "benchmarks" / "results" / "amortized_stop_replay.json"


def replay(val_step: list[int], val_loss: list[float], lr_cuts: list[int],
           k: int) -> tuple[int | None, int | None]:
    """(stop step, kept best step) of ``stop_after_cuts=k`` on a stored trace.

    ``None`` for the stop: the rule does not fire before the stored run ended.

    >>> replay([10, 20, 30, 40, 50], [3.0, 2.0, 2.5, 2.4, 2.6], [30, 40, 50], k=2)
    (40, 20)
    """
    cuts = set(lr_cuts)
    best, best_step, since = math.inf, None, 0
    for step, value in zip(val_step, val_loss, strict=True):
        if value < best:
            best, best_step, since = value, step, 0
        since += step in cuts
        if since >= k:
            return step, best_step
    return None, best_step


def max_cuts_between_bests(val_step, val_loss, lr_cuts) -> int:
    """The most lr cuts that came before a new best check, counted from the previous one."""
    best, last, most = math.inf, 0, 0
    for step, value in zip(val_step, val_loss, strict=True):
        if value < best:
            most = max(most, sum(last < c <= step for c in lr_cuts))
            best, last = value, step
    return most


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default=str(PEERS))
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--k", type=int, nargs="+", default=[2, 3, 4])
    args = parser.parse_args(argv)
    rows = [r for r in json.loads(Path(args.peers).read_text())["rows"]
            if r.get("method") == "forward" and r.get("forward_defaults")
            and r.get("val_loss") and not r.get("stop_after_cuts")]
    out_rows = []
    for r in rows:
        entry = {"budget": r["budget"], "seed": r["seed"], "run": r.get("run"),
                 "validation_simulations": r.get("validation_simulations"),
                 "steps": r["steps"], "best_step": r["best_step"],
                 "lr_cuts": len(r.get("lr_cuts") or []),
                 "max_cuts_between_bests": max_cuts_between_bests(
                     r["val_step"], r["val_loss"], r.get("lr_cuts") or []),
                 "replay": {}}
        for k in args.k:
            stop, kept = replay(r["val_step"], r["val_loss"], r.get("lr_cuts") or [], k)
            stop = r["steps"] if stop is None or stop > r["steps"] else stop
            entry["replay"][str(k)] = {"steps": stop, "kept_best_step": kept,
                                       "same_best": kept == r["best_step"],
                                       "fewer_steps": 1 - stop / r["steps"]}
        out_rows.append(entry)
    summary = {}
    for k in args.k:
        kept = sum(e["replay"][str(k)]["same_best"] for e in out_rows)
        total = sum(e["steps"] for e in out_rows)
        new = sum(e["replay"][str(k)]["steps"] for e in out_rows)
        fewer = [e["replay"][str(k)]["fewer_steps"] for e in out_rows]
        summary[str(k)] = {"runs": len(out_rows), "same_best": kept,
                           "fewer_steps_total": 1 - new / total,
                           "fewer_steps_range": [min(fewer), max(fewer)] if fewer else None}
    result = {"source": str(Path(args.peers).relative_to(ROOT)) if Path(args.peers).is_absolute()
              and Path(args.peers).is_relative_to(ROOT) else args.peers,
              "rows": out_rows, "summary": summary}
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("| budget | seed | val. sims | steps (best) | most cuts between bests | "
          + " | ".join(f"k={k}: steps, same best" for k in args.k) + " |")
    print("|---" * (5 + len(args.k)) + "|")
    for e in out_rows:
        cells = []
        for k in args.k:
            r = e["replay"][str(k)]
            cells.append(f"{r['steps']:,} ({100 * r['fewer_steps']:.1f} % fewer), "
                         f"{'yes' if r['same_best'] else 'NO'}")
        print(f"| {e['budget']:,} | {e['seed']} | {e['validation_simulations']:,} | "
              f"{e['steps']:,} ({e['best_step']:,}) | {e['max_cuts_between_bests']} | "
              + " | ".join(cells) + " |")
    for k, s in summary.items():
        print(f"k={k}: same best check in {s['same_best']} of {s['runs']} runs; "
              f"{100 * s['fewer_steps_total']:.1f} % fewer steps in all "
              f"(per run {100 * s['fewer_steps_range'][0]:.1f}-"
              f"{100 * s['fewer_steps_range'][1]:.1f} %)")
    return result


if __name__ == "__main__":
    main()
