"""Throughput of the triangular maps against Pyro's autoregressive flows (issue 2, section 4).

Samples per second for forward + log-determinant and for the inverse, float32 on CPU, for
``MonotoneTriangular``, ``monotone_triangular_stack`` (depth 2 + affine) and ``TriangularAffine``
against Pyro's ``spline_autoregressive`` and ``affine_autoregressive`` with hidden widths
chosen so that their parameter counts match ``MonotoneTriangular``'s. Every map is
"trained-like": all parameters perturbed as in the tests (noise ``sd / sqrt(fan_in)``), since
the inverse's sweep count depends on the map; the identity-initialized monotone map is timed
too. Each number is the best of ``--repeats`` runs (``2 * repeats`` for the cheaper forward),
all families of one dimension timed round-robin (the machine is shared and its load drifts:
best-of over interleaved runs is the least noisy summary). Writes JSON and prints a table.

Usage::

    python benchmarks/transforms.py                    # d in {2, 10, 50}, batch 10,000
    python benchmarks/transforms.py --smoke            # tiny, seconds
    python benchmarks/transforms.py --threads 2 --dims 10 50 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path

import pyro.distributions.transforms as pyro_transforms
import torch
from torch import nn

from pyro_kr.transforms import MonotoneTriangular, TriangularAffine, monotone_triangular_stack

NOISE_SD = 0.3
SPLINE_BINS = 8


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def randomize_(module: nn.Module, *, sd: float = NOISE_SD, seed: int = 0) -> nn.Module:
    """Perturb every parameter (noise ``sd / sqrt(fan_in)`` for matrices), as in the tests."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            scale = sd / math.sqrt(p.shape[-1]) if p.dim() > 1 else sd
            p.add_(scale * torch.randn(p.shape, generator=gen).to(p))
    return module


def _two_layer_count(d: int, width: int, outputs_per_dim: int) -> int:
    """Parameters of a MADE ``d -> width -> width -> outputs_per_dim * d`` (full matrices)."""
    outputs = outputs_per_dim * d
    return d * width + width + width * width + width + width * outputs + outputs


def matched_width(d: int, target: int, outputs_per_dim: int) -> int:
    """Hidden width of a two-layer MADE whose parameter count is closest to ``target``."""
    return min(range(1, 4096), key=lambda w: abs(_two_layer_count(d, w, outputs_per_dim) - target))


def families(d: int) -> dict[str, Callable[[], nn.Module]]:
    reference = num_params(MonotoneTriangular(d))
    spline_width = matched_width(d, reference, 4 * SPLINE_BINS - 1)
    affine_width = matched_width(d, reference, 2)
    return {
        "monotone (identity init)": lambda: MonotoneTriangular(d),
        "monotone": lambda: randomize_(MonotoneTriangular(d)),
        "stack (2 + affine)": lambda: randomize_(monotone_triangular_stack(d, depth=2)),
        "triangular affine": lambda: randomize_(TriangularAffine(d)),
        "pyro spline_autoregressive": lambda: randomize_(
            pyro_transforms.spline_autoregressive(d, [spline_width] * 2, count_bins=SPLINE_BINS)
        ),
        "pyro affine_autoregressive": lambda: randomize_(
            pyro_transforms.affine_autoregressive(d, [affine_width] * 2)
        ),
    }


def inverse_stats(t: nn.Module) -> dict[str, float] | None:
    """Sweeps used by the last inverse of every monotone layer in ``t``."""
    layers = [m for m in t.modules() if isinstance(m, MonotoneTriangular)]
    if not layers or any(m.last_inverse_stats is None for m in layers):
        return None
    return {
        "max_sweeps": max(m.last_inverse_stats.sweeps for m in layers),
        "mean_sweeps_per_sample": sum(m.last_inverse_stats.rows_swept for m in layers)
        / len(layers),
        "inner_iterations": sum(m.last_inverse_stats.inner_iterations for m in layers),
    }


class _Timed:
    """One family at one dimension: its timers and its best times so far."""

    def __init__(self, name: str, t: nn.Module, x: torch.Tensor) -> None:
        self.name, self.t, self.x = name, t, x
        self.fwd = self.inv = math.inf
        with torch.no_grad():
            self.forward()  # warm-up
            self.y = t(x.clone())
            x_back = t.inv(self.y.clone())
        self.stats = inverse_stats(t)
        if self.stats is not None:
            self.stats["mean_sweeps_per_sample"] /= x.shape[0]
        self.err = float(((x_back - x).abs().amax(-1) / x.abs().amax(-1).clamp(min=1)).max())

    @torch.no_grad()
    def forward(self) -> None:
        xc = self.x.clone()  # a fresh tensor: the transform's cache must not answer
        start = time.perf_counter()
        self.t.log_abs_det_jacobian(xc, self.t(xc))
        self.fwd = min(self.fwd, time.perf_counter() - start)

    @torch.no_grad()
    def inverse(self) -> None:
        yc = self.y.clone()
        start = time.perf_counter()
        self.t.inv(yc)
        self.inv = min(self.inv, time.perf_counter() - start)

    def row(self) -> dict:
        batch, d = self.x.shape
        return {
            "family": self.name,
            "dim": d,
            "params": num_params(self.t),
            "forward_logdet_samples_per_s": batch / self.fwd,
            "inverse_samples_per_s": batch / self.inv,
            "inverse_over_forward_time": self.inv / self.fwd,
            "round_trip_max_rel_error": self.err,
            "inverse_sweeps": self.stats,
        }


