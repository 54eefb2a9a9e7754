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

    ``s/step`` leaves out the first step (tracing, parameter set-up), shown as ``first step s``.

    Example:
        >>> res = {"config": {"metrics": ["w2"]}, "noise_floor": {"w2": 0.1},
        ...        "methods": {"m": {"summary": {"failures": 0, "w2": 0.2, "runs": 1}}}}
        >>> print(table(res).splitlines()[2])
        | m | 1 | 0 | – | – | – | 0.2 | – |
    """
    metric_names = list(results["config"]["metrics"])
    head = [
        "method", "runs", "failures", "wall s", "first step s", "s/step", *metric_names,
        "PSIS k-hat",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, entry in results["methods"].items():
        s = entry.get("summary") or {}
        cells = [name, fmt(s.get("runs")), fmt(s.get("failures"))]
        for key in ("wall_time_s", "first_step_s", "seconds_per_step", *metric_names, "khat"):
            cells.append(fmt(s.get(key), s.get(f"{key}_sd")))
        lines.append("| " + " | ".join(cells) + " |")
    floor = results.get("noise_floor", {})
    if floor:
        cells = ["*noise floor*", "", "", "", "", "", *[fmt(floor.get(m)) for m in metric_names]]
        lines.append("| " + " | ".join(cells + [""]) + " |")
    return "\n".join(lines)


def _failure_reason(run: dict) -> str:
    if run.get("failed"):
        return str(run["failed"])
    return f"PSIS k-hat {fmt(run.get('khat'))} > 1"


def verdicts(results: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Judge each method on the first metric of the run: ``method -> (verdict, detail)``.

    Verdicts: ``"failed"`` (every run failed: crashed, non-finite, or PSIS k-hat > 1),
    ``"best"`` (lowest mean among the others), ``"within noise"`` (above the best by no more
    than the noise: the metric's noise floor, or twice the seed-to-seed sd of the difference
    when larger), ``"worse"``. A method with some failed runs says how many in ``detail``.

    Example:
        >>> res = {"config": {"metrics": ["w2"]}, "noise_floor": {"w2": 0.05},
        ...        "methods": {"a": {"runs": [{}], "summary": {"runs": 1, "failures": 0,
        ...                                                     "w2": 0.20}},
        ...                    "b": {"runs": [{}], "summary": {"runs": 1, "failures": 0,
        ...                                                    "w2": 0.23}},
        ...                    "c": {"runs": [{}], "summary": {"runs": 1, "failures": 0,
        ...                                                    "w2": 0.90}}}}
        >>> {m: v for m, (v, _) in verdicts(res).items()}
        {'a': 'best', 'b': 'within noise', 'c': 'worse'}
    """
    metric = list(results["config"]["metrics"])[0]
    floor = abs(float((results.get("noise_floor") or {}).get(metric) or 0.0))
    out: dict[str, tuple[str, str]] = {}
    ranked: dict[str, tuple[float, float]] = {}
    for name, entry in results["methods"].items():
        s = entry.get("summary") or {}
        runs, failures = int(s.get("runs") or 0), int(s.get("failures") or 0)
        value = s.get(metric)
        if runs == 0 or failures >= runs or value is None or not math.isfinite(value):
            bad = [r for r in entry.get("runs", []) if r.get("failed") or r.get("khat_high")]
            why = _failure_reason(bad[0]) if bad else f"no {metric}"
            out[name] = ("failed", f"{failures} of {runs} run(s) failed; {why}")
            continue
        ranked[name] = (float(value), float(s.get(f"{metric}_sd") or 0.0))
    if ranked:
        best = min(ranked, key=lambda m: ranked[m][0])
        b, b_sd = ranked[best]
        for name, (v, sd) in ranked.items():
            noise = max(floor, 2.0 * math.hypot(sd, b_sd))
            failures = int(results["methods"][name]["summary"].get("failures") or 0)
            runs = int(results["methods"][name]["summary"].get("runs") or 0)
            note = f"; {failures} of {runs} runs failed" if failures else ""
            if name == best:
                verdict, detail = "best", f"{metric} {fmt(v)}; noise floor {fmt(floor)}"
            elif v - b <= noise:
                verdict = "within noise"
                detail = f"{metric} {fmt(v)} against {fmt(b)}: difference <= noise {fmt(noise)}"
            else:
                ratio = f", {v / b:.3g}x the best" if b > 0 else ""
                verdict, detail = "worse", f"{metric} {fmt(v)} against {fmt(b)}{ratio}"
            out[name] = (verdict, detail + note)
    return {name: out[name] for name in results["methods"]}


