"""``fit``: the SVI loop with progress, NaN handling and exact checkpoint/resume."""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyro
import torch
from pyro.infer import ELBO, SVI, Trace_ELBO
from pyro.optim import Adam, PyroOptim

from pyro_kr import distributed
from pyro_kr._batching import quiet_plate_guess
from pyro_kr._validation import check_observed
from pyro_kr.averaging import ParamAverage, average_start
from pyro_kr.checkpoint import (
    atomic_save,
    check_writable,
    checkpoint_interval,
    get_rng_state,
    load_checkpoint,
    restore_params,
    set_rng_state,
    snapshot_params,
)
from pyro_kr.history import TrainingHistory
from pyro_kr.progress import progress_bar
from pyro_kr.traces import guess_plate_nesting

__all__ = [
    "DECAY_TO",
    "PLATEAU_LATEST",
    "PLATEAU_MIN_WINDOW",
    "PLATEAU_WINDOW",
    "PLATEAU_Z",
    "History",
    "NonFiniteLossError",
    "fit",
    "loss_plateaued",
]

DECAY_TO = 0.01
"""``fit``'s end game with an annealing schedule: after the ramp ends, Adam's learning rate
decays geometrically to this fraction of its start by the last step (``lr_decay``)."""

PLATEAU_WINDOW = 0.025
"""``fit(lr_decay_from="plateau")``: each of the two windows of losses that
:func:`loss_plateaued` compares is this fraction of the steps (at least
``PLATEAU_MIN_WINDOW`` steps)."""

PLATEAU_MIN_WINDOW = 5
"""The shortest window of ``lr_decay_from="plateau"``'s test, in steps."""

PLATEAU_Z = 1.0
"""``lr_decay_from="plateau"``: the loss still improves while the mean of the last window is
below the mean of the window before by more than this many standard errors."""

PLATEAU_LATEST = 0.85
"""``lr_decay_from="plateau"``: the latest start of the decay, as a fraction of the steps (the
decay always has the last 15 % of the steps)."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the parameters were restored to the last finite step."""


@dataclass
class History(TrainingHistory):
    """:class:`~pyro_kr.history.TrainingHistory` of :func:`fit`: per-step loss, ELBO and schedule.

    Attributes:
        loss: the loss of every step (for :class:`~pyro_kr.TransportELBO` the annealed
            objective, else ``-ELBO``).
        elbo: the ELBO of every step.
        eps, lam: the schedule's values at every step (``nan`` / ``inf`` without one).
        seconds: wall time of the training loop (of every restart together with
            ``restarts > 1``).
        restarts: with ``fit(..., restarts=K)``, one record per restart: ``restart`` (0-based),
            ``elbo`` and ``elbo_se`` (the held-out ELBO estimate that chose), ``steps``,
            ``seconds`` and, for a restart stopped by a NaN loss, ``error``; empty otherwise.
            The per-step fields above are the chosen restart's.
        chosen_restart: the index of the restart kept (``None`` without restarts).
        restarts_choice: with ``restarts="auto"`` (the default), how many runs were trained
            and why (the mode survey's finding); ``None`` when ``restarts`` was a number.
        lr_decay_start: the step from which ``fit``'s Adam decayed its lr (the first step of
            the decay, still at the full ``lr``; ``lr_decay`` / ``lr_decay_from``), ``None``
            for a constant lr (or, with ``lr_decay_from="plateau"``, a run stopped before the
            rule decided).
        average_starts, averaged_steps: with ``fit(..., average_from=...)``, one entry each:
            the steps left out before the tail average and the number of iterates averaged
            (``0``: the run stopped before its average started, and the last iterate was
            kept); empty without averaging. The names and meaning are those of
            :class:`~pyro_kr.amortized.AmortizedHistory` (one entry per averaged phase).
    """

    elbo: list[float] = field(default_factory=list)
    eps: list[float] = field(default_factory=list)
    lam: list[float] = field(default_factory=list)
    restarts: list[dict] = field(default_factory=list)
    chosen_restart: int | None = None
    restarts_choice: str | None = None
    lr_decay_start: int | None = None
    average_starts: list[int] = field(default_factory=list)
    averaged_steps: list[int] = field(default_factory=list)

    def append(self, record: dict[str, float]) -> None:
        """Record one step (``record`` has ``loss`` and optionally ``elbo``, ``eps``, ``lam``)."""
        self.loss.append(record["loss"])
        self.elbo.append(record.get("elbo", -record["loss"]))
        self.eps.append(record.get("eps", math.nan))
        self.lam.append(record.get("lam", math.inf))


