"""The issue-18 suite table: the default AutoKR against every stock Pyro guide, per problem,
several seeds, the same budget for every guide.

Every SVI run goes through the bench registry (:mod:`pyro_kr.bench.methods`, the code
``pyro-kr bench`` runs): ``steps`` steps (the problem's bench default,
:func:`pyro_kr.bench.runner.default_steps`, unless ``--steps``) of 8 vectorized ELBO particles,
Adam lr 1e-2, float64, through :func:`pyro_kr.fit` with its default end-of-fit check. Guides:
``autokr_monotone`` (the default ``AutoKR(model)``, whose KR order is ``order="auto"``,
``TransportELBO(Annealing.over(steps))``,
which tempers the likelihood on the ramp, and ``fit``'s default lr decay after the ramp),
``auto_normal``, ``auto_mvn``, ``auto_lowrank``, ``auto_iaf``, ``auto_spline`` (Pyro's spline
autoregressive flow), plus the variants this script defines (``--methods``; see
:data:`VARIANTS`). Scored by W2 on standardized coordinates against the problem's reference
(n = 2000, the guide's draws and the reference subsampled with the run's seed) with its noise
floor (W2 between two reference halves of the same size). A run counts as failed when it
raised (NaN loss, Laplace failure) or drew non-finite values; ``fit``'s warnings
(``FitWarning``: stalled / collapsed / diverged / worse than the Laplace Gaussian) are
recorded. CPU seconds (``time.process_time``) per run are recorded too.

Results are appended to ``--out`` after every run (a rerun skips the runs already there), and
``--table`` prints the readable table of a results file.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/suite.py --problems banana \\
        --methods autokr_monotone auto_mvn --seeds 0 1 2 3 4
    python benchmarks/suite.py --table
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyro
import torch

torch.set_num_threads(1)

import pyro_kr  # noqa: E402
from pyro_kr import metrics  # noqa: E402
from pyro_kr.bench import methods, problems, runner  # noqa: E402
from pyro_kr.bench.problems.symmetric_modes import mode_shares  # noqa: E402
from pyro_kr.objective.schedules import GeometricSchedule  # noqa: E402

RESULTS = Path(__file__).parent / "results"
STOCK = ("auto_normal", "auto_mvn", "auto_lowrank", "auto_iaf", "auto_spline")
DEFAULT_METHODS = ("autokr_monotone",) + STOCK
SUITE = ("linear_gaussian", "banana", "funnel", "eight_schools", "lotka_volterra",
         "elliptic_1d", "darcy_2d", "symmetric_modes")
NEAR_GAUSSIAN = ("linear_gaussian", "elliptic_1d", "darcy_2d", "lotka_volterra")


def _decay_after_ramp(steps: int, ramp: int, final: float = 0.01):
    """Adam lr 1e-2 held until the annealing ramp ends, then decayed geometrically to
    ``final`` times its start by the last step; returns ``(optimizer, fit callback)``."""
    rate = final ** (1 / max(steps - ramp, 1))
    optim = pyro.optim.LambdaLR({
        "optimizer": torch.optim.Adam, "optim_args": {"lr": methods.LR},
        "lr_lambda": lambda k: 1.0 if k < ramp else rate ** (k - ramp),
    })
    return optim, lambda step, record: optim.step()


def result(problem, guide, history, *, y, steps, num_draws):
    """Draws from the fitted ``guide`` and the fit's timings, as a ``MethodResult``."""
    draws = methods.sample_guide(guide, problem.param_names, num_draws,
                                 problem.param_shapes, y=y)
    return methods.MethodResult(draws=draws, wall_time_s=history.seconds,
                                seconds_per_step=history.seconds / steps,
                                loss=list(history.loss), guide=guide)