def verdict_lines(results: dict[str, Any]) -> list[str]:
    """One markdown line per method: ``- **method**: verdict (detail)``."""
    return [f"- **{m}**: {v} ({d})" for m, (v, d) in verdicts(results).items()]


def budget_line(results: dict[str, Any]) -> str:
    """The budget every method got, in one sentence."""
    cfg = results["config"]
    names = list(results["methods"])
    svi = [m for m in names if m != "nuts"]
    parts = []
    if svi:
        particles = cfg.get("particles")
        each = f" x {particles} ELBO particles" if particles else ""
        parts.append(
            f"every SVI method ({', '.join(svi)}) trained for {cfg['steps']} Adam steps{each}, "
            "through the same loop (`pyro_kr.fit`)"
        )
    if "nuts" in names:
        parts.append("`nuts`: a fresh PyMC run, 2 chains x (1000 tuning + draws) steps")
    return "Budget: " + "; ".join(parts) + "." if parts else ""


def _load_draws(out: Path, names: list[str]) -> dict[str, dict[str, np.ndarray]]:
    draws = {}
    for name in names:
        path = out / f"draws_{name}.npz"
        if path.exists():
            with np.load(path) as f:
                draws[name] = {k: f[k] for k in f.files}
    return draws


def _failed(results: dict[str, Any]) -> set[str]:
    return {m for m, (v, _) in verdicts(results).items() if v == "failed"}


def metrics_figure(results: dict[str, Any]):
    """Bar chart per metric (:func:`pyro_kr.diagnostics.plots.metrics_plot`), y-scaled to the
    methods that did not fail: a failed method's taller bar is clipped, labelled with its value
    and its tick marked "(failed)". Returns the figure, or ``None`` when there is nothing to plot.
    """
    from pyro_kr.diagnostics import plots

    metric_names = list(results["config"]["metrics"])
    summaries = {
        m: {k: v["summary"][k] for k in metric_names if v["summary"].get(k) is not None}
        for m, v in results["methods"].items()
        if v.get("summary")
    }
    summaries = {m: v for m, v in summaries.items() if v}
    if not summaries:
        return None
    fig = plots.metrics_plot(
        summaries, metrics=metric_names, noise_floor=results.get("noise_floor")
    )
    failed = _failed(results)
    names = list(summaries)
    floor = results.get("noise_floor") or {}
    for ax, metric in zip(fig.axes, metric_names, strict=False):
        values = [summaries[m].get(metric, math.nan) for m in names]
        ok = [v for m, v in zip(names, values, strict=True)
              if m not in failed and math.isfinite(v)]
        if floor.get(metric) is not None:
            ok.append(float(floor[metric]))
        if failed & set(names):
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(
                [f"{m} (failed)" if m in failed else m for m in names],
                rotation=30, ha="right", fontsize="small",
            )
        if not ok:
            continue
        top = max(ok) + 0.25 * (max(ok) - min(0.0, min(ok)) or 1.0)
        bottom = min(0.0, min(ok) * 1.25)
        ax.set_ylim(bottom, top)
        for i, v in enumerate(values):
            if math.isfinite(v) and v > top:
                ax.text(i, top, f"{v:.3g}\u2191", ha="center", va="top", fontsize="x-small")
    return fig