def _non_finite_params() -> list[str]:
    """Names of param-store parameters holding NaN or inf (empty when all are finite)."""
    return [
        name
        for name, p in pyro.get_param_store().named_parameters()
        if not bool(torch.isfinite(p).all())
    ]


def _record(loss, value: float) -> dict[str, float]:
    last = getattr(loss, "last", None)
    if isinstance(last, dict) and last:
        return dict(last)
    return {"loss": value, "elbo": -value}


def _resolve_optim(lr: float | None, optim: PyroOptim | None) -> PyroOptim:
    if optim is not None and lr is not None:
        raise ValueError("pass either lr or optim, not both")
    if optim is not None:
        if not isinstance(optim, PyroOptim):
            raise TypeError(f"optim must be a pyro.optim optimizer, got {type(optim).__name__}")
        return optim
    lr = 1e-2 if lr is None else lr
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    return Adam({"lr": lr})


def _check_decay_from(lr_decay_from) -> None:
    """Refuse an ``lr_decay_from`` that is neither a fraction of the steps in ``(0, 1)`` nor
    ``"plateau"``."""
    if lr_decay_from is None:
        return
    if isinstance(lr_decay_from, str):
        if lr_decay_from != "plateau":
            raise ValueError(
                f"lr_decay_from={lr_decay_from!r} is not a known rule: pass 'plateau' (decay "
                "once the annealing ramp has ended and the loss stopped improving), a fraction "
                "of the steps in (0, 1) such as 0.85, or leave it unset"
            )
        return
    if isinstance(lr_decay_from, bool) or not isinstance(lr_decay_from, (int, float)):
        raise TypeError(
            f"lr_decay_from must be None or a float in (0, 1), or the string 'plateau', got "
            f"{lr_decay_from!r}"
        )
    if not 0.0 < lr_decay_from < 1.0:
        raise ValueError(
            f"lr_decay_from must lie in (0, 1), got {lr_decay_from!r}: it is the fraction of "
            "the steps after which fit's Adam starts its decay (e.g. lr_decay_from=0.85 holds "
            "the lr for 85 % of the steps, then decays it to 1 % by the last step); pass "
            "lr_decay_from='plateau' to start it once the loss stops improving, "
            "lr_decay=False for a constant lr, or leave it unset to decay after the annealing "
            "ramp"
        )


def loss_plateaued(losses: Sequence[float], window: int, z: float = PLATEAU_Z) -> bool:
    """Whether the last ``2 * window`` losses show no improvement: ``fit``'s plateau test.

    With ``a`` the mean of the window before the last and ``b`` the mean of the last window
    (each ``window`` losses), and ``se = sqrt(var_a / window + var_b / window)`` the standard
    error of ``a - b`` from the two windows' sample variances (the losses are noisy
    estimates: Monte Carlo particles and Adam's jitter), the loss has stopped improving when
    ``a - b <= z * se``: the fall over the last window is within ``z`` standard errors of none.

    Args:
        losses: the losses so far, oldest first (a sequence of floats, length
            ``>= 2 * window``; only the last ``2 * window`` are read).
        window: the window length in steps, ``>= 2``.
        z: the threshold in standard errors (default :data:`PLATEAU_Z`).

    Example:
        >>> loss_plateaued([5.0, 4.0, 3.0, 2.0], window=2)  # still falling
        False
        >>> loss_plateaued([2.0, 2.2, 2.1, 2.0], window=2)
        True
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise ValueError(f"window must be an int >= 2, got {window!r}")
    if len(losses) < 2 * window:
        raise ValueError(
            f"loss_plateaued compares two windows of {window} losses and got {len(losses)}; "
            f"pass at least {2 * window}"
        )
    tail = [float(v) for v in losses[len(losses) - 2 * window:]]
    before, last = tail[:window], tail[window:]
    mean_a, mean_b = math.fsum(before) / window, math.fsum(last) / window
    var_a = math.fsum((v - mean_a) ** 2 for v in before) / (window - 1)
    var_b = math.fsum((v - mean_b) ** 2 for v in last) / (window - 1)
    return mean_a - mean_b <= z * math.sqrt((var_a + var_b) / window)


def _plateau_window(steps: int) -> int:
    """The window of ``lr_decay_from="plateau"``'s test for a run of ``steps`` steps."""
    return max(PLATEAU_MIN_WINDOW, math.ceil(PLATEAU_WINDOW * steps))