def measure(d: int, batch: int, repeats: int) -> list[dict]:
    """Best-of-``repeats`` timings of every family at dimension ``d``.

    The families are timed round-robin (forward twice, inverse once per round), so that the
    load of a shared machine, which drifts over minutes, hits all of them alike.
    """
    x = torch.randn(batch, d, generator=torch.Generator().manual_seed(1))
    timed = []
    for name, factory in families(d).items():
        torch.manual_seed(0)
        timed.append(_Timed(name, factory(), x))
    for _ in range(repeats):
        for item in timed:
            item.forward()
            item.forward()
            item.inverse()
    return [item.row() for item in timed]


def print_table(rows: list[dict], threads: int) -> None:
    header = (
        f"{'d':>3}  {'family':<28}{'params':>9}  {'fwd+logdet/s':>13}  {'inverse/s':>11}"
        f"  {'inv/fwd':>8}  {'sweeps max/mean':>15}  {'rt err':>8}"
    )
    print(f"float32, CPU, {threads} thread(s); best of repeats")
    print(header)
    print("-" * len(header))
    for r in rows:
        sweeps = r["inverse_sweeps"]
        sw = f"{sweeps['max_sweeps']}/{sweeps['mean_sweeps_per_sample']:.2f}" if sweeps else "-"
        print(
            f"{r['dim']:>3}  {r['family']:<28}{r['params']:>9}"
            f"  {r['forward_logdet_samples_per_s']:>13.3g}  {r['inverse_samples_per_s']:>11.3g}"
            f"  {r['inverse_over_forward_time']:>8.2f}  {sw:>15}"
            f"  {r['round_trip_max_rel_error']:>8.1e}"
        )


def markdown_table(rows: list[dict]) -> str:
    """The table of ``docs/maps.md``: samples/s in thousands."""
    lines = [
        "| d | family | params | fwd + log-det (k/s) | inverse (k/s) | inverse / fwd time "
        "| sweeps (max / mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sweeps = r["inverse_sweeps"]
        sw = f"{sweeps['max_sweeps']} / {sweeps['mean_sweeps_per_sample']:.2f}" if sweeps else "-"
        lines.append(
            f"| {r['dim']} | {r['family']} | {r['params']:,} "
            f"| {r['forward_logdet_samples_per_s'] / 1e3:,.1f} "
            f"| {r['inverse_samples_per_s'] / 1e3:,.1f} "
            f"| {r['inverse_over_forward_time']:.1f} | {sw} |"
        )
    return "\n".join(lines)


def targets(rows: list[dict]) -> list[dict]:
    """The issue's targets: monotone fwd within 2x of the spline flow; inverse within 10x."""
    out = []
    for d in sorted({r["dim"] for r in rows}):
        by = {r["family"]: r for r in rows if r["dim"] == d}
        mono, spline = by.get("monotone"), by.get("pyro spline_autoregressive")
        if mono is None:
            continue
        entry = {"dim": d, "inverse_over_forward": mono["inverse_over_forward_time"]}
        entry["inverse_within_10x"] = entry["inverse_over_forward"] <= 10.0
        if spline is not None:
            ratio = spline["forward_logdet_samples_per_s"] / mono["forward_logdet_samples_per_s"]
            entry["spline_fwd_over_monotone_fwd"] = ratio
            entry["forward_within_2x_of_spline"] = ratio <= 2.0
        out.append(entry)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 10, 50])
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/transforms.json"))
    parser.add_argument("--smoke", action="store_true", help="d in {2, 5}, batch 256, 1 repeat")
    parser.add_argument(
        "--markdown", action="store_true", help="print the table of an existing --out and exit"
    )
    args = parser.parse_args(argv)
    if args.markdown:
        result = json.loads(args.out.read_text())
        print(markdown_table(result["results"]))
        return
    if args.smoke:
        args.dims, args.batch, args.repeats = [2, 5], 256, 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for d in args.dims:
        rows.extend(measure(d, args.batch, args.repeats))
        print(f"  done d={d}", flush=True)
    print_table(rows, args.threads)
    checks = targets(rows)
    for c in checks:
        print(
            f"d={c['dim']}: monotone inverse/forward time {c['inverse_over_forward']:.2f}"
            f" (target <= 10), spline fwd speed / monotone fwd speed"
            f" {c.get('spline_fwd_over_monotone_fwd', float('nan')):.2f} (target <= 2)"
        )
    result = {
        "config": {
            "batch": args.batch,
            "repeats": args.repeats,
            "threads": args.threads,
            "dtype": "float32",
            "device": "cpu",
            "noise_sd": NOISE_SD,
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "smoke": args.smoke,
            "pyro_hidden_widths": {
                str(d): {
                    "spline": matched_width(
                        d, num_params(MonotoneTriangular(d)), 4 * SPLINE_BINS - 1
                    ),
                    "affine": matched_width(d, num_params(MonotoneTriangular(d)), 2),
                }
                for d in args.dims
            },
        },
        "results": rows,
        "targets": checks,
    }
    if not args.smoke:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