def loss_figure(results: dict[str, Any], *, smooth: int = 10):
    """-ELBO per method (first seed) against the real optimizer step, with a moving average.

    The y range is set by the methods that did not fail (after their first 5 % of steps); a
    failed method is drawn dashed and labelled "(failed)". -ELBO is the same quantity for every
    SVI method (the annealed objective adds a transport term to it). Returns ``None`` when no
    run has a trace.
    """
    from matplotlib.figure import Figure

    failed = _failed(results)
    traces = {}
    for name, entry in results["methods"].items():
        runs = entry.get("runs") or []
        if not runs:
            continue
        run = runs[0]
        y = np.asarray(run.get("neg_elbo") or run.get("loss") or [], dtype=float)
        if not y.size or not np.isfinite(y).any():
            continue
        x = run.get("loss_steps")
        if x is None or len(x) != y.size:  # results.json without step numbers
            x = np.linspace(1, run.get("steps") or y.size, y.size)
        traces[name] = (np.asarray(x, dtype=float), y)
    if not traces:
        return None
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.subplots()
    lows, highs = [], []
    for c, (name, (x, y)) in enumerate(traces.items()):
        bad = name in failed
        w = max(1, min(smooth, y.size // 5 or 1))
        smoothed = np.convolve(y, np.ones(w) / w, mode="valid")
        ax.plot(x, y, color=f"C{c}", alpha=0.25, lw=0.8)
        ax.plot(
            x[w - 1:], smoothed, color=f"C{c}", ls="--" if bad else "-",
            label=f"{name} (failed)" if bad else name,
        )
        tail = smoothed[int(0.05 * smoothed.size):]
        tail = tail[np.isfinite(tail)]
        if tail.size and (not bad or len(failed) == len(traces)):
            lows.append(tail.min())
            highs.append(tail.max())
    if lows:
        lo, hi = min(lows), max(highs)
        pad = 0.1 * ((hi - lo) or abs(hi) or 1.0)
        ax.set_ylim(lo - pad, hi + pad)
        for line in ax.get_lines():  # a failed trace above the range: say where it ended
            y = np.asarray(line.get_ydata(), dtype=float)
            label = line.get_label()
            if label.endswith("(failed)") and y.size and np.nanmin(y) > hi + pad:
                line.set_label(f"{label[:-1]}; off scale, ends at {y[-1]:.4g})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("-ELBO (training estimate)")
    ax.legend(fontsize="small")
    return fig


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
        if fig is None:
            return
        with atomic_path(out / filename, suffix=".tmp.png") as tmp:
            fig.savefig(tmp, dpi=90)
        made.append((title, filename))

    methods = list(results["methods"])
    draws = _load_draws(out, methods)
    if reference is not None:
        for name, d in draws.items():
            fig = plots.pair_plot(d, reference, label=name, reference_label="reference")
            save(fig, f"pair_{name}.png", f"{name} vs reference")
    save(metrics_figure(results), "metrics.png",
         "metrics by method (dashed: noise floor; failed methods clipped)")
    save(loss_figure(results), "loss.png", "training -ELBO by optimizer step (first seed)")
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
    metric = list(cfg["metrics"])[0]
    lines = [
        f"# pyro-kr bench: {results['problem']}",
        "",
        f"Verdict on {metric} (best; within noise of the best; worse; failed):",
        "",
        *verdict_lines(results),
        "",
        budget_line(results),
        "",
        f"Status: **{results.get('status', '?')}**. Observation {cfg.get('observation', 0)}; "
        f"{cfg['seeds']} seed(s); {cfg['num_draws']} posterior "
        f"draws per run; metrics on n = {cfg.get('metric_n_used')} draws against a reference of "
        f"{results['reference']['num_draws']} draws ({results['reference']['source']}). "
        "Timing: `wall s` is the whole training, `first step s` its first step (tracing and "
        "set-up), `s/step` the mean of the other steps.",
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