def _autokr_variant(beta=1.0, decay: bool = False, init_scale=0.1):
    """``AutoKR(model, order="model", init_scale=0.1)`` (the order these variants were measured
    with, before ``order="auto"`` became the default; the start spelled out) with
    ``Annealing.over(steps, beta=beta)`` and, with ``decay``, the lr decay after the annealing
    ramp written out here (a ``LambdaLR`` stepped by the callback,
    independent of ``fit(lr_decay=...)``); without it a constant lr (bench settings
    otherwise)."""

    def fit(problem, y, *, steps, seed, num_draws, progress=False, particles=8):
        with methods.float64():
            pyro.clear_param_store()
            pyro.set_rng_seed(seed)
            guide = pyro_kr.AutoKR(problem.model, order="model", init_scale=init_scale)
            schedule = pyro_kr.Annealing.over(steps, beta=beta)
            loss = pyro_kr.TransportELBO(schedule, num_particles=particles,
                                         vectorize_particles=particles > 1)
            options: dict = {"lr": methods.LR, "lr_decay": False}
            if decay:
                optim, callback = _decay_after_ramp(steps, schedule.steps)
                options = {"optim": optim, "callback": callback}
            history = pyro_kr.fit(problem.model, guide, y=y, loss=loss, steps=steps,
                                  progress=progress, **options)
            return result(problem, guide, history, y=y, steps=steps, num_draws=num_draws)

    return fit


def _default_recipe_variant(**guide_options):
    """The default recipe (``Annealing.over(steps)``, ``fit``'s defaults) with
    ``AutoKR(model, init_scale=0.1, **guide_options)``: another order, map or start at the same
    budget (``init_scale=0.1``, the default start, spelled out unless given)."""
    return _fit_variant(pyro_kr.Annealing.over, {"init_scale": 0.1, **guide_options})


def _plain_elbo_variant(init_scale=0.1):
    """``AutoKR(model, init_scale=init_scale)`` trained as a drop-in for Pyro's autoguides:
    the plain ELBO (``TransportELBO(None)``), Adam lr 1e-2 held constant."""
    return _fit_variant(lambda steps: None, {"init_scale": init_scale})


def _fit_variant(schedule, guide_options, fit_options=None, extra=None):
    """``AutoKR(model, **guide_options)`` trained by ``fit(..., **fit_options)`` with
    ``TransportELBO(schedule(steps))`` at the suite's lr and particles; ``extra(history)``
    (a dict) goes into the result's ``extra``."""

    def fit(problem, y, *, steps, seed, num_draws, progress=False, particles=8):
        with methods.float64():
            pyro.clear_param_store()
            pyro.set_rng_seed(seed)
            guide = pyro_kr.AutoKR(problem.model, **guide_options)
            loss = pyro_kr.TransportELBO(schedule(steps), num_particles=particles,
                                         vectorize_particles=particles > 1)
            history = pyro_kr.fit(problem.model, guide, y=y, loss=loss, steps=steps,
                                  lr=methods.LR, progress=progress, **(fit_options or {}))
            res = result(problem, guide, history, y=y, steps=steps, num_draws=num_draws)
            if extra is not None:
                res.extra = extra(history)
            return res

    return fit


def end_game_variant(fit_options: dict, extra=None):
    """The default recipe (``AutoKR(model)``, ``Annealing.over(steps)``, the suite's lr and
    particles) with another end game: ``fit(..., **fit_options)`` (e.g. ``lr_decay_from``,
    ``average_from``); ``extra(history)`` (a dict) is recorded in the row."""
    return _fit_variant(pyro_kr.Annealing.over, {}, fit_options, extra)


