"""Screen of one change to the default recipe on the suite's 8 problems (docs/hard_posteriors.md).

The change (docs/hierarchical.md, "The default recipe at N = 1,000"): Adam's lr held until
``--hold`` of the steps (85 %), not the annealing ramp's end (70 %), then decayed geometrically
to 1 % of its start by the last step; everything else is the suite's default recipe
(``AutoKR(model, init_scale=0.1)``, ``TransportELBO(Annealing.over(steps))``, 8 particles,
Adam lr 1e-2, float64, the bench default steps and floors). The arm is registered in
``benchmarks/suite.py``'s ``VARIANTS`` at run time as ``cand_hold85`` and run through its
``main``; compare with the stored default rows (``autokr_monotone`` in
``benchmarks/results/suite.json``) of the same seeds.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/hierarchical_recipe_suite.py --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyro
import torch

sys.path.insert(0, str(Path(__file__).parent))
import suite  # noqa: E402

import pyro_kr  # noqa: E402
from pyro_kr.bench import methods  # noqa: E402

OUT = Path(__file__).parent / "results" / "hierarchical_recipe_suite.json"


def hold_variant(hold: float):
    """The default recipe with the lr held until ``hold`` of the steps, then decayed to 1 %."""

    def fit(problem, y, *, steps, seed, num_draws, progress=False, particles=8):
        with methods.float64():
            pyro.clear_param_store()
            pyro.set_rng_seed(seed)
            guide = pyro_kr.AutoKR(problem.model, init_scale=0.1)
            loss = pyro_kr.TransportELBO(pyro_kr.Annealing.over(steps), num_particles=particles,
                                         vectorize_particles=particles > 1)
            start = int(hold * steps)
            rate = 0.01 ** (1 / max(steps - start, 1))
            optim = pyro.optim.LambdaLR({
                "optimizer": torch.optim.Adam, "optim_args": {"lr": methods.LR},
                "lr_lambda": lambda k: 1.0 if k < start else rate ** (k - start),
            })
            history = pyro_kr.fit(problem.model, guide, y=y, loss=loss, steps=steps,
                                  progress=progress, optim=optim,
                                  callback=lambda step, record: optim.step())
            draws = methods.sample_guide(guide, problem.param_names, num_draws,
                                         problem.param_shapes, y=y)
            return methods.MethodResult(draws=draws, wall_time_s=history.seconds,
                                        seconds_per_step=history.seconds / steps,
                                        loss=list(history.loss), guide=guide)

    return fit


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", nargs="+", default=["0"])
    p.add_argument("--hold", type=float, default=0.85)
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args()
    name = f"cand_hold{round(100 * a.hold)}"
    suite.VARIANTS[name] = hold_variant(a.hold)
    return suite.main(["--methods", name, "--seeds", *a.seeds, "--out", a.out])


if __name__ == "__main__":
    sys.exit(main())
