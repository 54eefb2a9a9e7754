"""``fit(average_from=...)`` (a tail average of the iterates) against the default end game on
suite problems (issue 18; the N = 1,000 hierarchy is ``hierarchical_recipe.py
--average-from``).

Each arm is the suite's default recipe (``AutoKR(model)``,
``TransportELBO(Annealing.over(steps))``, 8 vectorized particles, Adam lr 1e-2, float64, the
bench default steps, floors and W2 metric of ``benchmarks/suite.py``) with one change to
``fit``'s end game:

- ``cand_avg85_const``: a constant lr (``lr_decay=False``) and the uniform average of the
  iterates after 85 % of the steps (``average_from=0.85``) in place of the lr decay;
- ``cand_avg70_const``: the same, averaged after 70 % (the end of the annealing ramp);
- ``cand_avg85``: the default lr decay after the ramp *and* the average after 85 %.

Each row records ``average_starts`` / ``averaged_steps``. The arms are registered in
``suite.py``'s ``VARIANTS`` at run time and run through its ``main``; ``--with-default``
reruns the default (``autokr_monotone``) into the same file as the baseline of the same run.
``--table`` prints the comparison with the stored default rows of
``benchmarks/results/suite.json``.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/averaging_suite.py --arms cand_avg85_const \\
        --seeds 0 1 2 3 4 --problems darcy_2d lotka_volterra banana symmetric_modes
    python benchmarks/averaging_suite.py --table
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import suite  # noqa: E402

OUT = Path(__file__).parent / "results" / "averaging_suite.json"
STORED = Path(__file__).parent / "results" / "suite.json"
ARMS = {
    "cand_avg85_const": {"average_from": 0.85, "lr_decay": False},
    "cand_avg70_const": {"average_from": 0.7, "lr_decay": False},
    "cand_avg85": {"average_from": 0.85},
}


def average_variant(options: dict):
    """The default recipe with ``fit(**options)``; the average's start and size in ``extra``."""
    return suite.end_game_variant(options, lambda history: {
        "average_starts": history.average_starts, "averaged_steps": history.averaged_steps})


def table(out: Path) -> str:
    """Per problem and arm: W2 by seed, median, median W2 / median floor, and the arm's wins
    against the stored default on the same seeds (mode share errors on symmetric_modes)."""
    data = json.loads(out.read_text())
    stored = json.loads(STORED.read_text())["problems"]
    lines = ["| problem | arm | W2 by seed | median | / floor | better than default on |",
             "|---|---|---|---|---|---|"]
    for name, entry in data["problems"].items():
        default = {r["seed"]: r for r in stored[name]["methods"]["autokr_monotone"]}
        arms = [(m, entry["methods"][m]) for m in (*ARMS, "autokr_monotone")
                if m in entry["methods"]]
        seeds = sorted({r["seed"] for _, rows in arms for r in rows})
        arms.append(("stored default", [default[s] for s in seeds if s in default]))
        floor = statistics.median(r["floor"] for r in arms[-1][1])
        for arm, rows in arms:
            w2 = [r.get("w2", float("inf")) for r in rows]
            med = statistics.median(w2)
            cell = "/".join(f"{v:.4g}" for v in w2)
            if name == "symmetric_modes":
                cell += " (share err " + "/".join(f"{r.get('max_share_error', 1):.2f}"
                                                  for r in rows) + ")"
            wins = sum(r.get("w2", float("inf")) < default[r["seed"]]["w2"] for r in rows
                       if r["seed"] in default)
            lines.append(f"| {name} | {arm} | {cell} | {med:.4g} | {med / floor:.3f}x | "
                         f"{wins} of {len(rows)} |")
    return "\n".join(lines)


def main() -> int:
    return suite.end_game_main(
        __doc__.splitlines()[0], {arm: average_variant(options) for arm, options in ARMS.items()},
        ["darcy_2d", "lotka_volterra", "banana", "symmetric_modes"], OUT, table,
        default_arms=["cand_avg85_const"])

if __name__ == "__main__":
    sys.exit(main())
