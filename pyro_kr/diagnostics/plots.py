"""Figures for comparing posterior approximations: pairs, marginals, loss traces, metrics.

Matplotlib is imported inside each function and figures are built with
``matplotlib.figure.Figure`` (no pyplot state, safe under the Agg backend and in threads).
Every function returns the ``Figure`` and, given ``path``, also saves it there (PNG, PDF or
SVG by extension).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyro_kr.metrics import Draws, as_draws, flatten_names

_REFERENCE_COLOR = "0.25"


def new_figure(width: float, height: float):
    """A constrained-layout matplotlib ``Figure`` (no pyplot state) of the given size."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig, path: str | Path | None):
    """Save ``fig`` to ``path`` (folders created; 110 dpi) unless ``path`` is None; return it."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def _as_array(owner: str, draws: Draws, *, what: str, order=None) -> np.ndarray:
    return as_draws(owner, draws, what=what, order=order).cpu().numpy()


def _labels(draws: Draws, d: int, names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != d:
            raise ValueError(f"expected {d} names, got {len(names)}")
        return list(names)
    return flatten_names(draws) if isinstance(draws, Mapping) else [f"x[{i}]" for i in range(d)]


def _thin(x: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    if x.shape[0] <= max_points:
        return x
    return x[np.random.default_rng(seed).choice(x.shape[0], max_points, replace=False)]


def _kde(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Gaussian kernel density estimate with Scott's bandwidth (no scipy needed)."""
    values = values[:5000]
    sd = values.std()
    h = 1.06 * (sd if sd > 0 else 1.0) * values.shape[0] ** (-0.2)
    z = (grid[:, None] - values[None, :]) / h
    return np.exp(-0.5 * z * z).sum(1) / (values.shape[0] * h * math.sqrt(2 * math.pi))


def _grid(*sets: np.ndarray, pad: float = 0.1) -> np.ndarray:
    lo = min(np.quantile(s, 0.002) for s in sets)
    hi = max(np.quantile(s, 0.998) for s in sets)
    span = (hi - lo) or 1.0
    return np.linspace(lo - pad * span, hi + pad * span, 200)


def pair_plot(
    draws: Draws,
    reference: Draws | None = None,
    *,
    label: str = "method",
    reference_label: str = "reference",
    names: Sequence[str] | None = None,
    max_dims: int = 6,
    max_points: int = 1000,
    seed: int = 0,
    path: str | Path | None = None,
):
    """Plot pairwise scatter plots and marginal densities of draws over a reference's.

    Args:
        draws: the method's draws ``(n, d)`` (or a dict ``name -> (n, ...)``).
        reference: reference draws ``(m, d)`` drawn underneath in grey (optional).
        label: legend label of ``draws``.
        reference_label: legend label of ``reference``.
        names: coordinate labels (default: from the dict keys, else ``x[i]``).
        max_dims: only the first ``max_dims`` coordinates are shown.
        max_points: scatter at most this many points per set (seeded subset).
        seed: seed of the subset.
        path: save the figure here as well.

    Returns:
        ``matplotlib.figure.Figure`` (a ``k x k`` grid, ``k = min(d, max_dims)``).

    Example:
        >>> fig = pair_plot(torch.randn(500, 3), torch.randn(500, 3))
        >>> len(fig.axes)
        9
    """
    order = list(draws) if isinstance(draws, Mapping) else None
    x = _array_pair("pair_plot", draws, reference, order)
    labels = _labels(draws, x[0].shape[1], names)
    k = min(x[0].shape[1], max_dims)
    sets = [(_thin(a[:, :k], max_points, seed), c, lab) for a, c, lab in zip(
        x, ("C0", _REFERENCE_COLOR), (label, reference_label), strict=False) if a is not None]
    fig = new_figure(2.2 * k + 0.6, 2.2 * k + 0.3)
    axes = fig.subplots(k, k, squeeze=False)
    for i in range(k):
        for j in range(k):
            ax = axes[i, j]
            if j > i:
                ax.set_axis_off()
                continue
            if i == j:
                grid = _grid(*(a[:, i] for a, _, _ in sets))
                for a, color, lab in reversed(sets):
                    ax.plot(grid, _kde(a[:, i], grid), color=color, label=lab)
                ax.set_yticks([])
            else:
                for a, color, lab in reversed(sets):
                    ax.scatter(a[:, j], a[:, i], s=3, alpha=0.35, color=color, label=lab,
                               rasterized=True)
            if i == k - 1:
                ax.set_xlabel(labels[j])
            if j == 0 and i > 0:
                ax.set_ylabel(labels[i])
    axes[0, 0].legend(fontsize="small", loc="upper right")
    return save_figure(fig, path)


