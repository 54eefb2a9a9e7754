"""The ``pyro-kr`` command: list problems and methods, build references, run the benchmark.

Usage::

    pyro-kr --version
    pyro-kr list
    pyro-kr reference PROBLEM [--observation I] [--draws N] [--chains C] [--method nuts]
    pyro-kr bench PROBLEM [--methods a,b] [--steps N] [--particles P] [--seeds K] [--out DIR]

Exit codes: 0 success, 1 a run failed (e.g. a reference refused for poor convergence),
2 bad input (unknown problem, method or observation index, unwritable ``--out``), 130
interrupted (Ctrl-C; finished results stay written).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

PARTICLES = 8
"""Default ``--particles`` (``pyro_kr.bench.methods.PARTICLES``; kept here so that ``--help``
does not import torch)."""


class _UsageError(Exception):
    """Bad command-line input: printed on stderr, exit code 2."""


def _problem(name: str):
    from pyro_kr.bench import problems

    if name not in problems.names():
        raise _UsageError(f"unknown problem {name!r}; valid names: {', '.join(problems.names())}")
    return problems.get(name)


def _observation(problem, index: int) -> None:
    """Refuse an observation index the problem does not have (exit code 2, one message)."""
    try:
        problem.observation(index)
    except (TypeError, ValueError) as exc:
        raise _UsageError(f"--observation: {exc}") from None


def _methods(text: str | None) -> list[str]:
    from pyro_kr.bench import methods

    if text is None:
        return methods.default_names()
    if text.strip() == "all":
        return methods.names()
    chosen = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in methods.names()]
    if unknown or not chosen:
        raise _UsageError(
            f"unknown method(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"valid names: {', '.join(methods.names())}"
        )
    return chosen


def _metrics(text: str | None) -> tuple[str, ...]:
    from pyro_kr import metrics
    from pyro_kr.bench.runner import BENCH_METRICS

    if text is None:
        return BENCH_METRICS
    chosen = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in chosen if m not in metrics.METRICS]
    if unknown or not chosen:
        raise _UsageError(
            f"unknown metric(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"valid names: {', '.join(metrics.METRICS)}"
        )
    return chosen


def _cmd_list(args: argparse.Namespace) -> int:
    from pyro_kr.bench import methods, problems

    print("problems:")
    for name in problems.names():
        print(f"  {name}")
    default = set(methods.default_names())
    print("methods (* = run by default):")
    for name in methods.names():
        print(f"  {name}{' *' if name in default else ''}")
    return EXIT_OK


def _cmd_reference(args: argparse.Namespace) -> int:
    from pyro_kr.bench import reference

    problem = _problem(args.problem)
    if not getattr(problem, "has_likelihood", True):
        print(
            f"{problem.name} is a joint-sample task: its reference is its generator "
            "(problem.reference(i)); there is no MCMC reference to build"
        )
        return EXIT_OK
    _observation(problem, args.observation)
    cache = reference.default_cache_dir() if args.cache_dir is None else args.cache_dir
    print(f"reference for {problem.name}, observation {args.observation} (cache: {cache})")
    from pyro_kr.bench.methods import reference_options

    options = reference_options(problem.name)  # target_accept / compile_mode per problem
    if args.target_accept is not None:
        options["target_accept"] = args.target_accept
    if args.method != "nuts":
        options.pop("target_accept", None)
    try:
        idata = reference.nuts(
            problem,
            args.observation,
            draws=args.draws,
            chains=args.chains,
            tune=args.tune,
            seed=args.seed,
            method=args.method,
            cores=args.cores,
            cache_dir=args.cache_dir,
            progressbar=not args.no_progress,
            **options,
        )
    except reference.ReferenceQualityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    s = reference.summary(idata)
    rows = [
        ("sampler", f"{s.get('setting_sampler')} / {s.get('setting_method')}"),
        ("chains x draws", f"{s['chains']} x {s['draws']} (tune {s.get('setting_tune')})"),
        ("seed", s.get("setting_seed")),
        ("max R-hat", f"{s.get('max_rhat', float('nan')):.4f}"),
        ("min bulk ESS", f"{s.get('min_ess_bulk', float('nan')):.0f}"),
        ("wall time", f"{s.get('wall_time_s', float('nan')):.1f} s"),
        ("ESS / s", f"{s.get('ess_per_s', float('nan')):.2f}"),
        ("created", s.get("created_utc")),
        ("cache key", s.get("pyro_kr_key")),
    ]
    for key, value in rows:
        print(f"  {key:<15} {value}")
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    from pyro_kr.bench import report, runner

    problem = _problem(args.problem)
    if not getattr(problem, "has_likelihood", True):
        raise _UsageError(
            f"{problem.name} is a joint-sample task without a likelihood; the bench methods "
            "need a model density (flow matching has its own benchmark, "
            "benchmarks/cot_flow_matching.py)"
        )
    _observation(problem, args.observation)
    method_names = _methods(args.methods)
    metric_names = _metrics(args.metrics)
    out = Path(args.out if args.out is not None else Path("pyro_kr_bench") / problem.name)
    try:
        runner.check_writable(out)
    except PermissionError as exc:
        raise _UsageError(str(exc)) from exc
    config = runner.BenchConfig(
        steps=args.steps if args.steps is not None else runner.default_steps(problem.name),
        particles=args.particles,
        seeds=args.seeds,
        num_draws=args.num_draws,
        metric_n=args.metric_n,
        observation=args.observation,
        metrics=metric_names,
        psis=not args.no_psis,
        psis_draws=args.psis_draws,
    )
    print(
        f"bench {problem.name}: methods {', '.join(method_names)}; every SVI method "
        f"{config.steps} steps x {config.particles} particles; {config.seeds} seed(s); "
        f"output {out}"
    )

    def announce(name: str, record: dict) -> None:
        if record.get("failed"):
            print(f"  {name} seed {record['seed']}: FAILED ({record['failed']})")
            return
        shown = ", ".join(f"{m} {report.fmt(record.get(m))}" for m in metric_names[:3])
        print(
            f"  {name} seed {record['seed']}: {record['wall_time_s']:.1f} s, {shown}, "
            f"k-hat {report.fmt(record.get('khat'))}"
        )

    ref = None
    try:
        loaded = runner.load_reference(problem, config.observation)
        ref = loaded[0]
        results = runner.run(
            problem,
            method_names,
            out,
            config=config,
            reference=loaded,
            progress=not args.no_progress,
            on_result=announce,
        )
    except reference_errors() as exc:
        print(f"pyro-kr: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        _report_after_interrupt(out, ref, not args.no_plots)
        print(f"interrupted; finished results kept in {out / 'results.json'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    path = report.write_report(results, out, reference=ref, plots=not args.no_plots)
    print()
    print("\n".join(report.verdict_lines(results)))
    print(report.budget_line(results))
    print()
    print(report.table(results))
    print(f"\nwrote {out / 'results.json'} and {path}")
    return EXIT_OK


def reference_errors() -> tuple[type[Exception], ...]:
    """Errors that mean "no usable reference": reported, exit code 1."""
    from pyro_kr.bench.reference import ReferenceQualityError

    return (ReferenceQualityError, LookupError)


def _report_after_interrupt(out: Path, ref, plots: bool) -> None:
    import json

    from pyro_kr.bench import report

    path = out / "results.json"
    if not path.exists():
        return
    try:
        results = json.loads(path.read_text())
        if results.get("methods"):
            report.write_report(results, out, reference=ref, plots=plots)
    except (KeyboardInterrupt, Exception):  # noqa: BLE001 - the JSON is what must survive
        pass


def _version() -> str:
    """The installed package's version (read from its metadata: no torch import)."""
    from importlib import metadata

    try:
        return metadata.version("pyro_kr")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        from pyro_kr import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    """Return the ``pyro-kr`` argument parser.

    Example:
        >>> build_parser().parse_args(["bench", "banana", "--steps", "10"]).steps
        10
    """
    parser = argparse.ArgumentParser(
        prog="pyro-kr",
        description="Knothe-Rosenblatt posteriors for Pyro: benchmarks and MCMC references.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list problems and methods")

    ref = sub.add_parser("reference", help="build (or show the cached) MCMC reference")
    ref.add_argument("problem")
    ref.add_argument("--observation", type=int, default=0)
    ref.add_argument("--draws", type=int, default=2000, help="draws per chain")
    ref.add_argument("--chains", type=int, default=4)
    ref.add_argument("--tune", type=int, default=1000)
    ref.add_argument("--seed", type=int, default=0)
    ref.add_argument("--method", choices=("nuts", "demetropolisz"), default="nuts")
    ref.add_argument(
        "--target-accept",
        type=float,
        default=None,
        help="NUTS target (default per problem, else 0.8)",
    )
    ref.add_argument("--cores", type=int, default=1)
    ref.add_argument("--cache-dir", default=None, help="default: $PYRO_KR_CACHE or ~/.cache")
    ref.add_argument("--no-progress", action="store_true")

    bench = sub.add_parser("bench", help="run methods on a problem and write a report")
    bench.add_argument("problem")
    bench.add_argument(
        "--methods", default=None, help="comma-separated names or 'all' (default: see list)"
    )
    bench.add_argument(
        "--steps", type=int, default=None, help="optimizer steps per method (default: per problem)"
    )
    bench.add_argument(
        "--particles",
        type=int,
        default=PARTICLES,
        help=f"ELBO particles per step, the same for every SVI method (default {PARTICLES})",
    )
    bench.add_argument("--seeds", type=int, default=1)
    bench.add_argument("--out", default=None, help="output dir (default pyro_kr_bench/PROBLEM)")
    bench.add_argument("--num-draws", type=int, default=5000, help="posterior draws per run")
    bench.add_argument("--metric-n", type=int, default=2000, help="draws compared per metric")
    bench.add_argument("--metrics", default=None, help="comma-separated metric names")
    bench.add_argument("--observation", type=int, default=0)
    bench.add_argument("--no-progress", action="store_true")
    bench.add_argument("--no-plots", action="store_true")
    bench.add_argument("--psis-draws", type=int, default=4000, help="guide draws for k-hat")
    bench.add_argument("--no-psis", action="store_true", help="skip PSIS k-hat")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pyro-kr`` command; return its exit code.

    Example:
        >>> main(["list"])  # doctest: +SKIP
        0
    """
    args = build_parser().parse_args(argv)
    positive = (
        "steps",
        "particles",
        "seeds",
        "num_draws",
        "metric_n",
        "psis_draws",
        "draws",
        "chains",
        "cores",
    )
    for key in positive:
        value = getattr(args, key, None)
        if value is not None and value < 1:
            flag = f"--{key.replace('_', '-')}"
            print(f"pyro-kr: error: {flag} must be >= 1, got {value}", file=sys.stderr)
            return EXIT_USAGE
    commands = {"list": _cmd_list, "reference": _cmd_reference, "bench": _cmd_bench}
    try:
        return commands[args.command](args)
    except _UsageError as exc:
        print(f"pyro-kr: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
