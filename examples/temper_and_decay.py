"""AutoKR's end game on a Gaussian posterior: constant Adam vs likelihood tempering + lr decay.

``pyro_kr.bench.problems.get("linear_gaussian")`` has a Gaussian posterior known exactly.
The same monotone ``AutoKR`` is trained twice with the same steps and particles:

* ``TransportELBO(Annealing.over(steps))`` with ``fit``'s constant learning rate;
* the same ramp with a likelihood temperature ``beta`` rising from 1e-2 to 1 over it
  (``Annealing.over(steps, beta=(1e-2, 1.0))``) and ``fit(..., lr_decay=True)``, which holds
  the learning rate until the ramp ends and then decays it to 1 % by the last step.

It prints the standardized W2 of each fit to exact draws next to the noise floor (two sets of
exact draws of the same size). docs/hard_posteriors.md has the suite-wide table.

Run: python examples/temper_and_decay.py [--smoke] [--steps N] [--seed S]
"""

from __future__ import annotations

import argparse

import pyro
import torch

import pyro_kr
from pyro_kr import metrics
from pyro_kr.bench import problems


def train(problem, y, steps: int, recipe: bool, seed: int) -> pyro_kr.AutoKR:
    """One monotone AutoKR fit; ``recipe`` adds tempering and the lr decay."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = pyro_kr.AutoKR(problem.model)
    beta = (1e-2, 1.0) if recipe else 1.0
    loss = pyro_kr.TransportELBO(pyro_kr.Annealing.over(steps, beta=beta), num_particles=8)
    pyro_kr.fit(problem.model, guide, y=y, loss=loss, steps=steps, lr=1e-2, progress=False,
                lr_decay=recipe, check=False)
    return guide


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run for CI")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    steps, n = (20, 300) if args.smoke else (args.steps, args.draws)
    torch.set_default_dtype(torch.float64)

    problem = problems.get("linear_gaussian")
    y = problem.observation(0)
    reference = problem.reference(0, num_samples=2 * n)
    out: dict[str, float] = {}
    for name, recipe in (("constant lr", False), ("tempering + lr decay", True)):
        guide = train(problem, y, steps, recipe, args.seed)
        draws = {k: v.numpy() for k, v in guide.sample_posterior(n, y=y).items()}
        scores = metrics.compare(draws, reference, metrics=("w2_standardized",), n=n)
        out[name] = scores["w2_standardized"]
        print(f"{name:>22}, {steps} steps x 8 particles: W2 (standardized) "
              f"{scores['w2_standardized']:.3f} (noise floor "
              f"{scores['w2_standardized_noise_floor']:.3f})")
    return out


if __name__ == "__main__":
    main()
