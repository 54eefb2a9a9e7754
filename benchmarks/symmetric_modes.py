"""Mass per mode on ``symmetric_modes`` (four equal modes): AutoKR with and without likelihood
tempering vs AutoMVN (issue 18).

Every guide: ``--steps`` steps of ``--particles`` vectorized particles through ``pyro_kr.fit``,
float64, seeds 0..``--seeds``-1, the same optimizer for all: a constant Adam(lr=1e-2)
(``fit(lr_decay=False)``: no decay after the ramp, as measured), or with ``--lrd``
Pyro's ``ClippedAdam({"lr": 1e-2, "lrd": lrd})`` (learning rate times ``lrd`` per step).
``autokr``: ``AutoKR(model)`` defaults with the annealed ``TransportELBO``
(``Annealing.over(steps, beta=1.0)``: ramp over 70 % of the steps, no tempering).
``autokr_tempered``: the same plus the likelihood-temperature ramp
``Annealing.over(steps, beta=(--beta0, 1.0))``. ``auto_mvn``:
``AutoMultivariateNormal`` with ``Trace_ELBO``. Scored against the exact reference: share of
draws per sign quadrant (exact share 0.25 each), the largest share error, W2 on standardized
coordinates (with its noise floor), PSIS k-hat, ``check_fit``'s status, and the shares after
PSIS reweighting (the smoothed importance weights of 4000 guide draws summed per quadrant:
what ``pyro_kr.diagnostics.psis(...).resample()`` draws from). Writes
``benchmarks/results/<--out>.json`` and prints a table.

    nice -n 10 python benchmarks/symmetric_modes.py --steps 2000 --seeds 3 --methods autokr \
        auto_mvn
    nice -n 10 python benchmarks/symmetric_modes.py --steps 3000 --seeds 5 --particles 8 \
        --lrd 0.999 --out symmetric_modes_tempered_3000
    python benchmarks/symmetric_modes.py --smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import pyro
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal
from pyro.optim import ClippedAdam

torch.set_num_threads(1)

import pyro_kr  # noqa: E402
from pyro_kr import diagnostics, metrics  # noqa: E402
from pyro_kr.bench import methods, problems  # noqa: E402
from pyro_kr.bench.problems.symmetric_modes import mode_shares  # noqa: E402
from pyro_kr.diagnostics.stall import check_fit  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def one_run(problem, y, ref, guide_name, *, steps, particles, seed, num_draws, lrd=None,
            beta0=1e-2):
    with methods.float64():
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        if guide_name.startswith("autokr"):
            guide = pyro_kr.AutoKR(problem.model)
            beta = (beta0, 1.0) if guide_name == "autokr_tempered" else 1.0
            loss = pyro_kr.TransportELBO(
                pyro_kr.Annealing.over(steps, beta=beta),
                num_particles=particles, vectorize_particles=particles > 1,
            )
        else:
            guide = AutoMultivariateNormal(problem.model)
            loss = Trace_ELBO(num_particles=particles, vectorize_particles=particles > 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optim = dict(lr=1e-2, lr_decay=False) if lrd is None else dict(
                optim=ClippedAdam({"lr": 1e-2, "lrd": lrd}))
            pyro_kr.fit(problem.model, guide, y=y, loss=loss, steps=steps, progress=False,
                        check=False, **optim)
        draws = methods.sample_guide(guide, problem.param_names, num_draws,
                                     problem.param_shapes, y=y)
        scores = metrics.compare(draws, ref, metrics=("w2_standardized",),
                                 n=min(2000, num_draws), seed=seed)
        corrected = diagnostics.psis(guide, problem.model, y=y, num_samples=4000)
        khat = float(corrected.khat)
        signs = [corrected.draws[n].reshape(-1).cpu().numpy() >= 0 for n in ("theta1", "theta2")]
        psis_shares = {
            key: float(corrected.weights[(signs[0] == a) & (signs[1] == b)].sum())
            for key, a, b in (("++", True, True), ("+-", True, False), ("-+", False, True),
                              ("--", False, False))
        }
        status = check_fit(guide, problem.model, y=y).status
    shares = mode_shares(draws["theta1"], draws["theta2"])
    return {
        "seed": seed,
        "shares": shares,
        "max_share_error": max(abs(s - 0.25) for s in shares.values()),
        "w2_standardized": float(scores["w2_standardized"]),
        "w2_standardized_noise_floor": float(scores["w2_standardized_noise_floor"]),
        "khat": khat,
        "psis_shares": psis_shares,
        "psis_max_share_error": max(abs(v - 0.25) for v in psis_shares.values()),
        "check_fit": status,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--particles", type=int, default=methods.PARTICLES)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lrd", type=float, default=None,
                        help="ClippedAdam learning-rate decay per step (default: plain Adam)")
    parser.add_argument("--beta0", type=float, default=1e-2,
                        help="start of the likelihood temperature ramp of autokr_tempered")
    parser.add_argument("--methods", nargs="+", default=["autokr", "autokr_tempered",
                                                         "auto_mvn"])
    parser.add_argument("--out", default="symmetric_modes", help="results file name")
    parser.add_argument("--smoke", action="store_true", help="tiny budget, nothing written")
    args = parser.parse_args(argv)
    num_draws = 4000
    if args.smoke:
        args.steps, args.seeds, num_draws = 20, 1, 500
    problem = problems.get("symmetric_modes")
    y = problem.observation(0)
    ref = problem.reference(0, num_samples=20_000)
    results = {
        "budget": {"steps": args.steps, "particles": args.particles, "seeds": args.seeds,
                   "lr": 1e-2, "lrd": args.lrd, "beta0": args.beta0},
        "reference_shares": mode_shares(ref["theta1"], ref["theta2"]),
        "methods": {},
    }
    for name in args.methods:
        runs = []
        for seed in range(args.seeds):
            runs.append(one_run(problem, y, ref, name, steps=args.steps,
                                particles=args.particles, seed=seed, num_draws=num_draws,
                                lrd=args.lrd, beta0=args.beta0))
            print(f"{name} seed {seed}: {runs[-1]}", file=sys.stderr, flush=True)
        results["methods"][name] = runs
        if not args.smoke:
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / f"{args.out}.json").write_text(json.dumps(results, indent=1))
    b = results["budget"]
    print(f"symmetric_modes: {b['steps']} steps x {b['particles']} particles, lrd {b['lrd']}; "
          "reference share 0.25 per mode")
    print(f"{'guide':15} {'seed':>4} {'++':>5} {'+-':>5} {'-+':>5} {'--':>5} {'max err':>7} "
          f"{'W2':>6} {'floor':>6} {'k-hat':>6} {'PSIS err':>8}  check_fit")
    for name, runs in results["methods"].items():
        for r in runs:
            s = r["shares"]
            print(f"{name:15} {r['seed']:>4} {s['++']:5.2f} {s['+-']:5.2f} {s['-+']:5.2f} "
                  f"{s['--']:5.2f} {r['max_share_error']:7.2f} {r['w2_standardized']:6.3f} "
                  f"{r['w2_standardized_noise_floor']:6.3f} {r['khat']:6.2f} "
                  f"{r['psis_max_share_error']:8.3f}  {r['check_fit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