def _recipe_variant(*, fraction: float = 0.7, beta=(1e-2, 1.0), beta_fraction: float | None = None,
                    decay_to: float | None = None,
                    ramp_lr: float = 1.0, affine_share: float = 0.0, laplace: str | None = None,
                    **guide_options):
    """A candidate change to the default recipe (issue 18, 18_modes screen), everything else
    as ``autokr_monotone`` (``AutoKR(model)``, ``order="auto"``, 8 particles, Adam lr 1e-2):

    - ``fraction``: the annealing ramp's share of the steps (``Annealing.over(fraction=)``);
    - ``beta``: the likelihood-temperature ramp; ``beta_fraction``: its own share of the
      steps (geometric), where ``(eps, lam)`` and the lr decay keep ``fraction``;
    - ``decay_to``: the lr at the last step as a fraction of its start (``fit``'s decay after
      the ramp is to 1 %); ``ramp_lr``: the lr at the end of the ramp (decayed geometrically
      from 1 during the ramp; 1 = held, as ``fit`` does). Either one set writes the lr out as
      a ``LambdaLR`` stepped by the callback; neither set uses ``fit``'s own decay;
    - ``affine_share``: train only the affine part (the monotone layers frozen at their
      near-identity start) for this share of the steps;
    - ``laplace``: ``"scale"``: the affine part's scale from the Laplace fit, its location from
      ``init_loc_fn`` (a pilot whose scale only is used); ``"full"``: ``init_scale="laplace"``.
      A ``LaplaceError`` falls back to the plain start (recorded as a failure of the run if
      not caught: it is caught and the fallback printed).

    ``AutoKR(model, init_scale=0.1, **guide_options)`` (the default start, spelled out) unless
    ``guide_options`` says otherwise."""
    guide_options = {"init_scale": 0.1, **guide_options}

    def fit(problem, y, *, steps, seed, num_draws, progress=False, particles=8):
        from pyro_kr.guides.laplace import LaplaceError

        with methods.float64():
            pyro.clear_param_store()
            pyro.set_rng_seed(seed)
            guide = pyro_kr.AutoKR(problem.model, **guide_options)
            if laplace is not None:
                try:
                    with torch.random.fork_rng(devices=[]), pyro.poutine.block():
                        pilot = pyro_kr.AutoKR(problem.model, **{**guide_options,
                                                                  "init_scale": "laplace"})
                        pilot(y=y)
                    scale_tril = pilot.transform[-1].scale_tril.detach().clone()
                    loc = pilot.transform[-1].loc.detach().clone()
                    pyro.clear_param_store()  # the pilot's parameters share the guide's names
                    with pyro.poutine.block():
                        guide(y=y)  # set up (draws the init point from the run's RNG)
                    affine = guide.transform[-1]
                    affine.set_scale_tril(scale_tril)
                    if laplace == "full":
                        affine.set_loc(loc)
                except LaplaceError as exc:
                    print(f"laplace pilot failed ({exc}); plain start", flush=True)
                pyro.clear_param_store()
            beta_ramp = beta if beta_fraction is None else GeometricSchedule(
                beta[0], beta[1], int(beta_fraction * steps))
            schedule = pyro_kr.Annealing.over(steps, fraction=fraction, beta=beta_ramp)
            loss = pyro_kr.TransportELBO(schedule, num_particles=particles,
                                         vectorize_particles=particles > 1)
            callbacks = []
            options: dict = {"lr": methods.LR}
            if decay_to is not None or ramp_lr != 1.0:
                ramp, final = schedule.steps, 0.01 if decay_to is None else decay_to
                during = ramp_lr ** (1 / ramp)
                after = (final / ramp_lr) ** (1 / max(steps - ramp, 1))
                optim = pyro.optim.LambdaLR({
                    "optimizer": torch.optim.Adam, "optim_args": {"lr": methods.LR},
                    "lr_lambda": lambda k: during ** k if k < ramp
                    else ramp_lr * after ** (k - ramp),
                })
                options = {"optim": optim}
                callbacks.append(lambda step, record: optim.step())
            if affine_share > 0:
                frozen_until = int(affine_share * steps)

                def monotone_params():
                    return [p for m in list(guide.transform)[:-1] for p in m.parameters()]

                if guide.prototype_trace is None:
                    with pyro.poutine.block():
                        guide(y=y)
                for p in monotone_params():
                    p.requires_grad_(False)

                def thaw(step, record):
                    if step + 1 == frozen_until:
                        for p in monotone_params():
                            p.requires_grad_(True)

                callbacks.append(thaw)
            history = pyro_kr.fit(problem.model, guide, y=y, loss=loss, steps=steps,
                                  progress=progress,
                                  callback=lambda s, r: [c(s, r) for c in callbacks] and None,
                                  **options)
            return result(problem, guide, history, y=y, steps=steps, num_draws=num_draws)

    return fit


