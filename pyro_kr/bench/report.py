"""Write ``report.md`` (results table with noise floors, plots embedded) from ``results.json``.

Plots come from :mod:`pyro_kr.diagnostics.plots` (pair plot of each method against the
reference, a metrics bar chart, loss traces); they are PNGs next to the report. When matplotlib
or the plotting module is unavailable the report says so and keeps the table.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from pyro_kr._atomic import atomic_path


def fmt(value: Any, sd: Any = None) -> str:
    """Format a number with 4 significant digits (and ``± sd`` when given).

    Example:
        >>> fmt(0.0123456), fmt(2.0, 0.5), fmt(None)
        ('0.01235', '2 ± 0.5', '–')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    text = f"{value:.4g}"
    if sd is not None and not (isinstance(sd, float) and math.isnan(sd)):
        text += f" ± {sd:.2g}"
    return text


def table(results: dict[str, Any]) -> str:
    """Return the markdown table: one row per method plus the noise-floor row.

    Example:
        >>> res = {"config": {"metrics": ["w2"]}, "noise_floor": {"w2": 0.1},
        ...        "methods": {"m": {"summary": {"failures": 0, "w2": 0.2, "runs": 1}}}}
        >>> print(table(res).splitlines()[2])
        | m | 1 | 0 | – | – | 0.2 | – |
    """
    metric_names = list(results["config"]["metrics"])
    head = ["method", "runs", "failures", "wall s", "s/step", *metric_names, "PSIS k-hat"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, entry in results["methods"].items():
        s = entry.get("summary") or {}
        cells = [name, fmt(s.get("runs")), fmt(s.get("failures"))]
        for key in ("wall_time_s", "seconds_per_step", *metric_names, "khat"):
            cells.append(fmt(s.get(key), s.get(f"{key}_sd")))
        lines.append("| " + " | ".join(cells) + " |")
    floor = results.get("noise_floor", {})
    if floor:
        cells = ["*noise floor*", "", "", "", "", *[fmt(floor.get(m)) for m in metric_names], ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _load_draws(out: Path, names: list[str]) -> dict[str, dict[str, np.ndarray]]:
    draws = {}
    for name in names:
        path = out / f"draws_{name}.npz"
        if path.exists():
            with np.load(path) as f:
                draws[name] = {k: f[k] for k in f.files}
    return draws


def _plots(results, out: Path, reference: dict[str, np.ndarray] | None) -> list[tuple[str, str]]:
    """Make the PNGs; return ``[(title, filename)]``. Missing plotting support gives []."""
    try:
        import matplotlib  # noqa: F401 - plotting needs it

        from pyro_kr.diagnostics import plots
    except ImportError as exc:
        warnings.warn(f"report without plots: {exc}", RuntimeWarning, stacklevel=2)
        return []
    made: list[tuple[str, str]] = []

    def save(fig, filename: str, title: str) -> None:
        with atomic_path(out / filename, suffix=".tmp.png") as tmp:
            fig.savefig(tmp, dpi=90)
        made.append((title, filename))

    methods = list(results["methods"])
    draws = _load_draws(out, methods)
    if reference is not None:
        for name, d in draws.items():
            fig = plots.pair_plot(d, reference, label=name, reference_label="reference")
            save(fig, f"pair_{name}.png", f"{name} vs reference")
    metric_names = list(results["config"]["metrics"])
    summaries = {
        m: {k: v["summary"][k] for k in metric_names if v["summary"].get(k) is not None}
        for m, v in results["methods"].items()
        if v.get("summary")
    }
    summaries = {m: v for m, v in summaries.items() if v}
    if summaries:
        fig = plots.metrics_plot(
            summaries, metrics=metric_names, noise_floor=results.get("noise_floor")
        )
        save(fig, "metrics.png", "metrics by method (dashed: noise floor)")
    losses = {
        m: v["runs"][0]["loss"]
        for m, v in results["methods"].items()
        if v["runs"] and v["runs"][0].get("loss")
    }
    if losses:
        save(plots.loss_plot(losses), "loss.png", "training loss (first seed)")
    return made


def write_report(
    results: dict[str, Any],
    out: str | os.PathLike,
    *,
    reference: dict[str, np.ndarray] | None = None,
    plots: bool = True,
) -> Path:
    """Write ``out/report.md`` (atomically) and its PNGs; return the report's path.

    Args:
        results: the dict :func:`pyro_kr.bench.runner.run` returns (or ``results.json``).
        out: the run's output directory (holds ``draws_<method>.npz``).
        reference: reference draws for the pair plots.
        plots: make and embed the PNGs.

    Example:
        >>> import json, tempfile  # doctest: +SKIP
        >>> d = tempfile.mkdtemp()  # doctest: +SKIP
        >>> write_report(json.load(open("results.json")), d, plots=False)  # doctest: +SKIP
    """
    out = Path(out)
    cfg = results["config"]
    lines = [
        f"# pyro-kr bench: {results['problem']}",
        "",
        f"Status: **{results.get('status', '?')}**. Observation {cfg.get('observation', 0)}; "
        f"{cfg['steps']} steps per method; {cfg['seeds']} seed(s); {cfg['num_draws']} posterior "
        f"draws per run; metrics on n = {cfg.get('metric_n_used')} draws against a reference of "
        f"{results['reference']['num_draws']} draws ({results['reference']['source']}).",
        "",
        "Metrics: W2 (exact, raw and standardized coordinates), MMD² (RBF, median heuristic), "
        "max |mean error| and max |sd error| in reference-sd units. The *noise floor* row is "
        "the same metric between two independent halves of the reference of the same size: a "
        "value at the floor cannot be told apart from exact. Failures: crashed or non-finite "
        "runs plus runs with PSIS k-hat > 1 (k-hat < 0.7: importance weights usable).",
        "",
        table(results),
        "",
    ]
    failed = [
        (m, r["seed"], r["failed"])
        for m, v in results["methods"].items()
        for r in v["runs"]
        if r.get("failed")
    ]
    if failed:
        lines += ["Failed runs:", ""] + [f"- {m} (seed {s}): {why}" for m, s, why in failed]
        lines.append("")
    if plots:
        for title, filename in _plots(results, out, reference):
            lines += [f"## {title}", "", f"![{title}]({filename})", ""]
    path = out / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))
    return path
