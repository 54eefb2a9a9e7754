"""Scale out: a resumable simulation bank (local or Ray), then training under torchrun.

1. ``pyro_kr.simulate`` draws a Lotka-Volterra bank in chunks, written as shards to
   ``--bank``; stop it (Ctrl-C) and rerun: finished shards are skipped. ``--backend ray``
   runs one Ray task per chunk (``pip install "pyro_kr[distributed]"``) on a local cluster,
   or on the cluster at ``--address``. The same seed gives the same pairs on every backend.
2. ``fit_amortized(mode="forward", simulations=bank)`` streams the shards. The same script
   trains data-parallel when launched with ``torchrun`` (no change needed): gradients are
   averaged by DDP, only rank 0 prints and writes the checkpoint.

Usage:
    python examples/scale_out.py --backend ray --num-simulations 200000
    torchrun --nproc_per_node=2 examples/scale_out.py --num-simulations 200000
    python examples/scale_out.py --smoke
"""

from __future__ import annotations

import argparse
import tempfile
import time

import pyro
import torch

import pyro_kr
import pyro_kr.bench.problems as problems
from pyro_kr import distributed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="local", choices=["local", "ray"])
    parser.add_argument("--address", default=None, help="Ray cluster address")
    parser.add_argument("--num-simulations", type=int, default=50_000)
    parser.add_argument("--chunk-size", type=int, default=5_000)
    parser.add_argument("--bank", default="lv_bank", help="folder of the shards")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--smoke", action="store_true", help="a few seconds")
    args = parser.parse_args(argv)
    if args.smoke:
        args.num_simulations, args.chunk_size, args.steps, args.batch_size = 400, 100, 10, 32
        args.bank = tempfile.mkdtemp()
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    problem = problems.get("lotka_volterra", substeps=8 if args.smoke else 64)

    began = time.perf_counter()
    if distributed.is_main():  # one rank draws the bank; the others wait and open it
        bank = pyro_kr.simulate(
            problem.model, args.num_simulations, observed="y", seed=0, backend=args.backend,
            chunk_size=args.chunk_size, path=args.bank, address=args.address,
        )
        print(f"{bank} in {time.perf_counter() - began:.1f} s")
    distributed.setup()
    distributed.barrier()
    bank = pyro_kr.SimulationBank.load(args.bank)

    guide = pyro_kr.AmortizedKR(problem.model, observed="y",
                                **({"depth": 1, "hidden_dims": (16,)} if args.smoke else {}))
    history = pyro_kr.fit_amortized(
        problem.model, guide, mode="forward", simulations=bank, steps=args.steps,
        batch_size=args.batch_size, lr=1e-3, checkpoint=args.checkpoint,
        validate_every=max(1, args.steps // 10), progress=not args.smoke,
    )
    if distributed.is_main():
        print(f"{distributed.world_size()} process(es): {history.steps} steps in "
              f"{history.seconds:.1f} s, validation loss {history.val_loss[-1]:.4g}")
        draws = guide.sample(problem.observation(0), 1000)
        print({k: round(float(v.mean()), 3) for k, v in draws.items()})


if __name__ == "__main__":
    main()