def _restarts_variant(restarts: int, *, equal_cost: bool):
    """The default recipe (``AutoKR(model)``, ``Annealing.over``, ``fit``'s defaults) through
    ``fit(..., restarts=restarts)``: the run with the best held-out ELBO of ``restarts`` runs
    (issue 18, 18_restarts). ``equal_cost``: each run ``steps // restarts`` steps with
    ``Annealing.over(steps // restarts)`` (the same total steps and particles as the default);
    otherwise each run has the full ``steps`` (``restarts`` times the cost). The row records
    every run's held-out ELBO, the choice and, on ``symmetric_modes``, every run's mode share
    error (4000 draws at its last step)."""

    def fit(problem, y, *, steps, seed, num_draws, progress=False, particles=8):
        each = steps // restarts if equal_cost else steps
        share_errors: list[float] = []

        def shares(step, record):
            if problem.name == "symmetric_modes" and step + 1 == each:
                with torch.random.fork_rng(devices=[]):  # the training stream is untouched
                    d = methods.sample_guide(guide, problem.param_names, 4000,
                                             problem.param_shapes, y=y)
                s = mode_shares(d["theta1"], d["theta2"])
                share_errors.append(max(abs(v - 0.25) for v in s.values()))

        with methods.float64():
            pyro.clear_param_store()
            pyro.set_rng_seed(seed)
            guide = pyro_kr.AutoKR(problem.model, init_scale=0.1)
            loss = pyro_kr.TransportELBO(pyro_kr.Annealing.over(each), num_particles=particles,
                                         vectorize_particles=particles > 1)
            history = pyro_kr.fit(problem.model, guide, y=y, loss=loss, steps=each,
                                  lr=methods.LR, progress=progress, restarts=restarts,
                                  callback=shares)
            res = result(problem, guide, history, y=y, steps=steps, num_draws=num_draws)
        res.extra = {"restart_steps": each, "chosen_restart": history.chosen_restart,
                     "restart_elbos": [r["elbo"] for r in history.restarts],
                     "restart_elbo_se": [r["elbo_se"] for r in history.restarts]}
        if share_errors:
            res.extra["restart_share_errors"] = share_errors
        return res

    return fit


VARIANTS = {
    # the default recipe before 2026-12-05: no tempering, constant lr (the rows of
    # ``autokr_monotone`` measured before the change were moved here)
    "autokr_old_default": _autokr_variant(),
    # the old default with beta ramped 1e-2 -> 1 on the (eps, lam) ramp
    "autokr_temper": _autokr_variant(beta=(1e-2, 1.0)),
    # the old default with Adam's lr held to the end of the annealing ramp (70 % of the
    # steps), then decayed geometrically to 1 % of its start by the last step
    "autokr_decay": _autokr_variant(decay=True),
    # both: the default recipe (Annealing.over's beta and fit's lr_decay=None), written out
    # independently, in the model's order; ``autokr_model_order`` must reproduce it seed by
    # seed (and ``autokr_monotone`` where order="auto" keeps the model's order)
    "autokr_temper_decay": _autokr_variant(beta=(1e-2, 1.0), decay=True),
    # the default recipe with the KR order read off the model (AutoKR's default since
    # 2026-12-05, so ``autokr_monotone`` must reproduce it), with the model's order (the
    # default before), or with a deeper / wider map (model order, as measured); all with
    # init_scale=0.1, the start they were measured with
    "autokr_auto_order": _default_recipe_variant(order="auto"),
    "autokr_model_order": _default_recipe_variant(order="model"),
    "autokr_depth3": _default_recipe_variant(order="model", depth=3),
    "autokr_bumps16": _default_recipe_variant(order="model", num_bumps=16),
    # candidate changes to the default recipe (18_modes screen; see _recipe_variant)
    "cand_frac50": _recipe_variant(fraction=0.5),
    "cand_frac85": _recipe_variant(fraction=0.85),
    "cand_decay1e3": _recipe_variant(decay_to=1e-3),
    "cand_beta1e3": _recipe_variant(beta=(1e-3, 1.0)),
    "cand_ramplr30": _recipe_variant(ramp_lr=0.3),
    "cand_affine30": _recipe_variant(affine_share=0.3),
    "cand_laplace_scale": _recipe_variant(laplace="scale"),
    "cand_laplace_full": _recipe_variant(laplace="full"),
    "cand_frac85_lscale": _recipe_variant(fraction=0.85, laplace="scale"),
    "cand_beta85": _recipe_variant(beta_fraction=0.85),
    "cand_beta85_lscale": _recipe_variant(beta_fraction=0.85, init_scale="laplace_scale"),
    # the Laplace scale outside the default recipe: untempered with a constant lr (the old
    # default recipe), and the plain ELBO with a constant lr (the drop-in use), each beside
    # the plain start
    "cand_untempered_lscale": _autokr_variant(init_scale="laplace_scale"),
    "cand_plain_elbo": _plain_elbo_variant(),
    "cand_plain_elbo_lscale": _plain_elbo_variant(init_scale="laplace_scale"),
    # the default recipe with AutoKR(init_scale="laplace_scale") (18_modes; not the default)
    "autokr_laplace_scale": _default_recipe_variant(init_scale="laplace_scale"),
    # restarts chosen by the held-out ELBO (18_restarts; not the default): K full runs (K times
    # the cost), or K runs of steps // K (the default's total steps and particles)
    "autokr_restarts4": _restarts_variant(4, equal_cost=False),
    "autokr_restarts3": _restarts_variant(3, equal_cost=False),
    "autokr_restarts8": _restarts_variant(8, equal_cost=False),
    "autokr_restarts2_equal": _restarts_variant(2, equal_cost=True),
    "autokr_restarts4_equal": _restarts_variant(4, equal_cost=True),
}


