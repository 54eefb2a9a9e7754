"""Benchmark of amortized KR posteriors (issue 5): accuracy, speed and calibration.

For each training mode (``reverse``: amortized ELBO + transport cost; ``forward``: maximum
likelihood on simulations) this script trains :class:`pyro_kr.AmortizedKR` once and reports

* Lotka-Volterra (docs/problems.md, fixed observation): W2 (sqrt of POT ``emd2``, squared
  Euclidean cost, raw parameter values) and unbiased RBF MMD^2 (median heuristic) between
  ``--n-test`` posterior draws and the shipped PyMC reference, over ``--test-sets`` test sets,
  with the reference-vs-reference noise floor (same ``n``) beside them; Kerrigan et al. 2024's
  COT-FM
  target is W2 < 0.0402 and MMD < 0.95e-3;
* the time to 10,000 posterior draws for a *new* observation (median of repeats, 1 and 2
  threads) and its ratio to the wall time of the shipped PyMC reference run;
* SBC on ``--sbc-datasets`` simulated datasets (chi-square p-value per parameter, 1% level)
  and the expected-coverage curve (marginal central intervals and joint HPD regions);
* linear-Gaussian (the registry problem, 10 parameters): mean W2 to the exact posterior over
  20 unseen ``y`` against the exact-vs-exact floor (target: within 1.5x).

Results go to ``benchmarks/results/amortized.json`` (with the exact command and settings) and
a table is printed. This is a benchmark, not a timed test.

Usage:
    python benchmarks/amortized.py                       # full settings (hours on 2 cores)
    python benchmarks/amortized.py --lv-steps 3000 ...   # what fits a smaller budget
    python benchmarks/amortized.py --smoke               # seconds, checks the pipeline
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import pyro
import torch

import pyro_kr
import pyro_kr.bench.problems as problems
from pyro_kr._atomic import atomic_path
from pyro_kr.diagnostics import coverage, sbc
from pyro_kr.metrics import UNIT_KERNEL_BANDWIDTH

sys.path.insert(0, str(Path(__file__).resolve().parent))
from amortized_peers import keyword_options  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "amortized.json"
TARGET_W2, TARGET_MMD = 0.0402, 0.95e-3  # Kerrigan et al. 2024, Table 2, COT-FM
TARGET_SAMPLE_S, TARGET_RATIO, TARGET_TRAIN_S = 0.050, 1000.0, 1800.0
UNIT_KERNEL_H = UNIT_KERNEL_BANDWIDTH  # exp(-|a - b|^2), the PCP-Map code MMD kernel


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def summary(values: list[float]) -> dict:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "values": values}


def stack(draws: dict, names: list[str]) -> torch.Tensor:
    return torch.stack([torch.as_tensor(draws[k]).reshape(-1) for k in names], -1).double()


def train(model, guide, mode: str, args, *, steps: int, lr: float, batch_size: int,
          num_simulations: int | None):
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": args.lr_decay ** (1 / max(steps, 1)),
                                    "clip_norm": args.clip_norm})
    schedule = None if mode == "forward" or args.reverse_schedule == "none" else "default"
    options = dict(steps=steps, optim=optim, validate_every=args.validate_every,
                   patience=args.patience)
    if mode != "reverse" and args.forward_defaults:  # fit_amortized's own defaults
        options = {}
    options.update(fit_options(getattr(args, "option", None)))
    t0 = time.perf_counter()
    history = pyro_kr.fit_amortized(
        model, guide, mode=mode, batch_size=batch_size, num_simulations=num_simulations,
        progress=args.progress, schedule=schedule, **options,
    )
    return history, time.perf_counter() - t0


def fit_options(options: list[str] | None) -> dict:
    """``--option NAME=VALUE`` -> extra ``fit_amortized`` keywords (JSON values)."""
    return keyword_options(options, flag="--option")


def time_draws(guide, y, repeats: int) -> dict:
    """Median seconds for 10,000 draws: the guide (its training dtype) and a float32 snapshot.

    The snapshot (``guide.sampler()``) is taken once per trained guide, not per observation;
    its cost is reported as ``snapshot_seconds``.
    """
    out = {}
    guide.sample(y, 10)  # sets an untrained guide up (timing-only runs)
    t0 = time.perf_counter()
    fast = guide.sampler(dtype=torch.float32)
    out["snapshot_seconds"] = time.perf_counter() - t0
    for label, draw in (("", guide.sample), ("float32_", fast.sample)):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            draw(y, 10_000)  # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                draw(y, 10_000)
                times.append(time.perf_counter() - t0)
            out[f"{label}threads_{threads}"] = statistics.median(times)
    torch.set_num_threads(1)
    return out


def best_draw_seconds(speed: dict) -> float:
    """Seconds for 10,000 draws on 2 threads, the faster of float64 and the float32 snapshot."""
    return min(speed["threads_2"], speed.get("float32_threads_2", float("inf")))


def lotka_volterra(mode: str, args) -> dict:
    from pyro_kr.metrics import mmd2, w2

    problem = problems.get("lotka_volterra")
    names = problem.param_names
    ref = stack(problem.reference(0), names)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = lotka_volterra_guide(problem, args)
    if args.init_params:  # continue from a saved run (e.g. reverse fine-tuning of forward)
        pyro.get_param_store().load(args.init_params)
        log(f"lotka_volterra/{mode}: parameters loaded from {args.init_params}")
    fwd = mode != "reverse"  # forward and hybrid train on simulations first
    if args.evaluate_only:  # the loaded parameters as they are
        history, train_s = None, None  # training facts come from the run that saved them
        guide.posterior(problem.observation(0))  # set up now: setup draws from the global RNG
    else:
        history, train_s = train(
            problem.model, guide, mode, args,
            steps=args.lv_steps_forward if fwd else args.lv_steps,
            lr=args.lr_forward if fwd else args.lr_reverse,
            batch_size=args.batch_forward if fwd else args.batch_reverse,
            num_simulations=args.num_simulations if fwd else None,
        )
        log(f"lotka_volterra/{mode}: trained {history.steps} steps in {train_s:.0f} s")
    if args.save_params:
        with atomic_path(args.save_params) as tmp:
            pyro.get_param_store().save(tmp)
        log(f"lotka_volterra/{mode}: parameters saved to {args.save_params}")
    y_obs = problem.observation(0)
    n = min(args.n_test, ref.shape[0] // 2)
    gen = torch.Generator().manual_seed(0)
    w2s, mmds, floor_w2, floor_mmd, mmds_unit, floor_unit = [], [], [], [], [], []
    for k in range(args.test_sets):
        torch.manual_seed(300 + k)
        q = stack(guide.sample(y_obs, n), names)
        perm = torch.randperm(ref.shape[0], generator=gen)
        ref_a, ref_b = ref[perm[:n]], ref[perm[n : 2 * n]]
        w2s.append(w2(q, ref_a))
        mmds.append(mmd2(q, ref_a))
        mmds_unit.append(mmd2(q, ref_a, bandwidth=UNIT_KERNEL_H))
        if not args.skip_floor:  # the floor does not depend on the mode (same seeded splits)
            floor_w2.append(w2(ref_b, ref_a))
            floor_mmd.append(mmd2(ref_b, ref_a))
            floor_unit.append(mmd2(ref_b, ref_a, bandwidth=UNIT_KERNEL_H))
        log(f"  test set {k}: W2 {w2s[-1]:.4f}, MMD2 {mmds[-1]:.2e} (unit kernel "
            f"{mmds_unit[-1]:.2e})"
            + (f" (floors {floor_w2[-1]:.4f}, {floor_mmd[-1]:.2e})" if floor_w2 else ""))
    _, y_new = problem.simulate(1, seed=12345)
    speed = time_draws(guide, y_new[0], args.repeats)
    reference_s = float(problem_reference_seconds())
    s = sbc(guide, problem.model, num_datasets=args.sbc_datasets, num_draws=args.sbc_draws,
            seed=args.sbc_seed)
    c = coverage(guide, problem.model, num_datasets=args.sbc_datasets,
                 num_draws=args.coverage_draws, seed=args.sbc_seed + 1)
    q_mean = stack(guide.sample(y_obs, n), names).mean(0)
    return {
        "problem": "lotka_volterra", "mode": mode,
        "w2": summary(w2s), "mmd2": summary(mmds), "mmd2_unit_kernel": summary(mmds_unit),
        **({"floor_w2": summary(floor_w2), "floor_mmd2": summary(floor_mmd),
            "floor_mmd2_unit_kernel": summary(floor_unit)} if floor_w2 else {}),
        "n_test": n, "test_sets": args.test_sets,
        "posterior_mean": dict(zip(names, q_mean.tolist(), strict=True)),
        "reference_mean": dict(zip(names, ref.mean(0).tolist(), strict=True)),
        "train_seconds": train_s, "steps": history.steps if history else None,
        "best_step": history.best_step if history else None,
        "stopped_early": history.stopped_early if history else None,
        "final_loss": statistics.fmean(history.loss[-50:]) if history else None,
        "init_params": args.init_params,
        "seconds_10k_draws": speed,
        "pymc_reference_seconds": reference_s,
        "speedup_vs_pymc": reference_s / best_draw_seconds(speed),
        "sbc": {"names": s.names, "p_values": s.p_values.tolist(), "uniform_1pct": s.uniform,
                "num_datasets": args.sbc_datasets, "num_draws": args.sbc_draws},
        "coverage": {"levels": c.levels.tolist(), "joint": c.joint.tolist(),
                     "marginal": c.marginal.tolist(), "names": c.names},
        "targets": {
            "w2_below_0.0402": statistics.fmean(w2s) < TARGET_W2,
            "mmd_below_0.95e-3": statistics.fmean(mmds) < TARGET_MMD,
            "mmd_unit_kernel_below_0.95e-3": statistics.fmean(mmds_unit) < TARGET_MMD,
            "10k_draws_under_50ms": best_draw_seconds(speed) < TARGET_SAMPLE_S,
            "speedup_over_1000x": reference_s / best_draw_seconds(speed) > TARGET_RATIO,
            "train_under_30min": None if train_s is None else train_s < TARGET_TRAIN_S,
            "sbc_uniform_1pct": s.uniform,
        },
    }


def lotka_volterra_guide(problem, args) -> pyro_kr.AmortizedKR:
    """The benchmark's guide (``--depth``, ``--init-scale``, ``--embedding-dim``, ``--hidden``),
    or with ``--library-guide`` ``AmortizedKR``'s own defaults (nothing passed)."""
    if getattr(args, "library_guide", False):
        return pyro_kr.AmortizedKR(problem.model, observed="y")
    return pyro_kr.AmortizedKR(problem.model, observed="y", depth=args.depth,
                               init_scale=args.init_scale, embedding_dim=args.embedding_dim,
                               hidden_dims=tuple(args.hidden))


