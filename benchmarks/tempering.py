"""Likelihood tempering and lr decay on the one-mode problems: does either move the default
AutoKR's W2 (issue 18)?

Every run: ``AutoKR(model, order="model")`` (monotone map, the model's order: the default
before 2026-12-05, as the stored runs were measured), ``TransportELBO`` with
``Annealing.over(steps, beta=...)`` (``beta=1.0`` unless ``temper``), ``fit``'s constant lr
(``lr_decay=False``; the recipe before 2026-12-05), 8 vectorized particles, float64, the
problem's bench default steps
(``pyro_kr.bench.runner.default_steps``), seeds ``--seed0``..``--seeds``-1. Arms: ``adam``
(Adam lr 1e-2, the bench setting), ``temper`` (the same plus ``beta=(1e-2, 1.0)``),
``decay`` (ClippedAdam lr 1e-2 with ``lrd = 0.01 ** (1 / steps)``: the lr ends at 1 % of its
start). Scored by W2 on standardized coordinates against the problem's reference (n = 2000)
with its noise floor. Prints one line per run and writes ``--out`` (JSON).

    nice -n 10 python benchmarks/tempering.py --problems banana linear_gaussian \\
        --arms adam temper decay --seeds 2
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import pyro
import torch
from pyro.optim import ClippedAdam

torch.set_num_threads(1)

import pyro_kr  # noqa: E402
from pyro_kr import metrics  # noqa: E402
from pyro_kr.bench import methods, problems, runner  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def one_run(problem, y, ref, arm: str, *, steps: int, seed: int) -> dict:
    with methods.float64():
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        guide = pyro_kr.AutoKR(problem.model, order="model")
        beta = (1e-2, 1.0) if arm == "temper" else 1.0
        loss = pyro_kr.TransportELBO(pyro_kr.Annealing.over(steps, beta=beta), num_particles=8)
        if arm == "decay":
            options = {"optim": ClippedAdam({"lr": 1e-2, "lrd": 0.01 ** (1 / steps)})}
        else:
            options = {"lr": 1e-2, "lr_decay": False}  # constant lr, as measured
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pyro_kr.fit(problem.model, guide, y=y, loss=loss, steps=steps, progress=False,
                        check=False, **options)
        draws = methods.sample_guide(guide, problem.param_names, 4000, problem.param_shapes,
                                     y=y)
        scores = metrics.compare(draws, ref, metrics=("w2_standardized",), n=2000, seed=seed)
    return {"seed": seed, "w2_standardized": float(scores["w2_standardized"]),
            "w2_standardized_noise_floor": float(scores["w2_standardized_noise_floor"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=["banana"])
    parser.add_argument("--arms", nargs="+", default=["adam", "temper"],
                        choices=["adam", "temper", "decay"])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--seed0", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None,
                        help="override the bench default steps (e.g. 5 for a smoke run)")
    parser.add_argument("--out", default=str(RESULTS / "tempering_run.json"))
    args = parser.parse_args(argv)
    out: dict = {}
    for name in args.problems:
        problem = problems.get(name)
        y = problem.observation(0)
        ref, _ = runner.load_reference(problem, 0)
        steps = args.steps or runner.default_steps(name)
        for arm in args.arms:
            for seed in range(args.seed0, args.seeds):
                row = one_run(problem, y, ref, arm, steps=steps, seed=seed)
                out.setdefault(name, {"steps": steps}).setdefault(arm, []).append(row)
                print(name, arm, row, flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