def _decay_plan(
    lr_decay: bool | None, optim: PyroOptim | None, schedule, steps: int,
    lr_decay_from: float | str | None = None,
) -> int | None:
    """The step from which ``fit`` decays its own Adam's lr, or ``None`` for a constant lr.

    ``lr_decay=None`` (the default of ``fit``) decays when ``fit`` builds the optimizer itself
    (no ``optim``) and the loss anneals (a schedule with a ramp of ``steps`` steps) that ends
    before the last step; ``True`` requires all of it; ``False`` never decays.
    ``lr_decay_from`` (a fraction in ``(0, 1)``) decays from step ``int(lr_decay_from *
    steps)`` instead of the ramp's end, with or without a schedule (``fit``'s own Adam only);
    ``"plateau"`` returns its latest start, ``int(PLATEAU_LATEST * steps)`` (``fit`` starts
    earlier where the loss stopped improving).
    """
    if lr_decay is not None and not isinstance(lr_decay, bool):
        raise TypeError(f"lr_decay must be None, True or False, got {lr_decay!r}")
    _check_decay_from(lr_decay_from)
    if lr_decay_from is not None:
        if lr_decay is False:
            raise ValueError(
                f"lr_decay=False keeps the lr constant and lr_decay_from={lr_decay_from!r} asks "
                "for a decay; pass one of them"
            )
        if optim is not None:
            raise ValueError(
                f"lr_decay_from={lr_decay_from!r} decays fit's own Adam; with optim= pass a "
                "decaying optimizer yourself (e.g. pyro.optim.LambdaLR) or pass lr= instead "
                "of optim="
            )
        if lr_decay_from == "plateau":
            return int(PLATEAU_LATEST * steps)
        return int(lr_decay_from * steps)
    ramp = getattr(schedule, "steps", None)
    usable = (optim is None and isinstance(ramp, int) and not isinstance(ramp, bool)
              and ramp >= 1)
    if lr_decay is False or (lr_decay is None and not usable):
        return None
    if optim is not None:
        raise ValueError(
            "lr_decay=True decays fit's own Adam; with optim= pass a decaying optimizer "
            "yourself (e.g. pyro.optim.ClippedAdam with lrd) or leave lr_decay unset"
        )
    if not usable:
        raise ValueError(
            "lr_decay=True decays the lr after the annealing ramp ends, and this loss has no "
            "annealing schedule: pass loss=TransportELBO(Annealing.over(steps)), an explicit "
            "start (lr_decay_from=0.7: decay after 70 % of the steps), or an optimizer that "
            "decays (optim=pyro.optim.ClippedAdam({'lr': ..., 'lrd': ...}))"
        )
    if ramp >= steps and lr_decay is True:
        raise ValueError(
            f"lr_decay=True decays the lr after the annealing ramp ends, and this ramp lasts "
            f"{ramp} steps of {steps}: nothing is left to decay. Use a ramp that ends earlier "
            f"(Annealing.over(steps), which ramps over 70 % of them), an explicit start "
            f"(lr_decay_from=0.85), or lr_decay=False"
        )
    return ramp if ramp < steps else None


def _decayed_lr(lr: float, step: int, start: int, steps: int) -> float:
    """``lr`` before ``start``, then ``lr * DECAY_TO ** ((step - start) / (steps - start))``."""
    return lr * DECAY_TO ** (0.0 if step < start else (step - start) / (steps - start))


def _set_lr(optim: PyroOptim, value: float, pending: dict | None = None) -> None:
    """Set the lr of every per-parameter optimizer, and of the saved optimizer states in
    ``pending`` (a checkpoint's ``optim`` entry, loaded when each optimizer is created at the
    next step): the lr is a pure function of the step, so a resumed run is exact."""
    for opt in optim.optim_objs.values():
        for group in opt.param_groups:
            group["lr"] = value
    for saved in (pending or {}).values():
        for group in saved.get("param_groups", ()):
            group["lr"] = value