def timing_only(args) -> dict:
    """Time 10,000 draws with an untrained guide of the benchmark's architecture.

    Sampling runs the forward map only (no root finding), so its cost depends on the network
    sizes, not on the trained weights: this measures the speed target on an idle machine
    without retraining.
    """
    problem = problems.get("lotka_volterra")
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = lotka_volterra_guide(problem, args)
    _, y_new = problem.simulate(1, seed=12345)
    speed = time_draws(guide, y_new[0], args.repeats)
    reference_s = problem_reference_seconds()
    return {"problem": "lotka_volterra_timing", "mode": "untrained",
            "seconds_10k_draws": speed, "pymc_reference_seconds": reference_s,
            "speedup_vs_pymc": reference_s / best_draw_seconds(speed),
            "targets": {
                "10k_draws_under_50ms": best_draw_seconds(speed) < TARGET_SAMPLE_S,
                "speedup_over_1000x": reference_s / best_draw_seconds(speed) > TARGET_RATIO,
            }}


def problem_reference_seconds() -> float:
    """Wall time of the shipped PyMC reference run (from its metadata file)."""
    from pyro_kr.bench.problems.references import reference_dir

    meta = reference_dir() / "lotka_volterra_obs0.json"
    return float(json.loads(meta.read_text())["wall_time_s"])


