"""CPU and CUDA side by side: training steps/s of AutoKR and AmortizedKR, draws/s of sampler().

On every available device (``cpu``, and ``cuda`` when ``torch.cuda.is_available()``; the CUDA
column is skipped, not failed, without a GPU) in one run:

* ``autokr_steps_per_s``: ``pyro_kr.fit`` of ``AutoKR`` (monotone, default layers) with
  ``TransportELBO(num_particles=--particles)`` on a ``--dim``-dimensional linear Gaussian model
  whose tensors live on the device;
* ``amortized_forward_steps_per_s``: ``fit_amortized(mode="forward")`` of ``AmortizedKR``
  (monotone) on the same model, batch ``--batch-size``, simulations on the device;
* ``sampler_draws_per_s``: ``guide.sampler(device=...).sample(y, --draws)`` (float32
  snapshot), draws per second for one observation.

The model is ``z ~ N(0, I_d)``, ``y ~ N(A z, 0.5^2 I_d)`` with a fixed random ``A``. Training
rates are ``history.steps / history.seconds`` (the optimization loop: every step reads the
loss, which synchronizes CUDA); sampler timings synchronize the device before reading the
clock. Writes
``benchmarks/results/gpu_<device names>.json`` and prints a table.

    python benchmarks/gpu.py             # ~1 minute per device
    python benchmarks/gpu.py --smoke     # seconds, nothing written
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

import pyro_kr
from pyro_kr._atomic import atomic_path

RESULTS = Path(__file__).parent / "results"


def make_model(dim: int, device: str):
    gen = torch.Generator().manual_seed(0)
    a = (torch.randn(dim, dim, generator=gen, dtype=torch.float64) / dim**0.5).to(device)
    zeros = torch.zeros(dim, dtype=torch.float64, device=device)

    def model(y=None):
        z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
        return pyro.sample("y", dist.Normal(z @ a.T, 0.5).to_event(1), obs=y)

    return model


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    _sync(device)
    began = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - began


def bench_device(device: str, args) -> dict:
    pyro.set_rng_seed(0)
    model = make_model(args.dim, device)
    with torch.no_grad():
        y_obs = model()
    row: dict = {"device": device}
    if device == "cuda":
        row["name"] = torch.cuda.get_device_name()

    # AutoKR + TransportELBO
    pyro.clear_param_store()
    guide = pyro_kr.AutoKR(model)
    loss = pyro_kr.TransportELBO(pyro_kr.Annealing(steps=args.steps),
                                 num_particles=args.particles)
    pyro_kr.fit(model, guide, y_obs, loss=loss, steps=5, progress=False)  # warm-up
    history = pyro_kr.fit(model, guide, y_obs, loss=loss, steps=args.steps, progress=False)
    row["autokr_steps_per_s"] = history.steps / history.seconds  # the loop, not the checks

    # AmortizedKR forward training and the float32 sampler
    pyro.clear_param_store()
    guide = pyro_kr.AmortizedKR(model, observed="y")
    bank = pyro_kr.simulate(model, args.simulations, observed="y", seed=0)
    kw = dict(mode="forward", simulations=bank, batch_size=args.batch_size, lr=1e-3,
              progress=False, validate_every=10**6)
    pyro_kr.fit_amortized(model, guide, steps=5, **kw)  # warm-up
    history = pyro_kr.fit_amortized(model, guide, steps=args.steps, **kw)
    row["amortized_forward_steps_per_s"] = history.steps / history.seconds
    sampler = guide.sampler(device=device)
    y = y_obs.to(device=device, dtype=torch.float32)
    sampler.sample(y, 100)  # warm-up
    t = _timed(lambda: sampler.sample(y, args.draws), device)
    row["sampler_draws_per_s"] = args.draws / t
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--simulations", type=int, default=20_000)
    parser.add_argument("--draws", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.smoke:
        args.dim, args.steps, args.simulations, args.draws = 3, 5, 200, 1000
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="the fit stalled")  # short timing fits
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = [bench_device(d, args) for d in devices]
    print(f"{'device':<8}{'AutoKR steps/s':>16}{'AmortizedKR steps/s':>21}{'sampler draws/s':>17}")
    for r in rows:
        print(f"{r['device']:<8}{r['autokr_steps_per_s']:>16.1f}"
              f"{r['amortized_forward_steps_per_s']:>21.1f}{r['sampler_draws_per_s']:>17.3g}")
    if "cuda" not in devices:
        print("cuda: skipped (torch.cuda.is_available() is False)")
    result = {
        "rows": rows, "config": vars(args), "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(), "load_average": os.getloadavg(),
        "command": " ".join(["python", "benchmarks/gpu.py", *(argv or sys.argv[1:])]),
    }
    if not args.smoke:
        out = args.out or RESULTS / f"gpu_{'_'.join(devices)}.json"
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps(result, indent=1))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