def _array_pair(owner, draws, reference, order):
    x = _as_array(owner, draws, what="draws", order=order)
    if reference is None:
        return x, None
    r = _as_array(owner, reference, what="reference", order=order)
    if r.shape[1] != x.shape[1]:
        raise ValueError(
            f"{owner} expected draws and reference with the same number of coordinates, got "
            f"draws of shape {x.shape} and reference of shape {r.shape}"
        )
    return x, r


def marginal_plot(
    samples: Mapping[str, Draws],
    *,
    reference: Draws | None = None,
    reference_label: str = "reference",
    names: Sequence[str] | None = None,
    max_dims: int = 16,
    columns: int = 4,
    path: str | Path | None = None,
):
    """Plot the marginal densities of several methods' draws (and a reference) per coordinate.

    Args:
        samples: ``label -> draws`` (each ``(n, d)`` or a dict ``name -> (n, ...)``; all with the
            same coordinates).
        reference: reference draws, drawn as a thick grey line.
        reference_label: legend label of ``reference``.
        names: coordinate labels (default: from the dict keys, else ``x[i]``).
        max_dims: only the first ``max_dims`` coordinates are shown.
        columns: panels per row.
        path: save the figure here as well.

    Returns:
        ``matplotlib.figure.Figure`` with one panel per coordinate.

    Example:
        >>> fig = marginal_plot({"a": torch.randn(400, 2)}, reference=torch.randn(400, 2))
        >>> len(fig.axes)
        2
    """
    if not isinstance(samples, Mapping) or not samples:
        raise TypeError("marginal_plot expected a non-empty mapping label -> draws")
    first = next(iter(samples.values()))
    order = list(first) if isinstance(first, Mapping) else None
    arrays = {lab: _as_array("marginal_plot", s, what=f"samples[{lab!r}]", order=order)
              for lab, s in samples.items()}
    d = next(iter(arrays.values())).shape[1]
    for lab, a in arrays.items():
        if a.shape[1] != d:
            raise ValueError(f"marginal_plot: samples[{lab!r}] has shape {a.shape}, expected "
                             f"{d} coordinates")
    ref = None if reference is None else _array_pair("marginal_plot", first, reference, order)[1]
    labels = _labels(first, d, names)
    k = min(d, max_dims)
    cols = min(columns, k)
    rows = math.ceil(k / cols)
    fig = new_figure(3.0 * cols, 2.4 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for i in range(k):
        ax = axes[i]
        pool = [a[:, i] for a in arrays.values()] + ([ref[:, i]] if ref is not None else [])
        grid = _grid(*pool)
        if ref is not None:
            ax.plot(grid, _kde(ref[:, i], grid), color=_REFERENCE_COLOR, lw=2.5,
                    label=reference_label)
        for c, (lab, a) in enumerate(arrays.items()):
            ax.plot(grid, _kde(a[:, i], grid), color=f"C{c}", label=lab)
        ax.set_title(labels[i], fontsize="medium")
        ax.set_yticks([])
    for ax in axes[k:]:
        ax.set_axis_off()
    axes[0].legend(fontsize="small")
    return save_figure(fig, path)


def _series(obj: Any, key: str | None = None) -> tuple[str, np.ndarray]:
    attrs = (("loss", "loss"), ("elbo", "ELBO")) if key is None else ((key, key),)
    for attr, name in attrs:
        values = getattr(obj, attr, None)
        if values is not None and len(values):
            return name, np.asarray([float(v) for v in values])
    if isinstance(obj, torch.Tensor) or isinstance(obj, (Sequence, np.ndarray)):
        return "loss", np.asarray([float(v) for v in obj])
    wanted = ".loss or .elbo" if key is None else f".{key}"
    raise TypeError(
        f"expected a sequence of floats or an object with a non-empty {wanted} list, got "
        f"{type(obj).__name__}"
    )


def loss_plot(
    history: Any,
    *,
    key: str | None = None,
    smooth: int = 50,
    robust_limits: bool = True,
    path: str | Path | None = None,
):
    """Plot a loss (or ELBO) trace, raw and as a moving average.

    Args:
        history: a sequence of floats, an object with a ``.loss`` or ``.elbo`` list (such as
            :class:`pyro_kr.fit` 's ``History``), or a mapping ``label -> either`` to overlay
            several runs.
        key: which attribute of a History-like object to plot (default: ``loss`` if present,
            else ``elbo``).
        smooth: moving-average window (steps); 1 disables smoothing.
        robust_limits: clip the y range to the smoothed curve after its first 5 % (so a huge
            initial loss does not flatten the rest).
        path: save the figure here as well.

    Returns:
        ``matplotlib.figure.Figure``.

    Example:
        >>> fig = loss_plot([10.0 / (t + 1) for t in range(300)])
        >>> fig.axes[0].get_xlabel()
        'step'
    """
    runs = dict(history) if isinstance(history, Mapping) else {"": history}
    fig = new_figure(6.0, 3.6)
    ax = fig.subplots()
    lows, highs, ylabel = [], [], "loss"
    for c, (lab, run) in enumerate(runs.items()):
        ylabel, y = _series(run, key)
        if y.size == 0 or not np.isfinite(y).any():
            continue
        steps = np.arange(y.size)
        ax.plot(steps, y, color=f"C{c}", alpha=0.25, lw=0.8)
        w = max(1, min(smooth, y.size // 5 or 1))
        smoothed = np.convolve(y, np.ones(w) / w, mode="valid")
        ax.plot(steps[w - 1:], smoothed, color=f"C{c}", label=lab or None)
        tail = smoothed[int(0.05 * smoothed.size):]
        tail = tail[np.isfinite(tail)]
        if tail.size:
            lows.append(tail.min())
            highs.append(tail.max())
    if robust_limits and lows:
        lo, hi = min(lows), max(highs)
        pad = 0.1 * ((hi - lo) or abs(hi) or 1.0)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if len(runs) > 1:
        ax.legend(fontsize="small")
    return save_figure(fig, path)


def metrics_plot(
    results: Mapping[str, Mapping[str, float]],
    *,
    metrics: Sequence[str] | None = None,
    noise_floor: Mapping[str, float] | None = None,
    log_scale: bool = False,
    path: str | Path | None = None,
):
    """Plot a bar chart per metric across methods, with the metric's noise floor as a line.

    Args:
        results: ``method -> {metric: value}``; the dicts returned by
            :func:`pyro_kr.metrics.compare` fit as they are (their ``"{metric}_noise_floor"``
            entries give the floor lines, ``"n"`` is ignored).
        metrics: which metrics to show (default: every metric of the first method).
        noise_floor: ``metric -> floor`` (overrides the ``_noise_floor`` entries).
        log_scale: logarithmic y axes (for positive metrics).
        path: save the figure here as well.

    Returns:
        ``matplotlib.figure.Figure`` with one panel per metric.

    Example:
        >>> res = {"A": {"w2": 0.3, "w2_noise_floor": 0.1}, "B": {"w2": 0.2}}
        >>> fig = metrics_plot(res)
        >>> len(fig.axes)
        1
    """
    if not isinstance(results, Mapping) or not results:
        raise TypeError("metrics_plot expected a non-empty mapping method -> {metric: value}")
    methods = list(results)
    if metrics is None:
        metrics = [m for m in results[methods[0]] if not m.endswith("_noise_floor") and m != "n"]
    floors = dict(noise_floor or {})
    for m in metrics:
        if m not in floors:
            found = [r[f"{m}_noise_floor"] for r in results.values() if f"{m}_noise_floor" in r]
            if found:
                floors[m] = float(np.mean(found))
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig = new_figure(max(3.2, 0.6 * len(methods) + 1.6) * cols, 3.0 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, m in zip(axes, metrics, strict=False):
        values = [float(results[k].get(m, np.nan)) for k in methods]
        ax.bar(range(len(methods)), values, color=[f"C{i}" for i in range(len(methods))])
        if m in floors:
            ax.axhline(floors[m], color="k", ls="--", lw=1, label="noise floor")
            ax.legend(fontsize="x-small")
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=30, ha="right", fontsize="small")
        ax.set_title(m)
        if log_scale:
            ax.set_yscale("log")
    for ax in axes[len(metrics):]:
        ax.set_axis_off()
    return save_figure(fig, path)