def linear_gaussian(mode: str, args) -> dict:
    from pyro_kr.metrics import w2

    problem = problems.get("linear_gaussian")
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = pyro_kr.AmortizedKR(problem.model, observed="y", map="affine", hidden_dims=())
    fwd = mode != "reverse"  # forward and hybrid train on simulations first
    cpu = time.process_time()
    history, train_s = train(
        problem.model, guide, mode, args, steps=args.lg_steps, lr=args.lg_lr,
        batch_size=args.batch_forward if fwd else args.batch_reverse,
        num_simulations=args.num_simulations if fwd else None,
    )
    cpu = time.process_time() - cpu
    log(f"linear_gaussian/{mode}: trained {history.steps} steps in {train_s:.0f} s "
        f"({cpu:.0f} CPU-s)")
    _, ys = problem.simulate(20, seed=999)
    n = args.lg_n
    values, floors = [], []
    gen = torch.Generator().manual_seed(1)
    for i in range(20):
        mean, cov = problem.exact_posterior(ys[i])
        chol = torch.linalg.cholesky(cov)
        exact = mean + torch.randn(2 * n, 10, generator=gen, dtype=torch.float64) @ chol.T
        torch.manual_seed(400 + i)
        q = guide.sample(ys[i], n)["theta"]
        values.append(w2(q, exact[:n]))
        floors.append(w2(exact[n:], exact[:n]))
    ratio = statistics.fmean(values) / statistics.fmean(floors)
    return {"problem": "linear_gaussian", "mode": mode, "w2": summary(values),
            "floor_w2": summary(floors), "ratio_to_floor": ratio, "n": n,
            "train_seconds": train_s, "train_cpu_seconds": cpu, "steps": history.steps,
            "best_step": getattr(history, "best_step", None),
            "lr_cuts": getattr(history, "lr_cuts", None),
            "num_simulations": args.num_simulations if fwd else None,
            "forward_defaults": bool(args.forward_defaults and mode != "reverse"),
            "options": fit_options(getattr(args, "option", None)),
            "targets": {"within_1.5x_floor": ratio < 1.5}}


