"""``fit(lr_decay_from="plateau")`` against the default lr end game on suite problems (issue 16).

The arm ``cand_plateau`` is the suite's default recipe (``AutoKR(model)``,
``TransportELBO(Annealing.over(steps))``, 8 vectorized particles, Adam lr 1e-2, float64, the
bench default steps, floors and W2 metric of ``benchmarks/suite.py``) with one change: ``fit``'s
lr decay starts where the plateau rule says (after the annealing ramp, once the loss stopped
improving; at the latest at 85 % of the steps; ``pyro_kr.fit.loss_plateaued``) instead of at
the ramp's end (70 %). Each row records ``lr_decay_start`` (the step chosen). The arm is
registered in ``suite.py``'s ``VARIANTS`` at run time and run through its ``main``; the default
(``autokr_monotone``) can be rerun into the same file as the baseline of the same run
(``--with-default``). ``--table`` prints the comparison with the stored default rows of
``benchmarks/results/suite.json``.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/lr_plateau_suite.py --seeds 0 1 2 3 4 \\
        --problems linear_gaussian eight_schools darcy_2d lotka_volterra
    python benchmarks/lr_plateau_suite.py --table
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import suite  # noqa: E402

import pyro_kr  # noqa: E402

OUT = Path(__file__).parent / "results" / "lr_plateau_suite.json"
STORED = Path(__file__).parent / "results" / "suite.json"


def plateau_variant(rule="plateau"):
    """The default recipe with ``fit(lr_decay_from=rule)``; the decay start in ``extra``."""
    return suite.end_game_variant({"lr_decay_from": rule},
                                  lambda history: {"lr_decay_start": history.lr_decay_start})


def table(out: Path) -> str:
    """Per problem: W2 by seed of the plateau arm, the default rerun here (if any) and the
    stored default, with medians, the floor and the decay starts."""
    data = json.loads(out.read_text())
    stored = json.loads(STORED.read_text())["problems"]
    lines = ["| problem | arm | W2 by seed | median | floor | decay start (fraction) |",
             "|---|---|---|---|---|---|"]
    for name, entry in data["problems"].items():
        steps = entry["steps"]
        arms = [(m, entry["methods"][m]) for m in ("cand_plateau", "autokr_monotone")
                if m in entry["methods"]]
        seeds = {r["seed"] for r in entry["methods"].get("cand_plateau", [])}
        arms.append(("stored default", [r for r in stored[name]["methods"]["autokr_monotone"]
                                        if r["seed"] in seeds]))
        for arm, rows in arms:
            w2 = [r.get("w2", float("inf")) for r in rows]
            starts = [r.get("lr_decay_start") for r in rows]
            start = ("/".join(f"{s / steps:.3f}" for s in starts) if all(starts)
                     else f"{pyro_kr.Annealing.over(steps).steps / steps:.3f} (ramp end)")
            lines.append(f"| {name} | {arm} | {'/'.join(f'{v:.4f}' for v in w2)} | "
                         f"{statistics.median(w2):.4f} | {rows[0]['floor']:.4f} | {start} |")
    return "\n".join(lines)


def main() -> int:
    return suite.end_game_main(
        __doc__.splitlines()[0], {"cand_plateau": plateau_variant()},
        ["linear_gaussian", "eight_schools", "darcy_2d", "lotka_volterra"], OUT, table)

if __name__ == "__main__":
    sys.exit(main())
