"""Issue 18, restarts chosen by ELBO: does the ELBO tell a fit that kept every mode of
``symmetric_modes`` from one that lost a pair, and how early in training?

Each seed trains the default recipe exactly as the suite's ``autokr_monotone`` does
(``AutoKR(model)``, ``TransportELBO(Annealing.over(steps))`` with 8 vectorized particles, Adam
lr 1e-2 with ``fit``'s decay after the ramp, float64, observation 0, the bench default steps).
A ``fit`` callback stops at a few checkpoints (25 %, 50 %, the end of the ramp at 70 %, the
end) and scores the guide there without touching the training's random stream (the draws use
their own fixed seed inside ``fork_rng``): the ELBO of the untempered model from 1,000 guide
draws (seed :data:`EVAL_SEED`, the same for every fit), the tempered ELBO at the current
``beta``, the mode shares of the same draws, and the mean training ELBO of the last 100 steps.
The final guide is scored as the suite scores it (standardized W2, n = 2000, the run's seed),
so seeds 0-4 reproduce the suite rows.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/restarts.py split --seeds 0 1 2 3 4
    python benchmarks/restarts.py --table
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pyro
import torch

torch.set_num_threads(1)

import pyro_kr  # noqa: E402
from pyro_kr import metrics  # noqa: E402
from pyro_kr.bench import methods, problems, runner  # noqa: E402
from pyro_kr.bench.problems.symmetric_modes import mode_shares  # noqa: E402
from pyro_kr.diagnostics import draw_guide  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "restarts.json"
EVAL_SEED = 20261205
EVAL_DRAWS = 1000
FRACTIONS = (0.25, 0.5, 0.7, 1.0)


def _share_error(latent: dict) -> float:
    shares = mode_shares(latent["theta1"].cpu().numpy(), latent["theta2"].cpu().numpy())
    return max(abs(s - 0.25) for s in shares.values())


def score(guide, model, y, beta: float) -> dict:
    """ELBO (untempered and at ``beta``) and mode shares of ``EVAL_DRAWS`` fixed-seed draws."""
    d = draw_guide(guide, model, (), {"y": y}, num_samples=EVAL_DRAWS, seed=EVAL_SEED)
    lw = d.log_weight
    loglik = sum(v.reshape(v.shape[0], -1).sum(-1) for v in d.log_likelihood.values())
    tempered = lw - (1.0 - beta) * loglik
    return {
        "elbo": float(lw.mean()), "elbo_se": float(lw.std() / EVAL_DRAWS ** 0.5),
        "tempered_elbo": float(tempered.mean()), "beta": beta,
        "share_error": _share_error(d.latent),
    }


def split_run(seed: int, steps: int) -> dict:
    problem = problems.get("symmetric_modes")
    y = problem.observation(0)
    ref, _ = runner.load_reference(problem, 0)
    at = {max(int(f * steps), 1): f for f in FRACTIONS}
    checkpoints: list[dict] = []
    cpu = time.process_time()
    with methods.float64():
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        guide = pyro_kr.AutoKR(problem.model, init_scale=0.1)
        schedule = pyro_kr.Annealing.over(steps)
        loss = pyro_kr.TransportELBO(schedule, num_particles=methods.PARTICLES,
                                     vectorize_particles=True)
        train_elbo: list[float] = []
        eval_cpu = [0.0]

        def callback(step, record):
            train_elbo.append(record["elbo"])
            if step + 1 in at:
                t = time.process_time()
                row = score(guide, problem.model, y, record["beta"])
                row.update(step=step + 1, fraction=at[step + 1],
                           train_elbo_last100=sum(train_elbo[-100:]) / len(train_elbo[-100:]))
                checkpoints.append(row)
                eval_cpu[0] += time.process_time() - t

        history = pyro_kr.fit(problem.model, guide, y=y, loss=loss, steps=steps,
                              lr=methods.LR, progress=False, callback=callback)
        res = methods.MethodResult(
            draws=methods.sample_guide(guide, problem.param_names, 4000, problem.param_shapes,
                                       y=y),
            wall_time_s=history.seconds, seconds_per_step=history.seconds / steps,
            loss=list(history.loss), guide=guide)
        scores = metrics.compare(res.draws, ref, metrics=("w2_standardized",), n=2000,
                                 seed=seed)
    shares = mode_shares(res.draws["theta1"], res.draws["theta2"])
    return {
        "seed": seed, "steps": steps, "checkpoints": checkpoints,
        "w2": float(scores["w2_standardized"]),
        "floor": float(scores["w2_standardized_noise_floor"]),
        "max_share_error": max(abs(s - 0.25) for s in shares.values()),
        "cpu_s": time.process_time() - cpu, "eval_cpu_s": eval_cpu[0],
    }


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def table(data: dict) -> str:
    rows = data.get("split", {}).get("runs", [])
    if not rows:
        return "(no split runs)"
    lines = ["| seed | share err (final draws) | pass | W2 | "
             + " | ".join(f"ELBO@{int(100 * f)}% (share err)" for f in FRACTIONS) + " |",
             "|---" * (4 + len(FRACTIONS)) + "|"]
    for r in sorted(rows, key=lambda r: r["seed"]):
        cells = [f"{c['elbo']:.3f} ({c['share_error']:.2f})" for c in r["checkpoints"]]
        lines.append(f"| {r['seed']} | {r['max_share_error']:.3f} | "
                     f"{'yes' if r['max_share_error'] <= 0.1 else 'no'} | {r['w2']:.3f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", choices=["split"], default=None)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    data = load(out)
    if args.what == "split":
        steps = args.steps or runner.default_steps("symmetric_modes")
        entry = data.setdefault("split", {
            "settings": {"problem": "symmetric_modes", "steps": steps,
                         "particles": methods.PARTICLES, "lr": methods.LR,
                         "eval_draws": EVAL_DRAWS, "eval_seed": EVAL_SEED,
                         "recipe": "default AutoKR recipe (suite autokr_monotone)"},
            "runs": []})
        for seed in args.seeds:
            if any(r["seed"] == seed for r in entry["runs"]):
                continue
            row = split_run(seed, steps)
            entry["runs"].append(row)
            data["created_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            runner.write_json_atomic(data, out)
            print(json.dumps(row), flush=True)
    print(table(load(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