def print_table(results: dict) -> None:
    print()
    header = (f"{'problem':<16}{'mode':<9}{'W2':>17}{'floor':>17}{'MMD2 x1e3':>19}"
              f"{'floor':>19}{'train s':>9}{'10k ms':>8}{'SBC ok':>8}")
    print(header)
    print("-" * len(header))
    for e in results.values():
        if "error" in e:
            print(f"{e['problem']:<16}{e['mode']:<9} failed: {e['error']}")
            continue
        if "train_seconds" not in e:  # the timing-only entry
            t = e["seconds_10k_draws"]
            print(f"{e['problem']:<16}{e['mode']:<9} 10k draws: {1e3 * t['threads_2']:.1f} ms "
                  f"(2 threads), {1e3 * t['threads_1']:.1f} ms (1 thread); float32 snapshot "
                  f"{1e3 * t['float32_threads_2']:.1f} ms, {1e3 * t['float32_threads_1']:.1f} ms")
            continue

        def fmt(key, scale=1.0, e=e):
            if key not in e:
                return "-"
            return f"{e[key]['mean'] * scale:.4f} ± {e[key]['sd'] * scale:.4f}"

        speed = e.get("seconds_10k_draws")
        ms = f"{1e3 * best_draw_seconds(speed):.1f}" if speed else "-"
        ok = str(e["sbc"]["uniform_1pct"]) if "sbc" in e else "-"
        print(f"{e['problem']:<16}{e['mode']:<9}{fmt('w2'):>17}{fmt('floor_w2'):>17}"
              f"{fmt('mmd2', 1e3):>19}{fmt('floor_mmd2', 1e3):>19}"
              f"{e['train_seconds'] or math.nan:>9.0f}"
              f"{ms:>8}{ok:>8}")
    print(f"targets (Kerrigan et al. 2024 COT-FM): W2 < {TARGET_W2}, MMD2 < {TARGET_MMD:.2e}; "
          "10k draws (2 threads, best dtype) < 50 ms; > 1000x PyMC; train < 30 min; "
          "linear-Gaussian W2 < 1.5x floor")


