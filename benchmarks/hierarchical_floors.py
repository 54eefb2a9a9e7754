"""Noise floors of the hierarchical benchmark's normal model (``benchmarks/hierarchical.py``).

The benchmark scores a guide by 4,000 of its draws against 4,000 exact reference draws, so a
guide equal to the posterior still shows errors. For N = 8, 100 and 1,000 groups this script
writes, for the globals ``(mu, log tau)``:

* the exact posterior mean and sd (400,000 reference draws);
* the floor of the table's metric as the benchmark states it: the second reference set (seed 1)
  scored against the first (seed 0), W2 on 1,000 draws each and the relative sd errors
  ``|sd(b) / sd(a) - 1|`` on 4,000;
* the expected relative sd error between two independent sets of 4,000 exact draws (mean over
  ``--pairs`` pairs drawn from the 400,000): the floor without the luck of one pair.

    python benchmarks/hierarchical_floors.py            # writes results/hierarchical_floors.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import hierarchical as H  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "hierarchical_floors.json"
NAMES = ("mu", "log_tau")


def floors(n: int, pairs: int, draws: int = 4000) -> dict:
    y, sigma = H.make_data(n)
    a, _ = H.reference(y, sigma, draws)
    b, _ = H.reference(y, sigma, draws, seed=1)
    big, _ = H.reference(y, sigma, 100 * draws, seed=7)
    rng = np.random.default_rng(0)
    expected = np.mean([
        np.abs(big[rng.choice(len(big), draws)].std(0) / big[rng.choice(len(big), draws)].std(0)
               - 1)
        for _ in range(pairs)
    ], axis=0)
    row = {"groups": n, "draws": draws, "pairs": pairs,
           "floor_w2_globals": H.w2_2d(b[:1000], a[:1000])}
    for i, k in enumerate(NAMES):
        row[f"exact_mean_{k}"] = float(big[:, i].mean())
        row[f"exact_sd_{k}"] = float(big[:, i].std())
        row[f"floor_sd_err_{k}"] = float(abs(b[:, i].std() / a[:, i].std() - 1))
        row[f"expected_sd_err_{k}"] = float(expected[i])
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--groups", type=int, nargs="+", default=[8, 100, 1000])
    p.add_argument("--pairs", type=int, default=400)
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("--smoke", action="store_true", help="N = 8, 20 pairs, no file written")
    a = p.parse_args()
    if a.smoke:
        a.groups, a.pairs = [8], 20
    rows = [floors(n, a.pairs) for n in a.groups]
    print("groups | floor W2 | floor sd err mu / log tau | expected sd err mu / log tau")
    for r in rows:
        print(f"{r['groups']} | {r['floor_w2_globals']:.4f} | {r['floor_sd_err_mu']:.4f} / "
              f"{r['floor_sd_err_log_tau']:.4f} | {r['expected_sd_err_mu']:.4f} / "
              f"{r['expected_sd_err_log_tau']:.4f}")
    if not a.smoke:
        a.output.write_text(json.dumps({"rows": rows, "command": " ".join(sys.argv)}, indent=1))


if __name__ == "__main__":
    main()
