"""AutoKR's end game on a Gaussian posterior: the old constant-lr recipe vs the default recipe
(likelihood tempering + lr decay after the ramp).

``pyro_kr.bench.problems.get("linear_gaussian")`` has a Gaussian posterior known exactly.
The same monotone ``AutoKR`` is trained twice with the same steps and particles:

* the recipe before 2026-12-05, now spelled out: ``Annealing.over(steps, beta=1.0)`` (no
  tempering) and ``fit(..., lr_decay=False)`` (a constant learning rate);
* the default: ``TransportELBO(Annealing.over(steps))``, whose likelihood temperature ``beta``
  rises from 1e-2 to 1 on the ramp, and ``fit``'s default ``lr_decay=None``, which holds the
  learning rate until the ramp ends and then decays it to 1 % by the last step.

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


def train(problem, y, steps: int, default: bool, seed: int) -> pyro_kr.AutoKR:
    """One monotone AutoKR fit: the default recipe, or the old one (``default=False``)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = pyro_kr.AutoKR(problem.model)
    old = {} if default else {"beta": 1.0}
    loss = pyro_kr.TransportELBO(pyro_kr.Annealing.over(steps, **old), num_particles=8)
    pyro_kr.fit(problem.model, guide, y=y, loss=loss, steps=steps, lr=1e-2, progress=False,
                check=False, **({} if default else {"lr_decay": False}))
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
    for name, default in (("old: constant lr", False), ("default: temper + decay", True)):
        guide = train(problem, y, steps, default, args.seed)
        draws = {k: v.numpy() for k, v in guide.sample_posterior(n, y=y).items()}
        scores = metrics.compare(draws, reference, metrics=("w2_standardized",), n=n)
        out[name] = scores["w2_standardized"]
        print(f"{name:>24}, {steps} steps x 8 particles: W2 (standardized) "
              f"{scores['w2_standardized']:.3f} (noise floor "
              f"{scores['w2_standardized_noise_floor']:.3f})")
    return out


if __name__ == "__main__":
    main()