def summarize(results: dict) -> None:
    """Add the ``summary`` entry: the better Lotka-Volterra mode against the paper's target."""
    lv = [e for k, e in results.items() if k.startswith("lotka") and "w2" in e]
    if lv:
        best = min(lv, key=lambda e: e["w2"]["mean"])
        results["summary"] = {
            "problem": "summary", "mode": best["mode"],
            "best_mode_w2": best["w2"]["mean"], "best_mode_mmd2": best["mmd2"]["mean"],
            "w2_target_met": best["w2"]["mean"] < TARGET_W2,
            "mmd_target_met": best["mmd2"]["mean"] < TARGET_MMD,
            "train_seconds": best["train_seconds"],
        }


def write_json(payload: dict, out: str | Path) -> None:
    """Write ``payload`` atomically (an interrupt leaves the previous file)."""
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(payload, indent=1, default=float))


_TRAINING_FACTS = ("train_seconds", "steps", "best_step", "stopped_early", "final_loss")


def _inherit_training(entry: dict, trained: dict) -> None:
    """An ``--evaluate-only`` entry takes its training facts from the run that trained it."""
    for key in _TRAINING_FACTS:
        entry[key] = trained.get(key)
    entry["targets"]["train_under_30min"] = trained["targets"]["train_under_30min"]
    entry["trained_in_run"] = trained["run"]