def _postfix(record: dict[str, float], value: float) -> dict[str, str]:
    """Progress-bar fields: the loss, the ELBO and the schedule, where the loss reports them.

    Forward-mode amortized training has no ELBO (``nan``) and no schedule: those are left out
    rather than shown as ``nan``.
    """
    out = {"loss": f"{record['loss']:.4g}"}
    elbo = record.get("elbo", -value)
    if math.isfinite(elbo):
        out["elbo"] = f"{elbo:.4g}"
    for key in ("eps", "lam"):
        if key in record and math.isfinite(record[key]):
            out[key] = f"{record[key]:.2g}"
    return out


def _check_restarts(restarts, restart_draws, optim, checkpoint) -> None:
    """Refuse unusable ``restarts`` / ``restart_draws`` and what ``restarts > 1`` cannot do."""
    if restarts != "auto" and (
        isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1
    ):
        raise ValueError(
            f"restarts must be 'auto' or a positive int, got {restarts!r}; 'auto' (the "
            "default) trains restarts only where the posterior shows several modes, 1 trains "
            "once, K > 1 trains K times and keeps the run with the best held-out ELBO"
        )
    if isinstance(restart_draws, bool) or not isinstance(restart_draws, int) or restart_draws < 2:
        raise ValueError(
            f"restart_draws must be an int >= 2 (draws of the held-out ELBO estimate), got "
            f"{restart_draws!r}"
        )
    if restarts in (1, "auto"):  # "auto" adapts to optim / checkpoint / torchrun
        return
    if optim is not None:
        raise ValueError(
            f"restarts={restarts} builds a fresh Adam for every restart from lr; one optim= "
            "object would carry its state from one restart into the next. Pass lr= (and "
            "lr_decay=) instead, or call fit once per start yourself"
        )
    if checkpoint is not None:
        raise ValueError(
            f"restarts={restarts} cannot be checkpointed (a checkpoint resumes one run); pass "
            "checkpoint=None, or call fit with a checkpoint once per start yourself"
        )
    if distributed.launched():
        raise ValueError(
            f"restarts={restarts} is not supported under torchrun (the ranks would have to "
            "agree on the choice); launch a single process, or pass restarts=1"
        )


