"""Named metrics, their noise floors, and :func:`compare` (all metrics against one reference).

The noise floor of a metric is its value between two *independent* sets of reference draws of
the same size as the comparison: what the metric reports for a perfect method. A method whose
metric is within the floor's sampling spread of it cannot be distinguished from exact at that
sample size, and a number below the floor is noise. Every comparison must state it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from pyro_kr._validation import check_dim
from pyro_kr.metrics._inputs import Draws, as_draws, as_pair, generator, subsample
from pyro_kr.metrics.c2st import c2st
from pyro_kr.metrics.mmd import median_bandwidth, mmd2
from pyro_kr.metrics.moments import moment_errors
from pyro_kr.metrics.wasserstein import sliced_w2, standardize_by, w2

#: Every metric name :func:`compare` and :func:`noise_floor` understand.
METRICS = ("w2", "w2_standardized", "sliced_w2", "mmd2", "c2st", "mean_error", "sd_error")
#: The metrics :func:`compare` computes by default.
DEFAULT_METRICS = ("w2", "w2_standardized", "mmd2", "c2st", "mean_error", "sd_error")

Metric = str | Callable[[torch.Tensor, torch.Tensor], float]


@dataclass(frozen=True)
class _ReferenceStats:
    """What a named metric takes from the full reference (so a metric and its floor agree)."""

    reference: torch.Tensor  # (N, d), standardization for w2_standardized
    bandwidth: float  # the MMD kernel length, median heuristic on the reference


def _reference_stats(reference: torch.Tensor, names: Sequence[str], seed: int) -> _ReferenceStats:
    bandwidth = median_bandwidth(reference, seed=seed) if "mmd2" in names else float("nan")
    return _ReferenceStats(reference=reference, bandwidth=bandwidth)


def _named(name: str, x: torch.Tensor, y: torch.Tensor, stats: _ReferenceStats, seed: int):
    if name == "w2":
        return w2(x, y)
    if name == "w2_standardized":
        xs, ys = standardize_by(x, y, stats.reference)
        return w2(xs, ys)
    if name == "sliced_w2":
        return sliced_w2(x, y, seed=seed)
    if name == "mmd2":
        return mmd2(x, y, bandwidth=stats.bandwidth)
    if name == "c2st":
        return c2st(x, y, seed=seed)
    errors = moment_errors(x, y)
    return errors.max_mean if name == "mean_error" else errors.max_sd


def _check_names(metrics: Sequence[Metric]) -> list[Metric]:
    metrics = [metrics] if isinstance(metrics, str) or callable(metrics) else list(metrics)
    for m in metrics:
        if isinstance(m, str) and m not in METRICS:
            raise ValueError(f"unknown metric {m!r}; valid names are {list(METRICS)}")
        if not isinstance(m, str) and not callable(m):
            raise TypeError(f"a metric must be a name or a callable, got {type(m).__name__}")
    return metrics


def _split(reference: torch.Tensor, n: int | None, seed: int, *, what: str):
    half = reference.shape[0] // 2
    n = half if n is None else check_dim("n", n, minimum=2)
    if n > half:
        raise ValueError(
            f"{what} needs two disjoint reference halves of n={n} draws, so at least {2 * n} "
            f"reference draws; got {reference.shape[0]}"
        )
    shuffled = subsample(reference, 2 * n, generator(seed))
    return shuffled[:n], shuffled[n:], n


def _evaluate(metric: Metric, x, y, stats: _ReferenceStats, seed: int) -> float:
    if isinstance(metric, str):
        return float(_named(metric, x, y, stats, seed))
    return float(metric(x, y))


def noise_floor(
    metric: Metric, reference: Draws, *, n: int | None = None, seed: int = 0, repeats: int = 1
) -> float:
    """Return a metric's value between two independent halves of the reference draws.

    The reference is shuffled (seeded) and two disjoint sets of ``n`` draws are compared with
    ``metric`` — what a method sampling the reference exactly would score with ``n`` draws.

    Args:
        metric: a name from :data:`METRICS` or a callable ``(x, y) -> float`` on ``(n, d)``
            tensors (``y`` plays the reference).
        reference: reference draws ``(N, d)`` (or a dict), with ``N >= 2 n``.
        n: draws per half (default ``N // 2``). Use the size of the comparison it qualifies:
            most metrics are biased upward at small ``n``.
        seed: seed of the split (and of seeded metrics).
        repeats: average over this many independent splits (seeds ``seed, seed + 1, ...``).

    Returns:
        The floor as a float.

    Example:
        >>> ref = torch.randn(2000, 2, dtype=torch.float64)
        >>> floor = noise_floor("w2", ref, n=500)  # about 0.2: W2 is biased at finite n
    """
    (metric,) = _check_names([metric])
    rt = as_draws("noise_floor", reference, what="reference")
    check_dim("repeats", repeats)
    stats = _reference_stats(rt, [metric] if isinstance(metric, str) else [], seed)
    values = []
    for r in range(repeats):
        a, b, _ = _split(rt, n, seed + r, what="noise_floor")
        values.append(_evaluate(metric, b, a, stats, seed + r))
    return sum(values) / len(values)


def compare(
    draws: Draws,
    reference: Draws,
    *,
    metrics: Sequence[Metric] = DEFAULT_METRICS,
    n: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Compute several metrics between ``draws`` and ``reference``, each with its noise floor.

    Protocol: the reference is shuffled and split into two disjoint halves ``A`` and ``B`` of
    ``n`` draws; ``n`` draws of ``draws`` are compared with ``A`` (``metric(draws, A)``) and the
    floor is ``metric(B, A)``, so the value and its floor use the same sample size and the same
    reference set. Named metrics that need settings take them from the full reference: the MMD
    bandwidth is the median heuristic on the reference, ``w2_standardized`` divides by the
    reference's standard deviations.

    Args:
        draws: the method's draws ``(n_draws, d)`` (or a dict ``name -> (n_draws, ...)``).
        reference: reference draws ``(N, d)`` (a dict must have the same keys as ``draws``).
        metrics: names from :data:`METRICS` and/or callables ``(x, y) -> float``; a callable is
            reported under its ``__name__``.
        n: comparison size (default ``min(n_draws, N // 2)``).
        seed: seed of the subsets and of the seeded metrics.

    Returns:
        A flat dict: ``{metric: value, metric + "_noise_floor": floor, ..., "n": n}``.

    Example:
        >>> ref = torch.randn(1000, 2, dtype=torch.float64)
        >>> out = compare(torch.randn(500, 2) + 0.5, ref, metrics=("w2", "mean_error"))
        >>> out["w2"] > out["w2_noise_floor"]
        True
    """
    metrics = _check_names(metrics)
    xt, rt = as_pair("compare", draws, reference, names=("draws", "reference"))
    if n is None:
        n = min(xt.shape[0], rt.shape[0] // 2)
    n = check_dim("n", n, minimum=2)
    if n > xt.shape[0]:
        raise ValueError(f"compare: n={n} is larger than the {xt.shape[0]} draws given")
    a, b, n = _split(rt, n, seed, what="compare")
    x = subsample(xt, n, generator(seed + 1))
    stats = _reference_stats(rt, [m for m in metrics if isinstance(m, str)], seed)
    out: dict[str, float] = {}
    for m in metrics:
        key = m if isinstance(m, str) else getattr(m, "__name__", repr(m))
        out[key] = _evaluate(m, x, a, stats, seed)
        out[f"{key}_noise_floor"] = _evaluate(m, b, a, stats, seed)
    out["n"] = n
    return out

