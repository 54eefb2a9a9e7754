"""The stall check on stored suite runs (issue 18, "no silent stall"): the old rule against the
current one, on every run the suite results flagged "stalled at the prior" and on true stalls.

* ``flagged``: every run whose stored row in ``benchmarks/results/suite*.json`` carries the
  warning "stalled at the prior", rerun through ``benchmarks/suite.py``'s methods (the same
  code, seed and budget; the W2 is recomputed and must equal the stored one);
* ``untrained``: true stalls, an untrained guide (20 steps at lr 1e-9, seed 0; the default
  ``AutoKR`` with ``Annealing.over(20)`` and ``AutoNormal`` with ``Trace_ELBO``, 8 vectorized
  particles) on every suite problem.

For each: ``check_fit`` with ``fit``'s settings (500 vectorized draws, seed 0, float64, no
start: what a standalone call sees), its numbers (k-hat, prior k-hat, shift, ELBO, the prior's
ELBO, gap, progress), the status of the rule before 2026-12-05 recomputed from the same numbers
("at_prior" when k-hat and the prior's k-hat exceed 0.7 and the shift is under 0.5 prior IQR or
the ELBO under the prior's + 1), and the ``FitWarning`` that ``fit`` itself gave (with the start
it keeps). Writes ``benchmarks/results/stall_check.json`` and prints a table.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/stall_check.py          # both sets
    python benchmarks/stall_check.py --table
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import pyro
import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))

import suite  # noqa: E402

import pyro_kr  # noqa: E402
from pyro_kr import metrics  # noqa: E402
from pyro_kr.bench import methods, problems, runner  # noqa: E402
from pyro_kr.diagnostics.psis import KHAT_OK  # noqa: E402
from pyro_kr.diagnostics.stall import ELBO_MARGIN, SHIFT_TOL, check_fit  # noqa: E402

RESULTS = Path(__file__).parent / "results"
STORED = ("suite.json", "suite_recipe_screen.json", "suite_restarts.json")
KINDS = {"stalled at the prior": "stalled", "misses part of": "collapsed",
         "the fit diverged": "diverged", "worse than the Laplace Gaussian": "worse than Gaussian"}


def old_status(r) -> str:
    """The rule before 2026-12-05, from the same numbers."""
    if not r.khat > KHAT_OK:
        return "ok"
    if r.prior_khat > KHAT_OK and (r.shift < SHIFT_TOL or r.elbo <= r.prior_elbo + ELBO_MARGIN):
        return "at_prior"
    return "collapsed"


def flagged_cases() -> list[tuple[str, str, str, int]]:
    out = []
    for fname in STORED:
        data = json.loads((RESULTS / fname).read_text())
        for pname, entry in data["problems"].items():
            for mname, rows in entry["methods"].items():
                for r in rows:
                    if any("stalled at the prior" in w for w in r.get("fit_warnings", [])):
                        out.append((fname, pname, mname, r["seed"]))
    return out


def untrained(problem, y, kind: str, seed: int = 0):
    with methods.float64():
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        if kind == "autokr":
            guide = pyro_kr.AutoKR(problem.model)
            loss = pyro_kr.TransportELBO(pyro_kr.Annealing.over(20), num_particles=8,
                                         vectorize_particles=True)
        else:
            guide = pyro.infer.autoguide.AutoNormal(problem.model)
            loss = pyro.infer.Trace_ELBO(num_particles=8, vectorize_particles=True)
        pyro_kr.fit(problem.model, guide, y=y, loss=loss, steps=20, lr=1e-9, progress=False)
    return guide


def one(case) -> dict:
    fname, pname, mname, seed = case
    problem = problems.get(pname)
    y = problem.observation(0)
    cpu = time.process_time()
    row: dict = {"set": "untrained" if fname == "untrained" else "flagged", "source": fname,
                 "problem": pname, "guide": mname, "seed": seed}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if fname == "untrained":
            guide = untrained(problem, y, mname, seed)
        else:
            ref, _ = runner.load_reference(problem, 0)
            steps = runner.default_steps(pname)
            res = suite.get_method(mname)(problem, y, steps=steps, seed=seed, num_draws=4000)
            guide = res.guide
            with methods.float64():
                row["w2"] = float(metrics.compare(res.draws, ref, metrics=("w2_standardized",),
                                                  n=2000, seed=seed)["w2_standardized"])
            stored = json.loads((RESULTS / fname).read_text())
            row["stored_w2"] = [r for r in stored["problems"][pname]["methods"][mname]
                                if r["seed"] == seed][0]["w2"]
    row["fit_says"] = sorted({kind for w in caught if w.category.__name__ == "FitWarning"
                              for text, kind in KINDS.items() if text in str(w.message)})
    with methods.float64():
        r = check_fit(guide, problem.model, y=y, num_samples=500, vectorize=True)
    row.update(khat=r.khat, prior_khat=r.prior_khat, shift=r.shift, elbo=r.elbo,
               prior_elbo=r.prior_elbo, gain=r.elbo - r.prior_elbo, gap=r.gap,
               progress=r.progress, old_rule=old_status(r), new_rule_alone=r.status,
               cpu_s=round(time.process_time() - cpu, 1))
    return row


def table(rows: list[dict]) -> str:
    head = ["set", "problem", "guide", "seed", "W2 (stored)", "k-hat", "prior k-hat", "shift",
            "gain", "gap", "progress", "old rule", "new rule alone", "fit says now"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        w2 = (f"{r['w2']:.4g} ({r['stored_w2']:.4g})" if "w2" in r else "")
        lines.append("| " + " | ".join([
            r["set"], r["problem"], r["guide"], str(r["seed"]), w2, f"{r['khat']:.3g}",
            f"{r['prior_khat']:.3g}", f"{r['shift']:.2f}", f"{r['gain']:.4g}",
            f"{r['gap']:.3g}", f"{r['progress']:.4g}", r["old_rule"], r["new_rule_alone"],
            ", ".join(r["fit_says"]) or "nothing"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["flagged", "untrained"])
    parser.add_argument("--out", default=str(RESULTS / "stall_check.json"))
    parser.add_argument("--table", action="store_true", help="print the table of --out")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if not args.table:
        cases = []
        if "flagged" in args.sets:
            cases += flagged_cases()
        if "untrained" in args.sets:
            cases += [("untrained", p, g, 0) for g in ("autokr", "auto_normal")
                      for p in suite.SUITE]
        rows = []
        for case in cases:
            rows.append(one(case))
            print(json.dumps(rows[-1]), flush=True)
        runner.write_json_atomic({
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "settings": {"num_samples": 500, "seed": 0, "vectorize": True, "dtype": "float64",
                         "threads": 1},
            "rows": rows}, out)
    print(table(json.loads(out.read_text())["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