def get_method(name: str):
    return VARIANTS[name] if name in VARIANTS else methods.get(name)


def one_run(problem, y, ref, name: str, *, steps: int, seed: int, num_draws: int) -> dict:
    fit = get_method(name)
    row: dict = {"seed": seed, "steps": steps, "particles": methods.PARTICLES}
    cpu = time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            res = fit(problem, y, steps=steps, seed=seed, num_draws=num_draws)
            failed = res.failed
        except Exception as exc:  # noqa: BLE001 - a crash is a counted failure
            res, failed = None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    row["cpu_s"] = time.process_time() - cpu
    row["fit_warnings"] = sorted({str(w.message)[:160] for w in caught
                                  if w.category.__name__ == "FitWarning"})
    if failed is None and not all(np.isfinite(v).all() for v in res.draws.values()):
        failed = "non-finite posterior draws"
    row["failed"] = failed
    if res is not None and res.extra and name in VARIANTS:
        row.update(res.extra)
    if failed is None:
        with methods.float64():
            scores = metrics.compare(res.draws, ref, metrics=("w2_standardized",), n=2000,
                                     seed=seed)
        row["w2"] = float(scores["w2_standardized"])
        row["floor"] = float(scores["w2_standardized_noise_floor"])
        if problem.name == "symmetric_modes":
            shares = mode_shares(res.draws["theta1"], res.draws["theta2"])
            row["max_share_error"] = max(abs(s - 0.25) for s in shares.values())
    return row


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"problems": {}}


