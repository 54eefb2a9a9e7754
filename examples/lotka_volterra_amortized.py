"""Amortized Lotka-Volterra posteriors: train once, then answer any observation in milliseconds.

Trains :class:`pyro_kr.AmortizedKR` on the predator-prey problem of docs/problems.md (paper
004's setting), by reverse KL (amortized ELBO + transport cost, fresh simulations every step)
or forward KL (maximum likelihood on a fixed bank of simulations). Then:

* compares the posterior of the benchmark observation with the shipped PyMC reference draws
  (means, standard deviations and W2);
* times 10,000 posterior draws for a *new* observation (no retraining);
* runs simulation-based calibration and prints the per-parameter p-values;
* ``--calibrated`` (reverse mode) trains with the reweighted wake objective and the forward
  anchor (``objective="rws", forward_weight=1``): wider, calibrated posteriors instead of the
  overconfident amortized ELBO (docs/amortized.md, "Location error or width?");
* ``--warmup-steps N`` (reverse mode) first trains N steps of forward NLL on fresh
  simulations (``fit_amortized(warmup_steps=N)``: batch 256, lr 2e-3, no model evaluations),
  then refines with the ``--steps`` reverse steps (docs/amortized.md, "Reverse mode with a
  warm-up"); with ``--smoke`` the warm-up is 5 steps;
* ``--mode hybrid`` trains forward on the simulation bank, then refines with the likelihood
  for ``--reverse-steps`` steps of ``--reverse-batch-size`` datasets each
  (``fit_amortized(mode="hybrid", reverse_batch_size=...)``; with ``--calibrated`` the
  refinement is ``objective="rws", forward_weight=1``: docs/amortized.md, "Hybrid with the
  calibrated refinement at the paper budget");
* ``--average-from F`` keeps the tail average of the parameters over the last ``1 - F`` of
  each phase's steps (``fit_amortized(average_from=F)``, Polyak-Ruppert / SWA averaging;
  with ``--warmup-steps`` the warm-up and the refinement are averaged separately:
  docs/amortized.md, "Iterate averaging");
* without ``--smoke``, saves the SBC and coverage plots to ``--out``.

The full run (the defaults below) takes about 20 minutes on a 2-core CPU machine; ``--smoke``
takes seconds.

Usage:
    python examples/lotka_volterra_amortized.py --mode forward --steps 4000
    python examples/lotka_volterra_amortized.py --mode reverse --steps 4000 --lr 1e-3
    python examples/lotka_volterra_amortized.py --mode reverse --calibrated --steps 1500
    python examples/lotka_volterra_amortized.py --mode reverse --calibrated --warmup-steps 14000 \
        --steps 1000 --batch-size 32
    python examples/lotka_volterra_amortized.py --mode reverse --calibrated --warmup-steps 13000 \
        --steps 1000 --batch-size 32 --average-from 0.75
    python examples/lotka_volterra_amortized.py --mode hybrid --calibrated --steps 4000 \
        --reverse-steps 1000 --reverse-batch-size 32
    python examples/lotka_volterra_amortized.py --smoke
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pyro
import torch

import pyro_kr
import pyro_kr.bench.problems as problems
from pyro_kr.diagnostics import coverage, sbc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", default="forward", choices=["forward", "reverse", "hybrid"])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--num-simulations", type=int, default=50_000)
    parser.add_argument("--depth", type=int, default=2, help="conditional monotone layers")
    parser.add_argument("--calibrated", action="store_true",
                        help="reverse mode (or hybrid's refinement): objective='rws' with "
                             "forward_weight=1")
    parser.add_argument("--reverse-steps", type=int, default=None,
                        help="hybrid mode: refinement steps (default: half of --steps)")
    parser.add_argument("--reverse-batch-size", type=int, default=None,
                        help="hybrid mode: datasets per refinement step (default --batch-size)")
    parser.add_argument("--warmup-steps", type=int, default=0,
                        help="reverse mode: forward-NLL warm-up steps on fresh simulations")
    parser.add_argument("--average-from", type=float, default=None,
                        help="tail average of the parameters after this fraction of each "
                             "phase's steps (fit_amortized(average_from=...), e.g. 0.75)")
    parser.add_argument("--sbc-datasets", type=int, default=200)
    parser.add_argument("--out", default="lotka_volterra_amortized", help="folder for figures")
    parser.add_argument("--smoke", action="store_true", help="a few seconds, no figures")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.batch_size, args.num_simulations, args.sbc_datasets = 5, 16, 200, 20
        args.depth = 1
        args.warmup_steps = min(args.warmup_steps, 5)
        args.reverse_steps = None if args.reverse_steps is None else min(args.reverse_steps, 5)
    else:
        print("full run: about 20 minutes on 2 CPU cores (--smoke takes seconds)", flush=True)
    if args.calibrated and args.mode == "forward":
        parser.error("--calibrated applies to --mode reverse or hybrid (forward mode is "
                     "mass-covering)")
    if args.mode != "hybrid" and (args.reverse_steps, args.reverse_batch_size) != (None, None):
        parser.error("--reverse-steps and --reverse-batch-size apply to --mode hybrid")
    if args.warmup_steps and args.mode != "reverse":
        parser.error("--warmup-steps applies to --mode reverse (forward mode is the warm-up's "
                     "objective already)")
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)

    problem = problems.get("lotka_volterra", substeps=8 if args.smoke else 64)
    model, names = problem.model, problem.param_names
    guide = pyro_kr.AmortizedKR(
        model, observed="y", depth=args.depth, num_standardize=200 if args.smoke else 1000,
        **({"hidden_dims": (16,)} if args.smoke else {}),
    )
    optim = pyro.optim.ClippedAdam({"lr": args.lr, "lrd": 0.05 ** (1 / args.steps)})
    began = time.perf_counter()
    history = pyro_kr.fit_amortized(
        model, guide, mode=args.mode, steps=args.steps, batch_size=args.batch_size,
        num_simulations=args.num_simulations if args.mode != "reverse" else None,
        validate_every=max(1, args.steps // 20), patience=5, optim=optim,
        progress=not args.smoke,
        **({"objective": "rws", "forward_weight": 1.0} if args.calibrated else {}),
        **({"warmup_steps": args.warmup_steps} if args.warmup_steps else {}),
        **({"average_from": args.average_from} if args.average_from is not None else {}),
        **({"reverse_steps": args.reverse_steps,
            "reverse_batch_size": args.reverse_batch_size} if args.mode == "hybrid" else {}),
    )
    print(f"{args.mode}: trained {history.steps} steps in {time.perf_counter() - began:.1f} s, "
          f"final loss {sum(history.loss[-10:]) / len(history.loss[-10:]):.4g}")
    if history.averaged_steps:
        print(f"tail averages swapped in: {history.averaged_steps} iterates (per phase)")
    if history.forward_steps is not None and args.mode == "reverse":
        print(f"of which {history.forward_steps} warm-up steps; {history.simulations} "
              f"simulations, {history.model_evaluations} model evaluations")

    # 1. the benchmark observation against the PyMC reference
    n = 500 if args.smoke else 5000
    draws = guide.sample(problem.observation(0), n)
    reference = problem.reference(0, num_samples=n)
    print(f"{'param':>6} {'mean q':>9} {'mean ref':>9} {'sd q':>8} {'sd ref':>8}")
    for k in names:
        ref = torch.as_tensor(reference[k], dtype=torch.float64)
        print(f"{k:>6} {float(draws[k].mean()):9.4f} {float(ref.mean()):9.4f} "
              f"{float(draws[k].std()):8.4f} {float(ref.std()):8.4f}")
    try:
        from pyro_kr.metrics import w2

        q = torch.stack([draws[k] for k in names], -1)
        r = torch.stack([torch.as_tensor(reference[k], dtype=torch.float64) for k in names], -1)
        print(f"W2 to the reference ({n} draws each): {w2(q, r):.4f}")
    except ImportError:
        print("W2 skipped (POT is not installed)")

    # 2. a new observation: no retraining, one batched call
    _, y_new = problem.simulate(1, seed=123)
    guide.sample(y_new[0], 10)  # warm-up
    t0 = time.perf_counter()
    guide.sample(y_new[0], 10_000)
    print(f"10,000 draws for a new observation: {1e3 * (time.perf_counter() - t0):.1f} ms")
    fast = guide.sampler()  # float32 snapshot for serving: same draws, to float32 rounding
    fast.sample(y_new[0], 10)
    t0 = time.perf_counter()
    fast.sample(y_new[0], 10_000)
    print(f"the same with the float32 snapshot: {1e3 * (time.perf_counter() - t0):.1f} ms")

    # 3. calibration
    result = sbc(guide, model, num_datasets=args.sbc_datasets,
                 num_draws=10 if args.smoke else 100)
    print("SBC p-values: " + ", ".join(
        f"{k}={p:.3f}" for k, p in zip(result.names, result.p_values, strict=True)))
    print(f"SBC uniform at the 1% level: {result.uniform}")
    if args.smoke:
        return
    from pyro_kr.diagnostics import coverage_plot, sbc_plot

    out = Path(args.out)
    sbc_plot(result, kind="ecdf", path=out / "sbc_ecdf.png")
    sbc_plot(result, kind="hist", path=out / "sbc_hist.png")
    cov = coverage(guide, model, num_datasets=args.sbc_datasets, num_draws=500)
    coverage_plot(cov, path=out / "coverage.png")
    print(f"saved figures to {out}/")


if __name__ == "__main__":
    main()
