"""Scale-out throughput: simulation banks on Ray, data-parallel training with torch DDP.

1. Simulation pairs per second of ``pyro_kr.simulate`` for Lotka-Volterra (cheap: a batched
   RK4 solve) and darcy_2d (expensive: one dense 256 x 256 solve per pair), in one run:
   ``backend="local"`` (one process, one thread), and ``backend="ray"`` on a local Ray
   cluster with 1 and 2 CPUs (one task per chunk, one thread per worker). Every bank is
   checked bit-identical to the local one. Ray is timed after a warm-up bank (workers started,
   torch and pyro imported); the cold start is reported apart.
2. DDP: seconds per step and samples per second of amortized Lotka-Volterra forward training
   (``fit_amortized(mode="forward")``, monotone map, global batch ``--batch-size``) with 1
   process and with 2 gloo processes launched as ``torchrun`` launches them; scaling
   efficiency = (t_1 / t_2) / 2 at the same global batch.

Writes ``benchmarks/results/scale.json`` and prints a table. The machine this ran on is
shared (see ``load_average`` in the JSON): timings are upper bounds of an idle machine's.

    python benchmarks/scale.py            # ~5 minutes on 2 cores
    python benchmarks/scale.py --smoke    # seconds, nothing written
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)  # darcy's batched solve also misbehaves with 2 MKL threads here

import pyro_kr  # noqa: E402
from pyro_kr._atomic import atomic_path  # noqa: E402
from pyro_kr.bench import problems  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def _same(a, b) -> bool:
    return all(torch.equal(a.latents[k], b.latents[k]) for k in a.latents) and all(
        torch.equal(a.observations[k], b.observations[k]) for k in a.observations
    )


def simulation_throughput(name: str, n: int, chunk: int, substeps: int | None) -> dict:
    import ray

    config = {} if substeps is None else {"substeps": substeps}
    model = problems.get(name, **config).model
    kw = dict(observed="y", seed=0, chunk_size=chunk)
    pyro_kr.simulate(model, chunk, **kw)  # warm-up (first-call costs)
    began = time.perf_counter()
    local = pyro_kr.simulate(model, n, **kw)
    t_local = time.perf_counter() - began
    row = {"problem": name, "num_simulations": n, "chunk_size": chunk,
           "local_seconds": t_local, "local_pairs_per_s": n / t_local}
    for workers in (1, 2):
        began = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        t_init = time.perf_counter() - began
        began = time.perf_counter()
        pyro_kr.simulate(model, workers * chunk, backend="ray", **kw)  # start the workers
        t_cold = time.perf_counter() - began
        began = time.perf_counter()
        bank = pyro_kr.simulate(model, n, backend="ray", **kw)
        t = time.perf_counter() - began
        ray.shutdown()
        row[f"ray{workers}_init_seconds"] = t_init
        row[f"ray{workers}_cold_bank_seconds"] = t_cold
        row[f"ray{workers}_seconds"] = t
        row[f"ray{workers}_pairs_per_s"] = n / t
        row[f"ray{workers}_speedup_vs_local"] = t_local / t
        row[f"ray{workers}_identical_to_local"] = _same(bank, local)
    chunks = -(-n // chunk)
    row["local_seconds_per_chunk"] = t_local / chunks
    row["ray1_overhead_seconds_per_chunk"] = (row["ray1_seconds"] - t_local) / chunks
    return row


# -- DDP ----------------------------------------------------------------------------------
def ddp_worker(out: str, steps: int, batch_size: int, num_simulations: int) -> None:
    import pyro

    pyro.set_rng_seed(0)
    problem = problems.get("lotka_volterra")
    guide = pyro_kr.AmortizedKR(problem.model, observed="y")
    bank = pyro_kr.simulate(problem.model, num_simulations, observed="y", seed=0)
    pyro_kr.fit_amortized(problem.model, guide, mode="forward", simulations=bank, steps=10,
                          batch_size=batch_size, lr=1e-3, progress=False,
                          validate_every=10_000)  # warm-up steps
    history = pyro_kr.fit_amortized(
        problem.model, guide, mode="forward", simulations=bank, steps=steps,
        batch_size=batch_size, lr=1e-3, progress=False, validate_every=10_000,
    )
    if pyro_kr.distributed.is_main():
        Path(out).write_text(json.dumps({"seconds": history.seconds, "steps": history.steps,
                                         "final_loss": history.loss[-1]}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_run(world: int, steps: int, batch_size: int, num_simulations: int, tmp: Path) -> dict:
    out = tmp / f"ddp{world}.json"
    port = str(_free_port())
    procs = []
    for rank in range(world):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        if world > 1:
            env |= dict(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                        MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--ddp-worker", str(out), "--steps", str(steps),
             "--batch-size", str(batch_size), "--ddp-simulations", str(num_simulations)],
            env=env,
        ))
    for p in procs:
        if p.wait(timeout=1200):
            raise RuntimeError(f"DDP worker failed with exit code {p.returncode}")
    result = json.loads(out.read_text())
    step = result["seconds"] / result["steps"]
    return {"processes": world, "steps": steps, "global_batch": batch_size,
            "seconds_per_step": step, "samples_per_s": batch_size / step,
            "final_loss": result["final_loss"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--lv-simulations", type=int, default=40_000)
    parser.add_argument("--lv-chunk", type=int, default=5_000)
    parser.add_argument("--darcy-simulations", type=int, default=6_000)
    parser.add_argument("--darcy-chunk", type=int, default=500)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--ddp-simulations", type=int, default=5_000)
    parser.add_argument("--ddp-worker", metavar="OUT")
    parser.add_argument("--out", default=str(RESULTS / "scale.json"))
    args = parser.parse_args(argv)
    if args.ddp_worker:
        return ddp_worker(args.ddp_worker, args.steps, args.batch_size, args.ddp_simulations)
    if args.smoke:
        args.lv_simulations, args.lv_chunk, args.darcy_simulations, args.darcy_chunk = (
            400, 100, 40, 10)
        args.steps, args.batch_size, args.ddp_simulations = 5, 32, 200
    load = [os.getloadavg()]
    sims = [
        simulation_throughput("lotka_volterra", args.lv_simulations, args.lv_chunk,
                              8 if args.smoke else None),
        simulation_throughput("darcy_2d", args.darcy_simulations, args.darcy_chunk, None),
    ]
    load.append(os.getloadavg())
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ddp = [ddp_run(w, args.steps, args.batch_size, args.ddp_simulations, Path(tmp))
               for w in (1, 2)]
    load.append(os.getloadavg())
    speedup = ddp[0]["seconds_per_step"] / ddp[1]["seconds_per_step"]
    darcy = sims[1]
    result = {
        "simulations": sims,
        "ddp": ddp,
        "ddp_speedup": speedup,
        "ddp_scaling_efficiency": speedup / 2,
        "target_darcy_ray2_vs_local": 1.7,
        "darcy_ray2_vs_local": darcy["ray2_speedup_vs_local"],
        "target_met": darcy["ray2_speedup_vs_local"] >= 1.7,
        "load_average": load,
        "cpu_count": os.cpu_count(),
        "note": "2-core machine shared with other agents' jobs; see load_average",
        "torch": torch.__version__,
        "command": " ".join(["python", "benchmarks/scale.py", *(argv or sys.argv[1:])]),
    }
    print(f"{'problem':<15}{'N':>7}{'chunk':>7}{'local/s':>10}{'ray1/s':>10}{'ray2/s':>10}"
          f"{'ray2/local':>11}{'identical':>10}")
    for r in sims:
        same = r["ray1_identical_to_local"] and r["ray2_identical_to_local"]
        print(f"{r['problem']:<15}{r['num_simulations']:>7}{r['chunk_size']:>7}"
              f"{r['local_pairs_per_s']:>10.0f}{r['ray1_pairs_per_s']:>10.0f}"
              f"{r['ray2_pairs_per_s']:>10.0f}{r['ray2_speedup_vs_local']:>11.2f}{same!s:>10}")
    for r in sims:
        print(f"{r['problem']}: ray.init {r['ray2_init_seconds']:.1f} s, cold first bank "
              f"{r['ray2_cold_bank_seconds']:.1f} s, ray overhead per chunk (1 worker) "
              f"{r['ray1_overhead_seconds_per_chunk'] * 1e3:.0f} ms vs "
              f"{r['local_seconds_per_chunk'] * 1e3:.0f} ms of simulation")
    for r in ddp:
        print(f"DDP {r['processes']} process(es): {r['seconds_per_step'] * 1e3:.1f} ms/step, "
              f"{r['samples_per_s']:.0f} samples/s (global batch {r['global_batch']})")
    print(f"DDP speedup {speedup:.2f}, scaling efficiency {speedup / 2:.2f}; load average "
          f"{load[0][0]:.1f} -> {load[-1][0]:.1f} on {os.cpu_count()} cores (shared machine)")
    print(f"target darcy ray2 >= 1.7x local: {darcy['ray2_speedup_vs_local']:.2f} "
          f"({'met' if result['target_met'] else 'missed'})")
    if not args.smoke:
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
