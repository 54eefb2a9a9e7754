"""Forward-mode training curves on Lotka-Volterra (issue 12): train vs validation vs W2.

Trains ``AmortizedKR`` by ``fit_amortized(mode="forward")`` on one seeded bank of
prior-predictive simulations (``--budget`` pairs, ``--validation-fraction`` held out, the same
split as ``fit_amortized``) and, every ``--eval-every`` steps, records

* the mean negative log density ``-log q(u | y)`` over the **whole** training split and the
  whole validation split (so overfitting shows as a gap), with the validation quantiles and
  the share of the validation mean carried by its worst 1 % (heavy tails make the mean noisy);
* W2 (raw ``u``) of 5,000 draws at the benchmark observation against one reference subset
  (``--w2-every``), to see whether the validation loss tracks the accuracy that is scored.

Without ``--use-defaults`` the optimizer is the peer benchmark's (``ClippedAdam``, lr decaying
10x over ``--steps``, clip norm 10) and early stopping is off (patience larger than the run),
so the curves show the whole run. With ``--use-defaults`` the run uses ``fit_amortized``'s own
forward defaults (steps, lr, schedule and stopping) and records where it stopped.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/amortized_forward_diagnosis.py --seed 0 \
        --out benchmarks/results/amortized_forward_diagnosis.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pyro
import torch

import pyro_kr
import pyro_kr.bench.problems as problems
from pyro_kr._atomic import atomic_path
from pyro_kr.metrics import w2

ROOT = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=int, default=20_000)
    p.add_argument("--validation-fraction", type=float, default=0.5)
    p.add_argument("--steps", type=int, default=12_000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument("--eval-every", type=int, default=400)
    p.add_argument("--w2-every", type=int, default=1200)
    p.add_argument("--use-defaults", action="store_true",
                   help="fit_amortized's own forward defaults (steps, lr, stopping)")
    p.add_argument("--extra", default="{}", help="JSON dict of extra fit_amortized kwargs")
    p.add_argument("--out", default=str(ROOT / "bench-out" / "amortized_forward_diagnosis.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    problem = problems.get("lotka_volterra")
    names = problem.param_names
    ref = problem.reference(0)
    ref = torch.stack([torch.as_tensor(ref[k]).reshape(-1) for k in names], -1).double()
    perm_ref = torch.randperm(ref.shape[0], generator=torch.Generator().manual_seed(0))
    ref_a = ref[perm_ref[:5000]]
    y_obs = problem.observation(0)

    u, y = problem.simulate(args.budget, seed=10_000 + args.seed)  # the peer benchmark's bank
    bank = {**u, "y": y}
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    guide = pyro_kr.AmortizedKR(problem.model, observed="y", depth=args.depth,
                                embedding_dim=args.embedding_dim,
                                hidden_dims=tuple(args.hidden))
    guide.setup()
    latent = guide.pack({n: bank[n].to(guide.reference_like()) for n in guide.order}).detach()
    data = bank["y"].to(guide.reference_like())
    gen = torch.Generator().manual_seed(args.seed)  # fit_amortized's split (seed=args.seed)
    perm = torch.randperm(args.budget, generator=gen)
    n_val = max(1, int(round(args.validation_fraction * args.budget)))
    val, train = perm[:n_val], perm[n_val:]

    def nll(index: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([-guide.log_prob(latent[c], data[c]) for c in index.split(4096)])

    curve = []
    cpu0 = time.process_time()
    header = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
              "settings": vars(args)}

    def save(result: dict) -> None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps({**header, **result}, indent=1))

    def callback(step: int, record: dict) -> None:
        t = step + 1
        if t % args.eval_every and t != 1:
            return
        tr, va = nll(train), nll(val)
        top = va.sort(descending=True).values[: max(1, len(va) // 100)]
        point = {"step": t, "train_nll": float(tr.mean()), "val_nll": float(va.mean()),
                 "val_median": float(va.median()), "val_q99": float(va.quantile(0.99)),
                 "val_max": float(va.max()),
                 "val_top1pct_share": float(top.sum() / va.sum()) if float(va.sum()) else None,
                 "cpu_seconds": time.process_time() - cpu0}
        if t % args.w2_every == 0:
            torch.manual_seed(300)
            q = guide.sample(y_obs, 5000)
            point["w2_raw"] = w2(torch.stack([q[k].reshape(-1) for k in names], -1).double(),
                                 ref_a)
        curve.append(point)
        save({"curve": curve, "finished": False})  # a stopped run keeps its curve
        log(" ".join(f"{k} {v:.4g}" for k, v in point.items() if isinstance(v, float | int)))

    kwargs = dict(mode="forward", simulations=bank, validation_fraction=args.validation_fraction,
                  seed=args.seed, progress=False, callback=callback)
    if not args.use_defaults:
        optim = pyro.optim.ClippedAdam({"lr": args.lr, "lrd": 0.1 ** (1 / args.steps),
                                        "clip_norm": 10.0})
        kwargs.update(steps=args.steps, batch_size=args.batch, optim=optim,
                      validate_every=200, patience=10**6)
    kwargs.update(json.loads(args.extra))
    t0 = time.perf_counter()
    history = pyro_kr.fit_amortized(problem.model, guide, **kwargs)
    cpu = time.process_time() - cpu0
    torch.manual_seed(300)
    q = guide.sample(y_obs, 5000)
    final_w2 = w2(torch.stack([q[k].reshape(-1) for k in names], -1).double(), ref_a)
    log(f"done: {history.steps} steps, best {history.best_step}, final W2 {final_w2:.4f}, "
        f"{cpu:.0f} CPU-s")
    result = {"finished": True, "steps": history.steps, "best_step": history.best_step,
              "lr_cuts": history.lr_cuts,
              "stopped_early": history.stopped_early, "final_w2_raw_one_set": final_w2,
              "val_step": history.val_step, "val_loss": history.val_loss,
              "train_cpu_seconds_with_evals": cpu, "wall_seconds": time.perf_counter() - t0,
              "curve": curve}
    save(result)
    return result


if __name__ == "__main__":
    main()
