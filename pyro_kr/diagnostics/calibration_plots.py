"""Figures for :mod:`pyro_kr.diagnostics.calibration`: rank histograms, ECDF differences, coverage.

Matplotlib is imported inside each function (through the helpers of
:mod:`pyro_kr.diagnostics.plots`); every function returns the ``Figure`` and saves it to
``path`` when given.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pyro_kr.diagnostics.calibration import CoverageResult, SBCResult
from pyro_kr.diagnostics.plots import new_figure, save_figure

__all__ = ["coverage_plot", "sbc_plot"]


def _grid(d: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(d, max_cols)
    return math.ceil(d / cols), cols


def sbc_plot(
    result: SBCResult,
    *,
    kind: str = "ecdf",
    band: float = 0.99,
    path: str | Path | None = None,
):
    """Plot SBC ranks: ``kind="hist"`` rank histograms or ``kind="ecdf"`` ECDF differences.

    The histogram shows the uniform expectation with a pointwise ``band`` binomial range; the
    ECDF difference ``F_hat(r) - r`` should stay inside its (pointwise) ``band`` envelope. A
    U shape (histogram) or a negative-then-positive S (ECDF) means an overconfident posterior,
    an inverted U a too wide one, a slope a biased one.

    Example:
        >>> import numpy as np
        >>> from pyro_kr.diagnostics.calibration import SBCResult
        >>> r = SBCResult(np.random.default_rng(0).integers(0, 11, (100, 2)), ["a", "b"], 10,
        ...               np.zeros(2), np.ones(2), 5, 0.01)
        >>> len(sbc_plot(r).axes)
        2
    """
    if kind not in ("ecdf", "hist"):
        raise ValueError(f"kind must be 'ecdf' or 'hist', got {kind!r}")
    from scipy import stats

    n, d = result.ranks.shape
    rows, cols = _grid(d)
    fig = new_figure(3.0 * cols, 2.4 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    z = stats.norm.ppf(0.5 + band / 2)
    for j, ax in enumerate(axes):
        if j >= d:
            ax.set_visible(False)
            continue
        ranks = result.ranks[:, j]
        title = f"{result.names[j]}  p={result.p_values[j]:.3g}"
        if kind == "hist":
            edges = np.floor(np.arange(result.num_draws + 1) * result.bins
                             / (result.num_draws + 1)).astype(int)
            counts = np.bincount(edges[ranks], minlength=result.bins)
            expected = np.bincount(edges, minlength=result.bins) * n / (result.num_draws + 1)
            p = expected / n
            lo, hi = stats.binom.ppf((1 - band) / 2, n, p), stats.binom.ppf((1 + band) / 2, n, p)
            x = np.arange(result.bins)
            ax.fill_between(x, lo, hi, step="mid", color="0.85", label=f"{band:.0%} band")
            ax.bar(x, counts, width=0.9, color="C0")
            ax.set_xlabel("rank bin")
        else:
            grid = np.linspace(0, 1, 201)
            frac = ranks / result.num_draws
            ecdf = (frac[None, :] <= grid[:, None]).mean(1)
            half = z * np.sqrt(grid * (1 - grid) / n)
            ax.fill_between(grid, -half, half, color="0.85", label=f"{band:.0%} band")
            ax.plot(grid, ecdf - grid, color="C0")
            ax.axhline(0.0, color="0.4", lw=0.8)
            ax.set_xlabel("normalized rank")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    return save_figure(fig, path)


def coverage_plot(result: CoverageResult, *, path: str | Path | None = None):
    """Plot empirical against nominal coverage: marginal intervals and the joint HPD region.

    Points below the diagonal mean overconfident credible regions, above it underconfident.

    Example:
        >>> import numpy as np
        >>> from pyro_kr.diagnostics.calibration import CoverageResult
        >>> lv = np.linspace(0.05, 0.95, 19)
        >>> r = CoverageResult(lv, np.stack([lv, lv], 1), lv, ["a", "b"], 100)
        >>> len(coverage_plot(r).axes)
        1
    """
    fig = new_figure(4.2, 4.0)
    ax = fig.subplots()
    lv = result.levels
    half = 2 * np.sqrt(lv * (1 - lv) / result.num_datasets)
    ax.fill_between(lv, lv - half, lv + half, color="0.88", label="±2 s.e.")
    ax.plot([0, 1], [0, 1], color="0.4", lw=0.8)
    for j, name in enumerate(result.names):
        ax.plot(lv, result.marginal[:, j], lw=1.0, alpha=0.8, label=f"{name} (central)")
    ax.plot(lv, result.joint, color="k", lw=2.0, label="joint (HPD)")
    ax.set_xlabel("nominal level")
    ax.set_ylabel("empirical coverage")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=1 + len(result.names) // 8)
    return save_figure(fig, path)
