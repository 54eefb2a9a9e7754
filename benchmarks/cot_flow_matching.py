"""Benchmark: conditional-OT flow matching (COT-FM) vs plain flow matching (FM), Kerrigan et al.
2024.

Table 1 protocol (Kerrigan et al. 2024, app. F.1): for checkerboard, moons, circles and swissroll,
train on
20,000 pairs (plus 20,000 independent ``y`` for the source and 1,000 held-out pairs for model
selection by validation W2), then on 5 test sets of 5,000: draw ``y`` from the generator, sample
``u ~ q(u | y)`` and compare the joint ``(y, u)`` with 5,000 fresh generator draws by W2
(``sqrt`` of POT's ``emd2``) and unbiased RBF MMD^2 (median heuristic). The noise floor is the
same metric between the true joint draws of the same ``y`` set and the target set.

Table 2 (``--problems lotka_volterra``): COT-FM with full couplings on 10,000 simulated pairs
(log data, standardised), posterior at the fixed observation vs the shipped reference draws.

Results are merged into ``benchmarks/results/cot_flow_matching.json`` (one entry per problem and
method, so runs can be split) and the whole table is printed.

Usage:
    nice python benchmarks/cot_flow_matching.py --problems moons --steps 4000
    python benchmarks/cot_flow_matching.py --smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import pyro
import torch

from pyro_kr.bench.problems.joint2d import DATASETS
from pyro_kr.flow_matching import COTFlowMatching
from pyro_kr.metrics import UNIT_KERNEL_BANDWIDTH

PAPER_W2 = {  # x 1e-2, Kerrigan et al. 2024 Table 1 / Table 2 (COT-FM; FM in brackets below)
    "checkerboard": 4.69,
    "moons": 6.50,
    "circles": 5.56,
    "swissroll": 4.64,
    "lotka_volterra": 4.02,
}
PAPER_MMD = {"checkerboard": 0.17, "moons": 0.13, "circles": 0.20, "swissroll": 0.15,
             "lotka_volterra": 0.95}  # x 1e-3
PAPER_FM_W2 = {"checkerboard": 8.81, "moons": 15.55, "circles": 7.03, "swissroll": 8.18,
               "lotka_volterra": 11.41}
# "cot": minibatch plans (Kerrigan et al. 2024's choice for the 2-D sets); "cot_full": one plan on
# the
# whole training set (its choice for Lotka-Volterra, which always uses the full plan).
COUPLING = {"cot": "minibatch", "cot_full": "full", "fm": "independent"}


UNIT_KERNEL_H = UNIT_KERNEL_BANDWIDTH  # exp(-|a - b|^2), the PCP-Map code MMD kernel


def metrics_fns():
    """``(w2, mmd2)`` from :mod:`pyro_kr.metrics` (the project's shared implementations)."""
    from pyro_kr.metrics import mmd2, w2

    return w2, mmd2


def summary(values: list[float], scale: float) -> dict:
    scaled = [v * scale for v in values]
    sd = statistics.stdev(scaled) if len(scaled) > 1 else 0.0
    return {"mean": statistics.fmean(scaled), "sd": sd, "values": scaled}


def run_joint2d(name: str, method: str, args) -> dict:
    w2, mmd2 = metrics_fns()
    gen = DATASETS[name]
    u, y = gen(args.n_train, seed=0)
    _, y_source = gen(args.n_train, seed=1)
    u_val, y_val = gen(args.n_val, seed=2)
    pyro.set_rng_seed(args.seed)
    cot = COTFlowMatching(
        dim_u=1, dim_y=1, width=args.width, depth=args.depth, standardize=False
    )
    history = cot.fit(
        u=u,
        y=y,
        steps=args.steps,
        eps=args.eps,
        sigma=args.sigma,
        batch_size=args.batch_size,
        coupling=COUPLING[method],
        lr=args.lr,
        validation=(u_val, y_val),
        validate_every=max(1, args.steps // args.validations),
        y_source=y_source,
        plan_refresh_every=args.plan_refresh_every if COUPLING[method] == "full" else None,
        plan_block_size=args.plan_block_size if COUPLING[method] == "full" else None,
        ema_decay=args.ema_decay,
        lr_schedule=args.lr_schedule,
        progress=args.progress,
        seed=args.seed,
    )
    w2s, mmds, floor_w2, floor_mmd, sample_s = [], [], [], [], []
    mmds_unit, floor_unit = [], []
    for k in range(args.test_sets):
        u_t, y_t = gen(args.n_test, seed=100 + k)
        u_s, y_s = gen(args.n_test, seed=200 + k)
        torch.manual_seed(300 + k)
        t0 = time.perf_counter()
        u_hat = cot.posterior(y_s, ode_steps=args.ode_steps).sample()
        sample_s.append(time.perf_counter() - t0)
        target = torch.cat([y_t, u_t], -1).double()
        model = torch.cat([y_s, u_hat], -1).double()
        truth = torch.cat([y_s, u_s], -1).double()
        w2s.append(w2(model, target))
        mmds.append(mmd2(model, target))
        mmds_unit.append(mmd2(model, target, bandwidth=UNIT_KERNEL_H))
        floor_w2.append(w2(truth, target))
        floor_mmd.append(mmd2(truth, target))
        floor_unit.append(mmd2(truth, target, bandwidth=UNIT_KERNEL_H))
    by_steps = {}
    for steps in args.extra_ode_steps:  # the same test sets and seeds, another RK4 step count
        values = []
        for k in range(args.test_sets):
            u_t, y_t = gen(args.n_test, seed=100 + k)
            _, y_s = gen(args.n_test, seed=200 + k)
            torch.manual_seed(300 + k)
            u_hat = cot.posterior(y_s, ode_steps=steps).sample()
            values.append(w2(torch.cat([y_s, u_hat], -1).double(),
                             torch.cat([y_t, u_t], -1).double()))
        by_steps[str(steps)] = summary(values, 1e2)
    return {
        "problem": name,
        "method": method,
        "coupling": COUPLING[method],
        "w2_x1e2_by_ode_steps": by_steps,
        "w2_x1e2": summary(w2s, 1e2),
        "mmd2_x1e3": summary(mmds, 1e3),
        "floor_w2_x1e2": summary(floor_w2, 1e2),
        "floor_mmd2_x1e3": summary(floor_mmd, 1e3),
        "mmd2_unit_kernel_x1e3": summary(mmds_unit, 1e3),
        "floor_mmd2_unit_kernel_x1e3": summary(floor_unit, 1e3),
        "train_seconds": history.train_seconds,
        "coupling_seconds": history.coupling_seconds,
        "sample_seconds_per_5000": statistics.fmean(sample_s) * 5000 / args.n_test,
        "best_step": history.best_step,
        "best_val_w2": history.best_w2,
        "final_loss": statistics.fmean(history.loss[-100:]),
        "config": config_dict(args),
    }


def run_lotka_volterra(method: str, args) -> dict:
    w2, mmd2 = metrics_fns()
    try:
        import pyro_kr.bench.problems as problems

        problem = problems.get("lotka_volterra")
        reference = problem.reference(0)
    except Exception as error:  # noqa: BLE001 - report why it could not run
        return {"problem": "lotka_volterra", "method": method, "not_run": repr(error)}
    names = problem.param_names
    ref = torch.stack([torch.as_tensor(reference[k]).reshape(-1) for k in names], -1).double()
    pyro.set_rng_seed(args.seed)
    cot = COTFlowMatching(
        problem.model, observed="y", width=args.width, depth=args.depth, transform_y=torch.log
    )
    history = cot.fit(
        num_simulations=args.lv_simulations + args.n_val,
        steps=args.steps,
        eps=args.eps,
        sigma=args.sigma,
        batch_size=args.batch_size,
        coupling="independent" if method == "fm" else "full",
        lr=args.lr,
        validation=args.n_val,
        validate_every=max(1, args.steps // args.validations),
        plan_refresh_every=None if method == "fm" else args.plan_refresh_every,
        plan_block_size=None if method == "fm" else args.plan_block_size,
        ema_decay=args.ema_decay,
        lr_schedule=args.lr_schedule,
        progress=args.progress,
        seed=args.seed,
    )
    post = cot.posterior(problem.observation(0), ode_steps=args.ode_steps)
    n = min(args.n_test, ref.shape[0] // 2)
    gen = torch.Generator().manual_seed(0)
    w2s, mmds, floor_w2, floor_mmd, sample_s = [], [], [], [], []
    mmds_unit, floor_unit = [], []
    for k in range(args.test_sets):
        torch.manual_seed(300 + k)
        t0 = time.perf_counter()
        draws = cot.unpack(post.sample((n,)))
        sample_s.append(time.perf_counter() - t0)
        q = torch.stack([draws[k_].reshape(n) for k_ in names], -1).double()
        perm = torch.randperm(ref.shape[0], generator=gen)
        ref_a, ref_b = ref[perm[:n]], ref[perm[n : 2 * n]]
        w2s.append(w2(q, ref_a))
        mmds.append(mmd2(q, ref_a))
        mmds_unit.append(mmd2(q, ref_a, bandwidth=UNIT_KERNEL_H))
        floor_w2.append(w2(ref_b, ref_a))
        floor_mmd.append(mmd2(ref_b, ref_a))
        floor_unit.append(mmd2(ref_b, ref_a, bandwidth=UNIT_KERNEL_H))
    mean_error = (q.mean(0) - ref.mean(0)).tolist()  # the last test set's draws
    by_steps = {}
    for steps in args.extra_ode_steps:  # the same reference subsets, another RK4 step count
        post_k = cot.posterior(problem.observation(0), ode_steps=steps)
        gen_k, values = torch.Generator().manual_seed(0), []
        for k in range(args.test_sets):
            torch.manual_seed(300 + k)
            draws = cot.unpack(post_k.sample((n,)))
            q = torch.stack([draws[k_].reshape(n) for k_ in names], -1).double()
            perm = torch.randperm(ref.shape[0], generator=gen_k)
            values.append(w2(q, ref[perm[:n]]))
        by_steps[str(steps)] = summary(values, 1e2)
    return {
        "problem": "lotka_volterra",
        "method": method,
        "coupling": "independent" if method == "fm" else "full",
        "w2_x1e2_by_ode_steps": by_steps,
        "posterior_mean_error": dict(zip(names, mean_error, strict=True)),
        "w2_x1e2": summary(w2s, 1e2),
        "mmd2_x1e3": summary(mmds, 1e3),
        "floor_w2_x1e2": summary(floor_w2, 1e2),
        "floor_mmd2_x1e3": summary(floor_mmd, 1e3),
        "mmd2_unit_kernel_x1e3": summary(mmds_unit, 1e3),
        "floor_mmd2_unit_kernel_x1e3": summary(floor_unit, 1e3),
        "train_seconds": history.train_seconds + history.coupling_seconds,
        "coupling_seconds": history.coupling_seconds,
        "sample_seconds_per_5000": statistics.fmean(sample_s) * 5000 / n,
        "best_step": history.best_step,
        "best_val_w2": history.best_w2,
        "final_loss": statistics.fmean(history.loss[-100:]),
        "config": config_dict(args),
    }


def config_dict(args) -> dict:
    keys = ("steps", "width", "depth", "batch_size", "eps", "sigma", "lr", "n_train", "n_test",
            "test_sets", "ode_steps", "threads", "lv_simulations", "plan_refresh_every",
            "validations", "ema_decay", "lr_schedule", "seed", "plan_block_size")
    return {k: getattr(args, k) for k in keys}


def fmt(entry: dict, key: str) -> str:
    if key not in entry:
        return "-"
    return f"{entry[key]['mean']:.2f} ± {entry[key]['sd']:.2f}"


def print_table(results: dict) -> None:
    header = (f"{'problem':<15}{'method':<7}{'W2 x1e-2':>15}{'floor':>15}{'paper':>7}"
              f"{'MMD2 x1e-3':>15}{'floor':>15}{'paper':>7}{'unit-k MMD2':>15}{'floor':>15}"
              f"{'train s':>9}{'samp s':>8}")
    print(header)
    print("-" * len(header))
    for key in sorted(results):
        e = results[key]
        if "not_run" in e:
            print(f"{e['problem']:<15}{e['method']:<7} not run: {e['not_run'][:70]}")
            continue
        paper = PAPER_W2 if e["method"].startswith("cot") else PAPER_FM_W2
        print(
            f"{e['problem']:<15}{e['method']:<7}{fmt(e, 'w2_x1e2'):>15}"
            f"{fmt(e, 'floor_w2_x1e2'):>15}{paper.get(e['problem'], math.nan):>7.2f}"
            f"{fmt(e, 'mmd2_x1e3'):>15}{fmt(e, 'floor_mmd2_x1e3'):>15}"
            f"{PAPER_MMD.get(e['problem'], math.nan) if e['method'] != 'fm' else math.nan:>7.2f}"
            f"{fmt(e, 'mmd2_unit_kernel_x1e3'):>15}{fmt(e, 'floor_mmd2_unit_kernel_x1e3'):>15}"
            f"{e['train_seconds']:>9.0f}{e['sample_seconds_per_5000']:>8.1f}"
        )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="checkerboard,moons,circles,swissroll",
                        help="comma list of checkerboard,moons,circles,swissroll,lotka_volterra")
    parser.add_argument("--methods", default="cot,fm", help="comma list of cot,cot_full,fm")
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--eps", type=float, default=1e-3)
    parser.add_argument("--sigma", type=float, default=1e-2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--n-val", type=int, default=1_000)
    parser.add_argument("--n-test", type=int, default=5_000)
    parser.add_argument("--test-sets", type=int, default=5)
    parser.add_argument("--validations", type=int, default=8, help="validations per run")
    parser.add_argument("--ode-steps", type=int, default=50)
    parser.add_argument("--extra-ode-steps", default="",
                        help="comma list: also report W2 with these RK4 step counts")
    parser.add_argument("--lv-simulations", type=int, default=10_000)
    parser.add_argument("--plan-refresh-every", type=int, default=None,
                        help="full plans: new noise and plan every this many steps")
    parser.add_argument("--plan-block-size", type=int, default=None,
                        help="full plans: one exact plan per random block of this many pairs")
    parser.add_argument("--ema-decay", type=float, default=None,
                        help="moving average of the weights with this decay (e.g. 0.999)")
    parser.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the network, the training draws and the simulations "
                             "(test sets keep their seeds)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/cot_flow_matching.json")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, no JSON written")
    args = parser.parse_args(argv)
    args.extra_ode_steps = [int(v) for v in args.extra_ode_steps.split(",") if v.strip()]
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.steps, args.width, args.depth, args.batch_size = 30, 16, 2, 64
        args.n_train, args.n_val, args.n_test, args.test_sets = 500, 100, 200, 2
        args.ode_steps, args.lv_simulations = 5, 300
    results: dict = {}
    if not args.smoke and os.path.exists(args.out):
        with open(args.out) as f:
            results = json.load(f)
    for name in [p.strip() for p in args.problems.split(",") if p.strip()]:
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            if method not in COUPLING:
                raise SystemExit(f"unknown method {method!r}; use cot, cot_full or fm")
            print(f"== {name} / {method}", flush=True)
            if name == "lotka_volterra":
                entry = run_lotka_volterra(method, args)
            elif name in DATASETS:
                entry = run_joint2d(name, method, args)
            else:
                raise SystemExit(f"unknown problem {name!r}")
            results[f"{name}/{method}"] = entry
            if not args.smoke:
                os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
                tmp = args.out + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(results, f, indent=1)
                os.replace(tmp, args.out)
    print_table(results)
    return results


if __name__ == "__main__":
    main()
