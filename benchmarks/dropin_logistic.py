"""Steps per second of the tutorial logistic regression with ``TransportELBO``'s defaults.

Issue 13: Pyro's tutorials write ``logits = X @ w + b`` with ``w ~ Normal(...).to_event(1)``,
which is not batch-safe. Before the fix the default ``TransportELBO(num_particles=8)`` raised a
raw torch shape error on it; now it warns once and runs the particles one after another. This
script times, with ``AutoKR(model)`` (default monotone map) and ``fit``'s defaults:

* ``tutorial_default``: the tutorial model, ``TransportELBO(num_particles=P)``;
* ``tutorial_sequential``: the same with ``vectorize_particles=False`` (the old workaround);
* ``batch_safe_default``: the model written ``(X * w).sum(-1) + b``, default loss (vectorized).

Run it once per code version (``PYTHONPATH=<old checkout>`` for the "before" numbers); each
run writes ``benchmarks/results/dropin_logistic[_LABEL].json`` and prints a table.

    nice python benchmarks/dropin_logistic.py --label after          # 2,000 steps, 8 particles
    python benchmarks/dropin_logistic.py --smoke                      # seconds, nothing written
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

torch.set_num_threads(1)

import pyro_kr  # noqa: E402


def tutorial(X, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1]), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    logits = X @ w + b
    with pyro.plate("data", X.shape[0]):
        pyro.sample("obs", dist.Bernoulli(logits=logits), obs=y)


def batch_safe(X, y=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1]), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    logits = (X * w).sum(-1) + b
    with pyro.plate("data", X.shape[0]):
        pyro.sample("obs", dist.Bernoulli(logits=logits), obs=y)


CONFIGS = {
    "tutorial_default": (tutorial, {}),
    "tutorial_sequential": (tutorial, {"vectorize_particles": False}),
    "batch_safe_default": (batch_safe, {}),
}


def run(name: str, steps: int, particles: int, X, y) -> dict:
    model, options = CONFIGS[name]
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    loss = pyro_kr.TransportELBO(num_particles=particles, **options)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        try:
            history = pyro_kr.fit(model, pyro_kr.AutoKR(model), X, y, loss=loss, steps=steps,
                                  progress=False)
        except Exception as error:  # noqa: BLE001 - the "before" version raises here
            first = (str(error).splitlines() or [""])[0]
            return {"config": name, "error": f"{type(error).__name__}: {first}",
                    "seconds": time.perf_counter() - start}
    batch_warnings = [str(w.message)[:120] for w in record if "batch-safe" in str(w.message)]
    return {
        "config": name,
        "steps": history.steps,
        "seconds": history.seconds,
        "steps_per_s": history.steps / history.seconds,
        "final_loss_mean_last_100": sum(history.loss[-100:]) / len(history.loss[-100:]),
        "vectorized": bool(getattr(loss, "vectorize_particles", False)),
        "batch_warnings": batch_warnings,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--label", default="")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    steps = 5 if args.smoke else args.steps
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(500, 5, generator=gen)
    y = torch.bernoulli(torch.sigmoid(X @ torch.tensor([1.0, -1.0, 0.5, 0.0, 2.0]) + 0.3),
                        generator=gen)
    rows = [run(name, steps, args.particles, X, y) for name in args.configs]
    print(f"{'config':22s} {'steps/s':>8s} {'seconds':>8s} vectorized  note")
    for r in rows:
        rate = f"{r['steps_per_s']:.2f}" if "steps_per_s" in r else "-"
        note = r.get("error") or ("; ".join(r["batch_warnings"]) or "")[:60]
        print(f"{r['config']:22s} {rate:>8s} {r['seconds']:8.1f} {str(r.get('vectorized')):10s}"
              f"  {note}")
    if args.smoke:
        return
    out = Path(__file__).parent / "results" / (
        "dropin_logistic" + (f"_{args.label}" if args.label else "") + ".json"
    )
    record = {
        "budget": {"steps": steps, "particles": args.particles, "data": [500, 5],
                   "guide": "AutoKR(model) default monotone", "threads": 1},
        "pyro_kr": pyro_kr.__version__,
        "results": rows,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