def run(args) -> None:
    out = Path(args.out)
    data = load(out)
    data.setdefault("settings", {
        "particles": methods.PARTICLES, "lr": methods.LR, "num_draws": args.num_draws,
        "metric": "w2_standardized, n=2000, floor = W2 between reference halves",
        "dtype": "float64", "threads": 1,
    })
    for pname in args.problems:
        problem = problems.get(pname)
        y = problem.observation(0)
        ref, _ = runner.load_reference(problem, 0)
        steps = args.steps or runner.default_steps(pname)
        entry = data["problems"].setdefault(pname, {"steps": steps, "methods": {}})
        if entry["steps"] != steps:
            raise SystemExit(f"{out} holds {pname} at {entry['steps']} steps, not {steps}")
        for name in args.methods:
            rows = entry["methods"].setdefault(name, [])
            for seed in args.seeds:
                if any(r["seed"] == seed for r in rows):
                    continue
                row = one_run(problem, y, ref, name, steps=steps, seed=seed,
                              num_draws=args.num_draws)
                rows.append(row)
                rows.sort(key=lambda r: r["seed"])
                data["created_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                runner.write_json_atomic(data, out)
                print(pname, name, json.dumps(row), flush=True)


def _median(rows: list[dict], key: str = "w2") -> float:
    vals = [r[key] for r in rows if r.get("failed") is None and key in r]
    if len(vals) < len(rows):  # a failed run counts as infinitely bad
        vals += [math.inf] * (len(rows) - len(vals))
    return statistics.median(vals) if vals else math.nan


def table(data: dict) -> str:
    """Markdown table: median W2 (min-max) per guide and problem, seeds, floor, verdicts."""
    lines = []
    names = []
    for entry in data["problems"].values():
        for m in entry["methods"]:
            if m not in names:
                names.append(m)
    names.sort(key=lambda m: (m not in DEFAULT_METHODS, DEFAULT_METHODS.index(m)
                              if m in DEFAULT_METHODS else 0, m))
    lines.append("| problem (steps) | floor | " + " | ".join(f"`{m}`" for m in names)
                 + " | default vs best stock |")
    lines.append("|---" * (len(names) + 3) + "|")
    for pname, entry in data["problems"].items():
        floors = [r["floor"] for rows in entry["methods"].values() for r in rows if "floor" in r]
        floor = statistics.median(floors) if floors else math.nan
        cells = []
        for m in names:
            rows = entry["methods"].get(m, [])
            if not rows:
                cells.append("")
                continue
            med = _median(rows)
            ok = [r["w2"] for r in rows if r.get("failed") is None and "w2" in r]
            fails = sum(r.get("failed") is not None for r in rows)
            cell = f"{med:.3g}" + (f" ({min(ok):.3g}-{max(ok):.3g})" if len(ok) > 1 else "")
            cell += f" n={len(rows)}" + (f", {fails} failed" if fails else "")
            cells.append(cell)
        stock = {m: _median(entry["methods"][m]) for m in STOCK if m in entry["methods"]}
        verdict = ""
        if "autokr_monotone" in entry["methods"] and stock:
            best = min(stock, key=stock.get)
            d = _median(entry["methods"]["autokr_monotone"])
            verdict = (f"{d:.3g} vs {stock[best]:.3g} ({best}): "
                       + ("met" if d <= stock[best] else "missed")
                       + f"; {d / floor:.2f}x floor")
        lines.append(f"| {pname} ({entry['steps']}) | {floor:.3g} | " + " | ".join(cells)
                     + f" | {verdict} |")
    return "\n".join(lines)


WARNING_KINDS = {"stalled": "stalled at the prior", "collapsed": "misses part of",
                 "diverged": "the fit diverged",
                 "worse than Gaussian": "worse than the Laplace Gaussian"}


def health(data: dict) -> str:
    """Markdown table: runs, failures (NaN loss, crash, non-finite draws) and ``fit``'s
    warnings per guide, over every problem and seed."""
    counts: dict[str, dict[str, int]] = {}
    for entry in data["problems"].values():
        for m, rows in entry["methods"].items():
            c = counts.setdefault(m, {"runs": 0, "failed": 0, **dict.fromkeys(WARNING_KINDS, 0)})
            for r in rows:
                c["runs"] += 1
                c["failed"] += r.get("failed") is not None
                for kind, text in WARNING_KINDS.items():
                    c[kind] += any(text in w for w in r.get("fit_warnings", []))
    head = ["runs", "failed", *WARNING_KINDS]
    lines = ["| guide | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for m, c in counts.items():
        lines.append(f"| `{m}` | " + " | ".join(str(c[k]) for k in head) + " |")
    return "\n".join(lines)


def end_game_main(description: str, arms: dict, default_problems: list[str], out: Path,
                  table_fn, default_arms: list[str] | None = None,
                  argv: list[str] | None = None) -> int:
    """The command line of the end-game comparisons (``lr_plateau_suite.py``,
    ``averaging_suite.py``): ``arms`` maps a method name to its variant (e.g.
    :func:`end_game_variant`); the chosen arms are registered in ``VARIANTS`` and run by
    :func:`main` on ``--problems`` and ``--seeds`` into ``--out`` (``--with-default`` also
    reruns ``autokr_monotone`` there); ``--table`` prints ``table_fn(out)`` instead."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--arms", nargs="+", default=list(default_arms or arms), choices=list(arms))
    p.add_argument("--seeds", nargs="+", default=["0"])
    p.add_argument("--problems", nargs="+", default=list(default_problems))
    p.add_argument("--with-default", action="store_true",
                   help="also rerun the default (autokr_monotone) into the same file")
    p.add_argument("--out", default=str(out))
    p.add_argument("--table", action="store_true")
    a = p.parse_args(argv)
    if a.table:
        print(table_fn(Path(a.out)))
        return 0
    for arm in a.arms:
        VARIANTS[arm] = arms[arm]
    names = list(a.arms) + (["autokr_monotone"] if a.with_default else [])
    return main(["--problems", *a.problems, "--methods", *names, "--seeds", *a.seeds,
                 "--out", a.out])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", default=list(SUITE))
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=None,
                        help="override the bench default steps (e.g. 5 for a smoke run)")
    parser.add_argument("--num-draws", type=int, default=4000)
    parser.add_argument("--out", default=str(RESULTS / "suite.json"))
    parser.add_argument("--table", action="store_true", help="print the table of --out")
    args = parser.parse_args(argv)
    if not args.table:
        run(args)
    data = load(Path(args.out))
    print(table(data) + "\n\n" + health(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
