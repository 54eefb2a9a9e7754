"""Held-out Lotka-Volterra test observations with PyMC NUTS references (issue 12).

The amortized benchmarks score every method at one observation, the paper's. An amortized
posterior is meant for every observation, and a ranking at one observation can be that
observation's luck. This script draws ``--count`` pairs ``(u*, y)`` from the prior predictive
(``LotkaVolterra.simulate(count, seed=--seed)``) and samples a reference posterior for each
``y`` with PyMC NUTS on the problem's PyMC twin (:func:`pyro_kr.bench.reference.nuts`, numba
backend, as the shipped reference of observation 0), the chains started near ``u*``
(``u* exp(0.05 z)``). A run whose max R-hat exceeds ``RHAT_MAX`` or whose min bulk ESS is
below ``MIN_ESS`` (the shipped references' gate) is recorded as rejected and not used.

Each observation goes to ``--out-dir/obs{i}.npz`` (the draws, float32, one array per
parameter) and ``obs{i}.json`` (the observation, ``u*``, settings, R-hat, ESS, wall time), so
that several processes can build different ``--indices`` side by side.
``benchmarks/amortized_peers.py --test-observations DIR`` scores every method on them too.

Usage:
    python benchmarks/lv_test_observations.py --indices 0 1 2 3
    python benchmarks/lv_test_observations.py --smoke     # a few seconds: 2 chains x 50 draws
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import pyro_kr.bench.problems as problems
from pyro_kr._atomic import atomic_path
from pyro_kr.bench.problems.references import MIN_ESS, RHAT_MAX

DEFAULT_DIR = Path("benchmarks/data/lv_test_observations")


def test_pairs(count: int, seed: int):
    """``(u*, y)`` of the held-out observations: ``u*`` ``(count, 4)``, ``y`` ``(count, 22)``."""
    problem = problems.get("lotka_volterra")
    u, y = problem.simulate(count, seed=seed)
    names = problem.param_names
    return problem, np.stack([u[k].numpy() for k in names], -1), y.numpy()


def build(index: int, args) -> dict:
    """Sample the reference of test observation ``index`` and write its two files."""
    import arviz as az

    from pyro_kr.bench import reference

    problem, u_star, y = test_pairs(args.count, args.seed)
    names = problem.param_names
    rng = np.random.default_rng(args.mcmc_seed + index)
    initvals = [dict(zip(names, u_star[index] * np.exp(0.05 * z), strict=True))
                for z in rng.standard_normal((args.chains, len(names)))]
    start = time.perf_counter()
    idata = reference.nuts(
        problem, observation=y[index], draws=args.draws, tune=args.tune, chains=args.chains,
        seed=args.mcmc_seed + index, target_accept=0.9, compile_mode="NUMBA",
        init="adapt_diag", initvals=initvals, cache=False, rhat_max=float("inf"), min_ess=0.0,
        name=f"lotka_volterra_test{index}")
    wall = time.perf_counter() - start
    post = idata.posterior[names]
    rhat = max(float(v.max()) for v in az.rhat(post).data_vars.values())
    ess = min(float(v.min()) for v in az.ess(post, method="bulk").data_vars.values())
    accepted = rhat <= args.rhat_max and ess >= args.min_ess
    record = {
        "index": index, "simulation_seed": args.seed, "count": args.count,
        "observation": y[index].tolist(), "u_star": dict(zip(names, u_star[index].tolist(),
                                                             strict=True)),
        "settings": {"draws": args.draws, "tune": args.tune, "chains": args.chains,
                     "target_accept": 0.9, "compile_mode": "NUMBA",
                     "seed": args.mcmc_seed + index, "init": "u* exp(0.05 z), adapt_diag"},
        "max_rhat": rhat, "min_ess_bulk": ess,
        "divergences": int(idata.sample_stats["diverging"].values.sum()),
        "accepted": accepted, "gate": {"rhat_max": args.rhat_max, "min_ess": args.min_ess},
        "wall_time_s": round(wall, 1), "num_draws": args.draws * args.chains,
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if accepted:
        draws = {k: post[k].values.reshape(-1).astype(np.float32) for k in names}
        with atomic_path(out / f"obs{index}.npz", suffix=".tmp.npz") as tmp:
            np.savez_compressed(tmp, **draws)
    with atomic_path(out / f"obs{index}.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    verdict = "accepted" if accepted else "REJECTED (not used)"
    print(f"test observation {index}: max R-hat {rhat:.4f}, min bulk ESS {ess:.0f}, "
          f"{record['divergences']} divergences, {wall:.0f} s: {verdict}", flush=True)
    return record


def load(directory: str | Path) -> list[dict]:
    """The accepted test observations of ``directory``, by index: dicts with ``index``,
    ``observation`` (a list of 22 floats) and ``reference`` (``{name: array (n,)}``)."""
    directory = Path(directory)
    records = sorted((json.loads(p.read_text()) for p in directory.glob("obs*.json")),
                     key=lambda r: r["index"])
    out = []
    for record in records:
        if not record["accepted"]:
            continue
        with np.load(directory / f"obs{record['index']}.npz") as data:
            out.append({**record, "reference": {k: data[k] for k in data.files}})
    if not out:
        raise FileNotFoundError(
            f"no accepted test observation in {directory}: build them with "
            f"python benchmarks/lv_test_observations.py --out-dir {directory}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--indices", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--count", type=int, default=8, help="pairs drawn (indices < count)")
    parser.add_argument("--seed", type=int, default=4242, help="simulation seed of the pairs")
    parser.add_argument("--mcmc-seed", type=int, default=0, help="NUTS seed (+ index)")
    parser.add_argument("--draws", type=int, default=2500, help="kept draws per chain")
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--rhat-max", type=float, default=RHAT_MAX)
    parser.add_argument("--min-ess", type=float, default=MIN_ESS)
    parser.add_argument("--out-dir", default=None,
                        help=f"default {DEFAULT_DIR} "
                             "(--smoke: bench-out/lv_test_observations_smoke)")
    parser.add_argument("--smoke", action="store_true",
                        help="index 0, 2 chains x 50 draws, no gate: checks that it runs")
    args = parser.parse_args(argv)
    if args.smoke:
        args.indices, args.draws, args.tune, args.chains = [0], 50, 50, 2
        args.rhat_max, args.min_ess = float("inf"), 0.0
        args.out_dir = args.out_dir or "bench-out/lv_test_observations_smoke"
    args.out_dir = args.out_dir or str(DEFAULT_DIR)
    bad = [i for i in args.indices if not 0 <= i < args.count]
    if bad:
        parser.error(f"--indices must lie in 0..{args.count - 1} (--count), got {bad}")
    for index in args.indices:
        build(index, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
