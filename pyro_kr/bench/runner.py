"""Run benchmark methods on a problem and record metrics against its reference posterior.

For every method and seed: fit with a step budget, draw posterior samples, compare them with
the reference (:func:`pyro_kr.metrics.compare`: each metric with its noise floor), compute the
PSIS k-hat of the guide (:func:`pyro_kr.diagnostics.psis`, when available) and count failures
(non-finite loss or draws, or k-hat > 1). ``results.json`` is rewritten atomically after every
finished run, so an interrupt keeps everything finished before it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pyro_kr._atomic import atomic_path
from pyro_kr._validation import check_dim
from pyro_kr.bench import methods as methods_registry

BENCH_METRICS = ("w2", "w2_standardized", "mmd2", "mean_error", "sd_error")
"""Metrics the bench computes by default (``c2st`` is available but slow)."""

DEFAULT_STEPS = {"lotka_volterra": 600, "elliptic_1d": 1000, "darcy_2d": 300}
"""Per-problem step budget of ``pyro-kr bench`` when ``--steps`` is not given (the model's
cost per step differs by orders of magnitude; the default Lotka-Volterra run, 4 methods x 600
steps, took 235 s of wall time on 2 shared cores, inside the 10-minute target)."""

FALLBACK_STEPS = 2000
"""Step budget for problems not in :data:`DEFAULT_STEPS`."""


def default_steps(problem_name: str) -> int:
    """Return the default step budget of ``problem_name``.

    Example:
        >>> default_steps("lotka_volterra"), default_steps("banana")
        (600, 2000)
    """
    return DEFAULT_STEPS.get(problem_name, FALLBACK_STEPS)


KHAT_FAIL = 1.0
"""A run whose PSIS k-hat exceeds this counts as a failure."""


@dataclass(frozen=True)
class BenchConfig:
    """Settings of one benchmark run (travel together into ``results.json``).

    The budget is the same for every SVI method: ``steps`` optimizer steps of ``particles``
    ELBO particles each (``nuts`` has its own fixed budget).
    """

    steps: int = 1000
    particles: int = methods_registry.PARTICLES
    seeds: int = 1
    num_draws: int = 5000
    metric_n: int = 2000
    observation: int = 0
    metrics: tuple[str, ...] = BENCH_METRICS
    psis: bool = True
    psis_draws: int = 4000


def write_json_atomic(data: Any, path: str | os.PathLike) -> Path:
    """Write ``data`` as JSON through a temporary file and ``os.replace`` (never half a file)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(_jsonable(data), f, indent=2, allow_nan=True)
    return path