def merge(paths: list[str], out: str) -> dict:
    """Combine the JSON files of several runs (e.g. one per mode, run in parallel)."""
    runs, results, earlier, floors = [], {}, [], {}
    for path in paths:
        payload = json.loads(Path(path).read_text())
        runs.append({"file": Path(path).name, "command": payload["command"],
                     "settings": payload["settings"]})
        for key, entry in payload["results"].items():
            if key == "summary":
                continue
            entry["run"] = Path(path).name
            if key.startswith("lotka") and "floor_w2" in entry:
                floors.setdefault("entry", entry)
            if key in results:  # a later run of the same setting replaces it; keep the record
                earlier.append(results[key])
                if entry.get("init_params") and entry.get("train_seconds") is None:
                    _inherit_training(entry, results[key])
            results[key] = entry
    for key, entry in results.items():
        if key.startswith("lotka") and "w2" in entry and "floor_w2" not in entry and floors:
            source = floors["entry"]
            entry["floor_w2"], entry["floor_mmd2"] = source["floor_w2"], source["floor_mmd2"]
            entry["floor_note"] = (f"from {source['run']} (same seeded reference splits, "
                                   f"n = {source['n_test']})")
    summarize(results)
    payload = {"runs": runs, "results": results, "earlier_runs": earlier}
    write_json(payload, out)
    print_table({k: v for k, v in results.items() if k != "summary"})
    return payload


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=["forward", "reverse"],
                        choices=["forward", "reverse", "hybrid"])
    parser.add_argument("--lv-steps", type=int, default=20_000, help="reverse-mode steps")
    parser.add_argument("--lv-steps-forward", type=int, default=20_000)
    parser.add_argument("--batch-reverse", type=int, default=128)
    parser.add_argument("--batch-forward", type=int, default=512)
    parser.add_argument("--lr-reverse", type=float, default=1e-3)
    parser.add_argument("--lr-forward", type=float, default=2e-3)
    parser.add_argument("--lr-decay", type=float, default=0.05, help="total lr decay factor")
    parser.add_argument("--clip-norm", type=float, default=10.0)
    parser.add_argument("--num-simulations", type=int, default=100_000)
    parser.add_argument("--validate-every", type=int, default=200)
    parser.add_argument("--patience", type=int, default=20)
    parser.add_argument("--forward-defaults", action="store_true",
                        help="modes forward and hybrid: fit_amortized's default steps, "
                             "optimizer, validation and stopping, and hybrid's default reverse "
                             "phase (only the batch size and the number of simulations are "
                             "passed)")
    parser.add_argument("--option", action="append", metavar="NAME=VALUE",
                        help="pass fit_amortized(NAME=VALUE) (a JSON value, e.g. "
                             "forward_weight=1); repeatable")
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--init-scale", type=float, default=0.1)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64],
                        help="hidden widths of the conditional monotone layers")
    parser.add_argument("--embedding-dim", type=int, default=16)
    parser.add_argument("--n-test", type=int, default=5000)
    parser.add_argument("--test-sets", type=int, default=5)
    parser.add_argument("--sbc-datasets", type=int, default=200)
    parser.add_argument("--sbc-draws", type=int, default=100)
    parser.add_argument("--coverage-draws", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lg-steps", type=int, default=3000)
    parser.add_argument("--lg-lr", type=float, default=2e-2)
    parser.add_argument("--lg-n", type=int, default=2000)
    parser.add_argument("--skip-floor", action="store_true",
                        help="skip the Lotka-Volterra noise floor (computed by another run)")
    parser.add_argument("--skip-lv", action="store_true")
    parser.add_argument("--skip-lg", action="store_true")
    parser.add_argument("--reverse-schedule", choices=["default", "none"], default="default",
                        help="reverse mode: anneal (default) or plain amortized ELBO")
    parser.add_argument("--init-params", metavar="PT",
                        help="Lotka-Volterra: start from a param store saved by --save-params")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="Lotka-Volterra: evaluate the --init-params guide without training")
    parser.add_argument("--sbc-seed", type=int, default=1,
                        help="seed of the SBC datasets (coverage uses seed + 1)")
    parser.add_argument("--save-params", metavar="PT",
                        help="Lotka-Volterra: save the trained param store here")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--smoke", action="store_true", help="tiny settings, seconds")
    parser.add_argument("--library-guide", action="store_true",
                        help="Lotka-Volterra: AmortizedKR with its own defaults (--depth, "
                             "--init-scale, --embedding-dim and --hidden are ignored)")
    parser.add_argument("--timing-only", action="store_true",
                        help="only time 10,000 draws (untrained guide, same architecture)")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="only combine the result files of earlier runs into --out")
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    if args.evaluate_only and not args.init_params:
        parser.error("--evaluate-only needs --init-params (the parameters to evaluate)")
    if args.timing_only:
        entry = timing_only(args)
        payload = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                   "settings": vars(args), "results": {"lotka_volterra_timing": entry}}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json(payload, args.out)
        print(json.dumps(entry["seconds_10k_draws"]))
        return payload
    if args.smoke:
        args.lv_steps = args.lv_steps_forward = args.lg_steps = 5
        args.batch_reverse = args.batch_forward = 16
        args.num_simulations, args.n_test, args.test_sets, args.lg_n = 300, 200, 2, 100
        args.sbc_datasets, args.sbc_draws, args.coverage_draws, args.repeats = 20, 10, 20, 1
        args.depth, args.validate_every, args.hidden = 1, 2, [16]
    torch.set_num_threads(1)
    results: dict[str, dict] = {}
    for mode in args.modes:
        for name, fn, skip in (("lotka_volterra", lotka_volterra, args.skip_lv),
                               ("linear_gaussian", linear_gaussian, args.skip_lg)):
            if skip:
                continue
            try:
                results[f"{name}/{mode}"] = fn(mode, args)
            except Exception as error:  # noqa: BLE001 - record and go on with the others
                log(f"{name}/{mode} failed: {error!r}")
                results[f"{name}/{mode}"] = {"problem": name, "mode": mode,
                                             "error": repr(error)}
    summarize(results)
    payload = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": vars(args),
        "torch_threads_training": 1,
        "results": results,
    }
    if not args.smoke or args.out != str(RESULTS):
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json(payload, args.out)
        log(f"wrote {args.out}")
    print_table({k: v for k, v in results.items() if k != "summary"})
    return payload


if __name__ == "__main__":
    main()