def _check_data(model: Callable, args: tuple, kwargs: dict) -> None:
    """Refuse observed data holding NaN/inf before training (one run of the model alone)."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad(), pyro.poutine.block():
            trace = pyro.poutine.trace(model).get_trace(*args, **kwargs)
    except Exception:  # noqa: BLE001 - the first SVI step reports the model's own error
        return
    check_observed("fit", trace)


def _resume_average(average: ParamAverage, saved: dict | None, step: int, checkpoint) -> None:
    """Put ``average`` where the uninterrupted run had it after ``step`` steps, from the
    checkpoint's saved average (``saved``; ``None`` for a checkpoint written without
    ``average_from``), or refuse where the resumed run could not be exact."""
    path = os.fspath(checkpoint)
    if saved is None:
        if step > average.start:
            raise ValueError(
                f"checkpoint {path!r} (step {step}) was written without average_from, and this "
                f"run's tail average starts after step {average.start}: the iterates between "
                "are not in the checkpoint. Resume it without average_from, pass an "
                f"average_from at or after step {step}, or delete the checkpoint to start over"
            )
        # nothing averaged yet: the uninterrupted run had only counted the steps
        average.load_state_dict({"start": average.start, "decay": None, "names": None,
                                 "count": 0, "seen": step, "average": {}})
        return
    if saved["start"] != average.start or saved["decay"] is not None:
        raise ValueError(
            f"checkpoint {path!r} holds a tail average that leaves out {saved['start']} steps, "
            f"and this call's average_from leaves out {average.start}: pass the average_from "
            "the checkpoint was written with (the same fraction of the same steps), or delete "
            "the checkpoint to start over"
        )
    average.load_state_dict(saved)


def _swap_in_average(average: ParamAverage, history: History) -> None:
    """End of an averaged run: swap the tail average into the param store and record it."""
    history.average_starts, history.averaged_steps = [average.start], [average.count]
    if average.count:
        average.swap_in()
        return
    warnings.warn(
        f"training stopped after {history.steps} steps, before its tail average starts (after "
        f"{average.start} steps; average_from): nothing was averaged (fit keeps the last "
        "iterate; fit_amortized's forward phase keeps its best check)",
        RuntimeWarning, stacklevel=3)


def _parallel_svi(model, guide, optim, loss, args, kwargs) -> SVI:
    """``SVI`` whose gradients ``DistributedDataParallel`` averages over the ranks.

    The parameters are built first (without touching the RNG, so every rank keeps the same
    stream). A Pyro ELBO then reseeds each rank differently (its own particles); any other
    loss keeps one stream on every rank and takes its share of the batch itself.
    """
    with torch.random.fork_rng(devices=[]), torch.no_grad(), pyro.poutine.block(), \
            quiet_plate_guess():
        guide_trace = pyro.poutine.trace(guide).get_trace(*args, **kwargs)
        pyro.poutine.replay(model, trace=guide_trace)(*args, **kwargs)
    if isinstance(loss, ELBO):
        seed = int(torch.randint(2**62, ()))  # the same on every rank
        torch.manual_seed(seed + distributed.rank())
    return SVI(model, guide, optim, distributed.wrap(model, guide, loss))


def fit(
    model: Callable,
    guide: Callable,
    *args,
    loss=None,
    steps: int = 1000,
    lr: float | None = None,
    optim: PyroOptim | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    callback: Callable[[int, dict[str, float]], bool | None] | None = None,
    check: bool = True,
    lr_decay: bool | None = None,
    lr_decay_from: float | str | None = None,
    average_from: float | int | None = None,
    restarts: int | str = "auto",
    restart_draws: int = 1000,
    **kwargs,
) -> History:
    """Train ``guide`` on ``model`` with SVI and return the :class:`History`.

    Args:
        model, guide: Pyro model and guide; ``*args, **kwargs`` are passed to both.
        loss: a Pyro ELBO, e.g. :class:`~pyro_kr.TransportELBO` (default ``Trace_ELBO()``).
        steps: total number of steps, ``>= 1`` (a resumed run continues up to this number;
            a checkpoint already past it is refused).
        lr: Adam learning rate (default 1e-2), or pass ``optim`` (a ``pyro.optim`` optimizer).
        lr_decay: the end game of ``fit``'s own Adam. With an annealing schedule (e.g.
            ``TransportELBO(Annealing.over(steps))``) whose ramp ends before ``steps``, the
            decay holds ``lr`` until the ramp ends and then decays it geometrically to
            ``DECAY_TO`` (1 %) of ``lr`` by the last step, so the fit settles instead of
            moving every parameter by about ``lr`` per step to the end. ``None`` (the
            default): decay when ``fit`` builds the optimizer (no ``optim``) and the loss has
            such a schedule, a constant ``lr`` otherwise (no schedule, a ramp as long as the
            run, or ``optim`` given); with ``Annealing.over(steps)``'s likelihood tempering
            this is the default recipe (docs/hard_posteriors.md). ``False``: a constant
            ``lr``, as Pyro's Adam (``fit``'s default before 2026-12-05). ``True``: require
            the decay (an error without a schedule, with a ramp that leaves nothing to decay,
            or with ``optim``).
        lr_decay_from: where the decay starts, as a fraction of ``steps`` in ``(0, 1)``:
            ``fit``'s Adam holds ``lr`` until step ``int(lr_decay_from * steps)``, then decays
            it geometrically to ``DECAY_TO`` (1 %) of ``lr`` by the last step, with or without
            an annealing schedule. ``None`` (the default): from the end of the annealing ramp,
            as ``lr_decay`` says (70 % of the steps with ``Annealing.over(steps)``; the same
            as ``lr_decay_from=0.7`` there). A later start gives the fit more untempered steps
            at full ``lr`` after a tempering ramp: ``0.85`` fixes the lag of a large hierarchy
            (docs/hierarchical.md). ``"plateau"``: an adaptive start. The decay starts at the
            first step, after the annealing ramp has ended (from the first step without a
            schedule), at which the loss has stopped improving: the mean loss of the last
            window is within ``PLATEAU_Z`` (1) standard errors of the window's before
            (:func:`loss_plateaued`; windows of ``PLATEAU_WINDOW`` = 2.5 % of the steps, at
            least 5), and at the latest at ``PLATEAU_LATEST`` (85 %) of the steps, so the
            decay always has room; the step chosen is ``History.lr_decay_start``. Refused
            with ``lr_decay=False`` or ``optim=``.
        average_from: opt-in iterate averaging (Polyak-Ruppert / SWA,
            :mod:`pyro_kr.averaging`): the parameters after every step past a start are
            averaged uniformly (in the unconstrained space Pyro's param store keeps: a
            ``positive`` parameter ends at the geometric mean of its iterates), and the
            average is swapped into the param store when training ends, so the returned
            guide is the average. ``None`` (the default): off, the last iterate is kept. A
            float in ``(0, 1)``: the fraction of the steps *before* the average (``0.7``: the
            iterates after steps ``int(0.7 * steps) + 1, ..., steps``); an int ``k`` in
            ``[0, steps)``: the iterates after steps ``k + 1, ..., steps``. Training itself
            is unchanged (the same steps, losses and lr, whatever ``lr_decay``), and the
            ``callback`` sees the live parameters. The end check (``check``) and, with
            ``restarts``, the held-out ELBO that chooses judge the averaged guide (each
            restart averages its own tail). A checkpoint holds the live parameters and the
            average so far, so a resumed run is exact; resuming with another
            ``average_from``, or with one whose average should already have started from a
            checkpoint written without it, is refused. A run stopped early by ``callback``
            before its average starts keeps the last iterate (a ``RuntimeWarning``); a NaN
            loss raises as without averaging (the live parameters restored, nothing swapped
            in). Recorded in ``History.average_starts`` / ``History.averaged_steps``. The
            suite measurements are in docs/hard_posteriors.md.
        restarts: train this many times from the same start (each run ``steps`` steps with a
            fresh Adam, the schedule rewound and its own random stream) and keep the run with
            the best held-out ELBO (``restart_draws`` guide draws with one fixed seed;
            :mod:`pyro_kr.restarts`): a run that lost modes of a multimodal posterior ends
            with a lower ELBO. Costs ``restarts`` times the steps. The choice and every ELBO
            are logged (logger ``pyro_kr.restarts``, INFO) and recorded in
            ``History.restarts`` / ``History.chosen_restart``; the chosen run's parameters are
            put back in the param store exactly. ``1``: one run. ``"auto"`` (the default
            since 2026-12-06): for a dense monotone :class:`~pyro_kr.AutoKR` (at most 200
            latents) the posterior is first searched for several modes
            (:meth:`pyro_kr.AutoKR.survey_modes`: L-BFGS from the initial point and four prior
            draws; deterministic, the random stream untouched); where two or more strict
            modes hold mass, ``AUTO_RESTARTS`` (8) restarts are trained (8x the steps; logged
            at WARNING with the modes found), otherwise one run, exactly as with ``1``. With
            ``optim=`` or ``map="affine"`` a survey that finds several modes is reported at
            WARNING and one run is trained; with ``checkpoint=``, under ``torchrun``, with
            ``structure="plates"`` and for other guides there is no survey and one run.
            ``History.restarts_choice`` says which and why
            (:func:`pyro_kr.restarts.auto_restarts`). With ``restarts > 1``: ``optim=`` and
            ``checkpoint=`` are refused (each restart builds its own Adam from ``lr``; a
            checkpoint resumes one run), as is a ``torchrun`` launch; ``callback`` runs in
            every restart (``step`` counts from 0 in each; returning ``True`` ends that
            restart); a restart stopped by a NaN loss is logged and left out.
        restart_draws: number of guide draws of the held-out ELBO estimate (``>= 2``).
        progress: show a progress bar with loss, ELBO, eps, lambda and steps/s (a tqdm bar on
            a terminal or in a notebook; when stderr is not a terminal, e.g. logs or CI, one
            plain line every 10% of the steps).
        checkpoint: path of a checkpoint file. If it exists the run resumes from it exactly
            (parameters, optimizer, schedule and RNG state); it is rewritten atomically every
            ``checkpoint_every`` steps (default: 10 % of ``steps``) and at the end, so an
            interrupt loses at most that many.
        callback: ``callback(step, record)`` after each step; returning ``True`` stops early.
        check: after training, check the guide against its model and prior (500 vectorized
            draws each; :func:`pyro_kr.diagnostics.stall.check_fit`, given the ELBO of the
            parameters after the first step as the start of a fresh run) and warn
            (:class:`~pyro_kr.diagnostics.stall.FitWarning`) when the fit stalled at the
            prior, collapsed or diverged, naming the fix. For a dense ``AutoKR`` (at most 200
            latents) that
            passes, it also compares the fit with the model's Laplace Gaussian
            (:func:`~pyro_kr.diagnostics.stall.compare_to_gaussian`) and warns when the fit's
            ELBO is lower (never a silent loss to a Gaussian; skipped where the posterior has
            no mode). Skipped where the draws cannot be vectorized.

    Raises:
        NonFiniteLossError: the loss became NaN/inf at a named step; parameters are restored
            to their values before that step.
        ValueError: ``steps < 1``, a loss with ``num_particles < 1``, observed data holding
            NaN/inf, a checkpoint path that cannot be written, a checkpoint past ``steps``,
            ``lr_decay_from`` neither in ``(0, 1)`` nor ``"plateau"`` (or with
            ``lr_decay=False`` / ``optim``), an unusable ``average_from`` (a bool, a float
            outside ``(0, 1)``, an int outside ``[0, steps)``) or one that does not match the
            checkpoint (see above), or
            ``restarts`` / ``restart_draws`` that are not usable (see above); all raised
            before the first step.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> import pyro_kr
        >>> def model():
        ...     pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> guide = pyro_kr.AutoKR(model, map="affine")
        >>> history = fit(model, guide, steps=20, progress=False)
        >>> history.steps
        20
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(
            f"steps must be a positive int, got {steps!r}; steps=0 would return the guide "
            "untrained"
        )
    checkpoint_every = checkpoint_interval(checkpoint_every, steps)
    loss = Trace_ELBO() if loss is None else loss
    particles = getattr(loss, "num_particles", 1)
    if isinstance(particles, bool) or not isinstance(particles, int) or particles < 1:
        raise ValueError(
            f"the loss has num_particles={particles!r}; it must be an int >= 1 "
            "(with 0 particles the loss is 0 and nothing is trained)"
        )
    _check_restarts(restarts, restart_draws, optim, checkpoint)
    average_skip = average_start(average_from, steps)  # its errors before any training
    _check_data(model, args, kwargs)
    restarts_choice = None
    if restarts == "auto":
        from pyro_kr.restarts import auto_restarts  # lazy: pyro_kr.restarts imports fit

        restarts, restarts_choice = auto_restarts(guide, args, kwargs, optim=optim,
                                                  checkpoint=checkpoint)
    if restarts > 1:
        _decay_plan(lr_decay, optim, getattr(loss, "schedule", None), steps,
                    lr_decay_from)  # its errors first
        _resolve_optim(lr, optim)
        from pyro_kr.restarts import fit_restarts  # lazy: it calls fit once per restart

        history = fit_restarts(model, guide, args, kwargs, restarts=restarts,
                               num_draws=restart_draws, loss=loss, steps=steps, lr=lr,
                               lr_decay=lr_decay, lr_decay_from=lr_decay_from,
                               progress=progress, callback=callback, check=check,
                               average_from=average_from)
        history.restarts_choice = restarts_choice
        return history
    if checkpoint is not None:
        check_writable(checkpoint)
    schedule = getattr(loss, "schedule", None)
    decay_from = _decay_plan(lr_decay, optim, schedule, steps, lr_decay_from)
    plateau = None  # lr_decay_from="plateau": (earliest start, window); decay_from the latest
    if lr_decay_from == "plateau":
        ramp = getattr(schedule, "steps", None)
        usable = isinstance(ramp, int) and not isinstance(ramp, bool) and ramp >= 1
        plateau = (min(ramp if usable else 0, decay_from), _plateau_window(steps))
    base_lr = 1e-2 if lr is None else lr
    optim = _resolve_optim(lr, optim)
    svi = SVI(model, guide, optim, loss)
    history = History(lr_decay_start=None if plateau else decay_from,
                      restarts_choice=restarts_choice)
    average = None if average_skip is None else ParamAverage(start=average_skip)
    start = 0

    def decide(step: int) -> None:
        """``lr_decay_from="plateau"``: start the decay at ``step`` once the ramp has ended
        and the loss stopped improving (:func:`loss_plateaued`), or at the latest start."""
        if plateau is None or history.lr_decay_start is not None:
            return
        earliest, window = plateau
        if step >= decay_from or (
            step - earliest >= 2 * window
            and loss_plateaued(history.loss[step - 2 * window:step], window)
        ):
            history.lr_decay_start = step

    def lr_at(step: int) -> float:
        if history.lr_decay_start is None:  # "plateau" before its decision
            return base_lr
        return _decayed_lr(base_lr, step, history.lr_decay_start, steps)

    if checkpoint is not None and os.path.exists(checkpoint):
        state = load_checkpoint(checkpoint)
        if int(state["step"]) > steps:
            raise ValueError(
                f"checkpoint {os.fspath(checkpoint)!r} is at step {int(state['step'])}, beyond "
                f"steps={steps}; pass steps >= {int(state['step'])} to resume it, or delete "
                "the file (or pass another checkpoint path) to start over"
            )
        with torch.no_grad(), pyro.poutine.block(), quiet_plate_guess():
            # Build every parameter (guide and model) before loading values into them.
            guide_trace = pyro.poutine.trace(guide).get_trace(*args, **kwargs)
            pyro.poutine.replay(model, trace=guide_trace)(*args, **kwargs)
            if getattr(loss, "max_plate_nesting", None) == math.inf:
                # The uninterrupted run guessed this at step 0, before the RNG state we restore.
                guess_plate_nesting(loss, model, guide, args, kwargs)
        restore_params(state["params"], strict=True)
        history = History.from_state_dict(state["history"])
        start = int(state["step"])
        if plateau is None:  # a checkpoint written before History.lr_decay_start existed
            history.lr_decay_start = decay_from
        if decay_from is not None:  # the saved lr is the previous step's
            decide(start)
            _set_lr(optim, lr_at(start), state["optim"])
        optim.set_state(state["optim"])
        if schedule is not None and state.get("schedule") is not None:
            schedule.load_state_dict(state["schedule"])
        if average is not None:
            _resume_average(average, state.get("average"), start, checkpoint)
        set_rng_state(state["rng"])
    parallel = distributed.setup()
    if parallel:  # under torchrun: DDP averages the gradients of every rank's share
        svi = _parallel_svi(model, guide, optim, loss, args, kwargs)

    def save(step: int) -> None:
        if not distributed.is_main():  # rank 0 writes the checkpoint
            return
        state = {
            "step": step,
            "params": snapshot_params(),  # the live parameters, never the average
            "optim": optim.get_state(),
            "schedule": schedule.state_dict() if schedule is not None else None,
            "history": history.state_dict(),
            "rng": get_rng_state(),
        }
        if average is not None:
            state["average"] = average.state_dict()
        atomic_save(state, checkpoint)

    bar = progress_bar(progress and distributed.is_main(), steps, start)
    began = time.perf_counter() - history.seconds
    snapshot = snapshot_params()
    first = None  # the parameters after the first step of a fresh run: the check's start
    try:
        for step in range(start, steps):
            if decay_from is not None:
                decide(step)
                _set_lr(optim, lr_at(step))
            with quiet_plate_guess():
                value = svi.step(*args, **kwargs)
            if parallel:
                value = distributed.mean(value)  # the loss of the global batch
            # A finite loss can still come with NaN/inf gradients, which the optimizer writes
            # into the parameters: check both, so the next step does not fail obscurely.
            bad = "loss" if not math.isfinite(value) else _non_finite_params()
            if bad:
                restore_params(snapshot)
                what = f"loss is {value}" if bad == "loss" else f"parameters {bad} became NaN/inf"
                raise NonFiniteLossError(
                    f"{what} at step {step}; parameters restored to their values "
                    "before that step. Lower the learning rate, check the model for invalid "
                    "values, or start the schedule with a smaller lam."
                )
            snapshot = snapshot_params()
            if step == 0:
                first = snapshot
            record = _record(loss, value)
            if parallel:
                record["loss"] = value
            history.append(record)
            if average is not None:
                average.update()
            history.seconds = time.perf_counter() - began
            bar.update(1)
            if progress:
                bar.set_postfix(_postfix(record, value), refresh=False)
            if checkpoint is not None and ((step + 1) % checkpoint_every == 0):
                save(step + 1)
            if callback is not None and callback(step, record):
                break
    finally:
        bar.close()
    if checkpoint is not None:
        save(history.steps)
    if parallel:
        distributed.barrier()  # the final checkpoint exists for every rank on return
    if average is not None:  # after the last checkpoint, which keeps the live parameters
        _swap_in_average(average, history)
    if check:
        from pyro_kr.diagnostics.stall import warn_if_unhealthy  # lazy: ArviZ-backed module

        warn_if_unhealthy(model, guide, args, kwargs, start=first)
    return history