def save_npz_atomic(arrays: dict[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Save arrays as a compressed ``.npz`` through a temporary file and ``os.replace``."""
    path = Path(path)
    with atomic_path(path, suffix=".tmp.npz") as tmp:
        np.savez_compressed(tmp, **arrays)
    return path


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        return x.item()
    return x


def check_writable(out: str | os.PathLike) -> Path:
    """Create ``out`` if needed and check a file can be written there.

    Raises:
        PermissionError: naming the directory, before any work is done.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise PermissionError(f"output directory {str(out)!r} is not writable: {exc}") from exc
    return out


def _downsample(trace: Sequence[float], k: int = 500) -> tuple[list[int], list[float]]:
    """Return at most ``k`` points of ``trace`` as ``(step numbers (1-based), values)``."""
    idx = np.arange(len(trace))
    if len(trace) > k:
        idx = np.unique(np.linspace(0, len(trace) - 1, k).round().astype(int))
    return [int(i) + 1 for i in idx], [float(trace[i]) for i in idx]


def _finite(draws: dict[str, np.ndarray]) -> bool:
    return bool(draws) and all(np.isfinite(v).all() for v in draws.values())


def _psis_khat(result, problem, y, num_samples: int) -> float | None:
    if result.guide is None:
        return None
    try:
        from pyro_kr import diagnostics
    except ImportError:
        return None
    with methods_registry.float64():
        out = diagnostics.psis(result.guide, problem.model, y=y, num_samples=num_samples)
    return float(out.khat)


def _aggregate(runs: list[dict], metric_names: Sequence[str]) -> dict[str, Any]:
    """Mean and sd over seeds of every number; failures = crashed runs + k-hat > 1."""
    failures = sum(1 for r in runs if r["failed"] or r.get("khat_high"))
    out: dict[str, Any] = {"runs": len(runs), "failures": failures}
    keys = list(metric_names) + ["wall_time_s", "first_step_s", "seconds_per_step", "khat"]
    for key in keys:
        vals = [r[key] for r in runs if r.get(key) is not None and math.isfinite(r[key])]
        out[key] = float(np.mean(vals)) if vals else None
        out[f"{key}_sd"] = float(np.std(vals)) if len(vals) > 1 else None
    return out


def load_reference(problem, observation: int) -> tuple[dict[str, np.ndarray], str]:
    """Return ``(reference draws, source)``.

    The draws are ``problem.reference(i)`` (shipped or exact); if the problem has none, a
    cached :func:`pyro_kr.bench.reference.nuts` run with the default settings (``pyro-kr reference
    PROBLEM`` builds it). The bench never starts a long MCMC build by itself.

    Raises:
        ValueError: the problem has no observation ``observation``.
        LookupError: neither exists; the message says how to build one.
    """
    problem.observation(observation)  # an index the problem lacks: one clear ValueError
    try:
        return problem.reference(observation), "problem.reference"
    except (FileNotFoundError, ImportError, KeyError, NotImplementedError, ValueError) as exc:
        from pyro_kr.bench import reference

        options = methods_registry.reference_options(problem.name)
        try:
            idata = reference.nuts(problem, observation, build=False, **options)
        except reference.ReferenceNotCachedError:
            raise LookupError(
                f"no reference posterior for {problem.name} observation {observation}: "
                f"{exc}. Build one with `pyro-kr reference {problem.name}`"
            ) from None
        return reference.to_draws(idata, problem.param_names), "reference.nuts (cached)"


def run(
    problem,
    method_names: Sequence[str],
    out: str | os.PathLike,
    *,
    config: BenchConfig = BenchConfig(),
    progress: bool = True,
    on_result: Callable[[str, dict], None] | None = None,
    reference: tuple[dict[str, np.ndarray], str] | None = None,
) -> dict[str, Any]:
    """Run ``method_names`` on ``problem``; write ``results.json`` and draws into ``out``.

    Args:
        problem: a :mod:`pyro_kr.bench.problems` Problem.
        method_names: names from :func:`pyro_kr.bench.methods.names`.
        out: output directory (created; must be writable).
        config: steps, seeds, draws, metrics (:class:`BenchConfig`).
        progress: show progress bars.
        on_result: called with ``(method, run record)`` after each finished run.
        reference: ``(draws, source)`` if already loaded (default :func:`load_reference`).

    Returns:
        The results dict (also in ``out/results.json``); keys ``problem``, ``config``,
        ``reference``, ``noise_floor``, ``methods`` (per method: ``summary`` and ``runs``),
        ``status`` (``"complete"`` or ``"interrupted"``).

    Example:
        >>> from pyro_kr.bench import runner  # doctest: +SKIP
        >>> import pyro_kr.bench.problems as problems  # doctest: +SKIP
        >>> res = runner.run(problems.get("banana"), ["auto_normal"], "out",  # doctest: +SKIP
        ...                  config=runner.BenchConfig(steps=200))
    """
    from pyro_kr import metrics

    for name in (config.steps, config.particles, config.seeds, config.num_draws,
                 config.metric_n):
        check_dim("bench setting", name)
    fits = {m: methods_registry.get(m) for m in method_names}  # validates the names
    out = check_writable(out)
    ref, source = reference or load_reference(problem, config.observation)
    n_ref = len(next(iter(ref.values())))
    y = problem.observation(config.observation)
    n = min(config.metric_n, config.num_draws, n_ref // 2)
    results: dict[str, Any] = {
        "problem": problem.name,
        "param_names": list(problem.param_names),
        "config": {**vars(config), "metrics": list(config.metrics), "metric_n_used": n},
        "reference": {"source": source, "num_draws": n_ref},
        "noise_floor": {},
        "methods": {},
        "status": "running",
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "platform": {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
        },
    }
    path = out / "results.json"
    write_json_atomic(results, path)
    try:
        for name, fit in fits.items():
            runs: list[dict] = []
            results["methods"][name] = {"runs": runs, "summary": {}}
            for seed in range(config.seeds):
                record = _one_run(
                    name, fit, problem, y, ref, seed, n, config, progress, metrics, out, results
                )
                runs.append(record)
                results["methods"][name]["summary"] = _aggregate(runs, config.metrics)
                write_json_atomic(results, path)
                if on_result is not None:
                    on_result(name, record)
    except KeyboardInterrupt:
        results["status"] = "interrupted"
        _drop_unfinished(results)
        write_json_atomic(results, path)
        raise
    results["status"] = "complete"
    write_json_atomic(results, path)
    return results


def _drop_unfinished(results: dict) -> None:
    for name in [m for m, v in results["methods"].items() if not v["runs"]]:
        del results["methods"][name]


def _one_run(name, fit, problem, y, ref, seed, n, config, progress, metrics, out, results):
    record: dict[str, Any] = {
        "seed": seed,
        "steps": config.steps,
        "particles": config.particles,
        "failed": None,
        "khat": None,
        "khat_high": False,
    }
    try:
        res = fit(
            problem,
            y,
            steps=config.steps,
            seed=seed,
            num_draws=config.num_draws,
            progress=progress,
            particles=config.particles,
        )
    except Exception as exc:  # noqa: BLE001 - a crashed method is a counted failure
        record["failed"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return record
    loss_steps, loss = _downsample(res.loss)
    record.update(
        wall_time_s=res.wall_time_s,
        first_step_s=res.first_step_s,
        seconds_per_step=res.seconds_per_step,
        loss=loss,
        loss_steps=loss_steps,
        neg_elbo=_downsample(res.neg_elbo)[1],
        **res.extra,
    )
    if res.particles is None:  # not an SVI method (nuts): the particle budget does not apply
        record["particles"] = None
    if res.failed or not _finite(res.draws):
        record["failed"] = res.failed or "non-finite posterior draws"
        return record
    if seed == 0:
        save_npz_atomic(res.draws, out / f"draws_{name}.npz")
    scores = metrics.compare(res.draws, ref, metrics=config.metrics, n=n, seed=seed)
    for m in config.metrics:
        record[m] = scores[m]
        record[f"{m}_noise_floor"] = scores[f"{m}_noise_floor"]
        results["noise_floor"].setdefault(m, scores[f"{m}_noise_floor"])
    record["khat"] = _psis_khat(res, problem, y, config.psis_draws) if config.psis else None
    record["khat_high"] = record["khat"] is not None and not record["khat"] <= KHAT_FAIL
    return record
