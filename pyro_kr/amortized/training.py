"""``fit_amortized``: train an :class:`AmortizedKR` by reverse or forward KL.

Both modes run through :func:`pyro_kr.fit` (progress bar, NaN handling, exact
checkpoint/resume), each as an ``SVI`` step on a small model/guide pair:

* ``mode="reverse"``: the amortized ELBO ``E_{y ~ p(y)} E_{q(u|y)}[log p(u, y) - log q(u|y)]``
  plus the ``c_eps`` transport cost with annealing (:class:`~pyro_kr.TransportELBO`). The pair's
  guide draws a fresh batch of ``y`` from the prior predictive every step and passes it to the
  model as a ``Delta`` site, so the simulation budget is unbounded; needs the likelihood.
* ``mode="forward"``: maximum likelihood of ``num_simulations`` simulated pairs ``(u, y)``
  under ``q(u | y)`` (through the inverse map), with a validation split and early stopping;
  needs only the simulator.
* ``mode="hybrid"``: ``"forward"`` first (sample-efficient, mass-covering), then
  ``reverse_steps`` steps of ``"reverse"`` from there with a small learning rate and a transport
  cost annealed from ``lam = 100``: the likelihood refines what the simulations started.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.optim import PyroOptim

from pyro_kr import distributed
from pyro_kr._validation import check_dim
from pyro_kr.amortized.anchor import ForwardAnchoredLoss
from pyro_kr.amortized.guide import AmortizedKR
from pyro_kr.amortized.iw_elbo import ImportanceWeightedELBO, ReweightedWakeLoss
from pyro_kr.amortized.warmup import SimulatedForwardLoss
from pyro_kr.averaging import ParamAverage, average_start
from pyro_kr.checkpoint import load_checkpoint, restore_params, snapshot_params
from pyro_kr.fit import History, fit
from pyro_kr.objective import Annealing, TransportELBO
from pyro_kr.simulation.bank import SimulationBank
from pyro_kr.simulation.stream import ShardStream, StreamingForwardLoss
from pyro_kr.traces import guide_plates, simulate_pairs

__all__ = ["AmortizedHistory", "fit_amortized"]

_BATCH_PLATE = "_pyro_kr_amortized_batch"
_MODES = ("reverse", "forward", "hybrid")
_OBJECTIVES = ("elbo", "iwae", "rws")
_REVERSE_STEPS = 1000  # default ``steps`` of mode="reverse" (and the hybrid's reverse phase)
_FORWARD_LR = 2e-3  # default Adam learning rate of the forward phase
_MAX_EPOCHS = 500  # default cap of the forward phase, in passes over the training split
_VAL_SMOOTHING = 0.3  # weight of the newest check in the smoothed validation loss
_MIN_PATIENCE_STEPS = 400  # default floor of the forward patience, in optimizer steps
_STOP_AFTER_CUTS = 3  # "auto": stop after this many lr cuts without a new best check
_WARMUP_BATCH = 256  # default batch of reverse mode's forward warm-up (as measured)


@dataclass
class AmortizedHistory(History):
    """:class:`~pyro_kr.History` plus the validation record of ``mode="forward"``.

    ``loss`` is the per-step training loss: for ``"reverse"`` the negative amortized ELBO plus
    ``cost / lam`` summed over the batch, for ``"forward"`` the mean negative log density of
    the batch. ``val_step``/``val_loss`` hold the validation checks (forward mode), ``best_step``
    the step whose parameters were kept, ``stopped_early`` whether patience ran out.
    ``average_starts`` and ``averaged_steps`` describe ``average_from``'s tail averages, one
    entry per averaged phase in order (warm-up/forward phase, then refinement): the steps left
    out before each average and the iterates averaged (empty: no averaging); for an averaged
    forward phase ``average_val_loss`` is the validation loss of the average swapped in.
    ``lr_cuts`` holds the steps at which the forward phase cut its learning rate on a plateau,
    ``patience_checks`` the patience it used, in checks (``patience`` raised to cover
    ``min_patience_steps``), ``stop_after_cuts`` the cut-count stop it used (``None``: none).
    ``simulations`` counts the prior-predictive draws ``(u, y)`` used for training and
    ``model_evaluations`` the evaluations of the model's log density ``log p(u, y)`` (one per
    dataset and particle per reverse step; none in forward mode or a warm-up). For
    ``"hybrid"``, ``forward_steps`` is the length of the forward phase, for ``"reverse"`` with
    ``warmup_steps`` that of the warm-up (``loss`` holds both phases).
    """

    mode: str = "reverse"
    val_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_step: int | None = None
    stopped_early: bool = False
    simulations: int = 0
    model_evaluations: int = 0
    forward_steps: int | None = None
    lr_cuts: list[int] = field(default_factory=list)
    patience_checks: int | None = None
    stop_after_cuts: int | None = None
    average_val_loss: float | None = None  # average_starts / averaged_steps: History's


class _ReversePair:
    """Model/guide pair whose ELBO is the amortized ELBO over a fresh batch of ``y``."""

    def __init__(self, model: Callable, guide: AmortizedKR, batch_size: int) -> None:
        self.user_model, self.amortized, self.batch_size = model, guide, batch_size
        self._free = poutine.uncondition(model)

    def _plate(self):
        return pyro.plate(_BATCH_PLATE, self.batch_size, dim=-self.amortized.plate_depth - 1)

    def guide(self, *args, **kwargs) -> None:
        g, b = self.amortized, self.batch_size
        latent = {n: g.prototype_trace.nodes[n]["value"].shape for n in g.order}
        sims = simulate_pairs(  # the latents come free with y: the forward anchor uses them
            self.user_model, args, kwargs, {**latent, **g.layout.shapes}, b,
            depth=g.plate_depth,
        )
        self.last_pairs = sims
        plates = guide_plates(g, *args, **kwargs)
        with self._plate():
            g(*args, **{**kwargs, **sims})
            for name in g.observed:
                shape = tuple(g.layout.shapes[name])
                event_dim = g.layout.event_dims[name]
                pad = (1,) * (g.plate_depth - (len(shape) - event_dim))
                value = sims[name].reshape((b,) + pad + shape)
                frames = g.layout.frames[name]
                with _EnterPlates(plates, frames):
                    pyro.sample(name, dist.Delta(value, event_dim=event_dim))

    def model(self, *args, **kwargs) -> None:
        with self._plate():
            self._free(*args, **kwargs)


class _EnterPlates:
    """Enter the guide's copies of the plates in ``frames`` (as ``AutoContinuous.forward``)."""

    def __init__(self, plates: dict, frames) -> None:
        self._plates = [plates[f.name] for f in frames if f.name in plates]

    def __enter__(self):
        for p in self._plates:
            p.__enter__()

    def __exit__(self, *exc):
        for p in reversed(self._plates):
            p.__exit__(*exc)


class _ForwardLoss:
    """``-mean log q(u_i | y_i)`` over a random minibatch of the training simulations."""

    def __init__(self, guide: AmortizedKR, latent, data, batch_size: int) -> None:
        self.guide, self.latent, self.data, self.batch_size = guide, latent, data, batch_size
        self.last: dict[str, float] = {}

    def nll(self, index: torch.Tensor, latent=None, data=None) -> torch.Tensor:
        latent = self.latent if latent is None else latent
        data = self.data if data is None else data
        y = {k: v[index] for k, v in data.items()}
        return -self.guide.log_prob(latent[index], y).mean()

    def __call__(self, model, guide, *args, **kwargs) -> torch.Tensor:
        index = torch.randint(len(self.latent), (self.batch_size,), device=self.latent.device)
        index = distributed.shard(index)  # under torchrun: this rank's share, same stream
        loss = self.nll(index)
        value = float(loss.detach())
        self.last = {"loss": value, "elbo": math.nan}
        return loss


def _noop(*args, **kwargs) -> None:
    return None


def _resolve_schedule(schedule, steps: int, mode: str, refine: bool = False):
    if mode == "forward":
        if schedule not in (None, "default"):
            raise ValueError(
                "mode='forward' is maximum likelihood and takes no schedule; got "
                f"{schedule!r}"
            )
        return None
    # beta=1.0: the amortized objectives do not temper the likelihood (the iwae / rws ones
    # refuse a beta ramp), so the default schedule is Annealing.over's without it.
    if schedule == "default" and (mode == "hybrid" or refine):  # refine: the cost starts small
        return Annealing.over(steps, eps=(1e-2, 1e-3), lam=(1e2, 1e4), beta=1.0)
    if schedule == "default":
        return Annealing.over(steps, beta=1.0)
    if schedule is not None and not isinstance(schedule, Annealing):
        raise TypeError(
            f"schedule must be a pyro_kr.Annealing, 'default' or None, got {schedule!r}"
        )
    return schedule


def fit_amortized(
    model: Callable,
    guide: AmortizedKR,
    *args,
    mode: str,
    steps: int | None = None,
    batch_size: int = 128,
    num_simulations: int | None = None,
    simulations: dict[str, torch.Tensor] | None = None,
    schedule: Annealing | str | None = "default",
    lr: float | None = None,
    optim: PyroOptim | None = None,
    validation_fraction: float = 0.1,
    validate_every: int | None = None,
    patience: int = 20,
    min_patience_steps: int = _MIN_PATIENCE_STEPS,
    plateau_factor: float | None = 0.5,
    stop_after_cuts: int | str | None = "auto",
    ema_decay: float | None = None,
    weight_decay: float = 0.0,
    seed: int = 0,
    simulation_seed: int | None = None,
    objective: str = "elbo",
    num_particles: int | None = None,
    reverse_steps: int | None = None,
    reverse_lr: float | None = None,
    reverse_optim: PyroOptim | None = None,
    reverse_batch_size: int | None = None,
    forward_weight: float = 0.0,
    warmup_steps: int = 0,
    warmup_batch_size: int | None = None,
    warmup_lr: float | None = None,
    warmup_optim: PyroOptim | None = None,
    average_from: float | int | None = None,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    callback: Callable[[int, dict[str, float]], bool | None] | None = None,
    **kwargs,
) -> AmortizedHistory:
    """Train an :class:`AmortizedKR` so that ``guide.posterior(y)`` approximates ``p(u | y)``.

    Args:
        model: the Pyro model; ``*args, **kwargs`` are its arguments other than the data.
        guide: the :class:`AmortizedKR` to train.
        mode: ``"reverse"`` (amortized ELBO + transport cost, fresh simulations every step;
            needs the likelihood), ``"forward"`` (maximum likelihood on ``num_simulations``
            simulated pairs; needs only the simulator) or ``"hybrid"`` (forward, then
            ``reverse_steps`` reverse steps from the forward solution).
        steps: optimizer steps (a resumed run continues up to this number). Default: 1,000 for
            ``"reverse"``; for the forward phase a cap of 500 epochs (passes over the training
            split), which early stopping normally ends long before.
        batch_size: observations per step (reverse) or simulated pairs per step (forward).
        num_simulations: simulation budget of ``mode="forward"``/``"hybrid"`` (required
            unless ``simulations`` is given).
        simulations: a bank of simulations to train on instead of simulating: dict site name
            -> ``(n, *site_shape)`` constrained values of every latent and observed site (what
            :func:`~pyro_kr.traces.simulate_pairs` returns), e.g. to give several
            methods the same simulations; ``num_simulations`` is then ``n``. Or a
            :class:`~pyro_kr.SimulationBank` from :func:`pyro_kr.simulate`: one written with
            ``path=`` is streamed shard by shard (it may exceed memory), with a seeded
            validation share of every shard.
        schedule: reverse mode's :class:`~pyro_kr.Annealing`; ``"default"`` is
            ``Annealing.over(steps, beta=1.0)`` (ramped over the library's default share of
            the steps, ``RAMP_FRACTION`` = 70 %, without likelihood tempering; Adam's lr
            stays constant: ``fit``'s decay after the ramp is off), ``None`` is the plain
            amortized ELBO.
        lr, optim: Adam learning rate or an optimizer. Reverse default: 1e-2 (Adam, as in
            :func:`pyro_kr.fit`); forward-phase default: 2e-3 (``ClippedAdam``, gradient norm
            clipped at 10), cut on validation plateaus (``plateau_factor``).
        validation_fraction: share of the forward-mode simulations held out for validation.
        validate_every: forward mode evaluates the validation loss (the whole validation
            split) every this many steps. Default: once per epoch of the training split, and
            after at least 4 training pairs per validation pair (``max(epoch, 4 n_val / batch)``
            steps), so that checks cost at most about a quarter of the training.
        patience: forward mode stops after this many checks without improvement of the
            smoothed validation loss (an exponential moving average with weight 0.3 on the
            newest check) and keeps the parameters of the best single check; raised to
            cover ``min_patience_steps``.
        min_patience_steps: floor of the patience in optimizer steps: the forward phase
            waits ``max(patience, ceil(min_patience_steps / validate_every))`` checks
            (``history.patience_checks``). With the default checks once per epoch, a small
            bank checks every few steps (every 4 steps for 900 training pairs at batch 256),
            and 20 checks would stop it after 80 steps without improvement; with 10,000 or
            more pairs 20 checks already cover 400 steps and the floor changes nothing.
            ``0`` disables the floor (patience counted in checks only).
        plateau_factor: forward mode multiplies the learning rate (of any optimizer) by this
            after ``max(1, p // 4)`` checks without improvement of the smoothed validation
            loss, ``p`` the patience in checks after ``min_patience_steps``, and again after
            as many more (``history.lr_cuts``); ``None`` keeps the optimizer's own schedule.
        stop_after_cuts: forward phase: also stop once the learning rate has been cut this
            many times (``k``) since the best check, whose parameters are kept; the steps
            before the stop are unchanged, so the kept parameters change only if a later
            check would have beaten the best after ``k`` or more halvings. ``"auto"``
            (default): ``3`` with the default optimizer and learning rate (``lr=None``,
            ``optim=None``), where this was measured (Lotka-Volterra, 24 runs from 1,000 to
            30,000 simulations: a new best came at most 2 cuts after the one before, so the
            same best check was kept in all of them, 3-11 % fewer steps), off otherwise: with
            a learning rate far above the default the cuts are what lets the run progress
            (a linear-Gaussian bank at ``lr=0.05``, 25x the default, found a new best 3 cuts
            after the one before: stopped there, it kept validation NLL 1.82 instead of 1.22).
            ``None``: only ``patience`` stops (the rule before this option); an ``int``
            forces it. It never fires with ``plateau_factor=None``.
        ema_decay: forward phase: keep an exponential moving average of the parameters with
            this decay per step (e.g. 0.999; ``None``: none). The validation checks score the
            averaged parameters, and the best averaged parameters are kept: still one map,
            less noisy than the last step's. A resumed run restarts the average from the
            checkpoint's parameters.
        weight_decay: forward phase, default optimizer only: L2 penalty ``weight_decay * p``
            added to every parameter's gradient (``ClippedAdam``'s ``weight_decay``).
        seed: seed of the forward-mode simulations and split (so a resumed run sees
            the same data).
        simulation_seed: deprecated name of ``seed`` (a ``DeprecationWarning``; removed
            in the next release).
        objective: reverse (and hybrid) objective: ``"elbo"`` (amortized ELBO), ``"iwae"``
            (the importance-weighted bound per dataset, :class:`ImportanceWeightedELBO`: less
            mode-seeking, so less overconfident where the network misplaces ``q``) or
            ``"rws"`` (the wake-phase update of reweighted wake-sleep,
            :class:`~pyro_kr.amortized.ReweightedWakeLoss`: self-normalized importance-weighted
            forward KL per dataset, mass-covering; start it from a wide ``q``).
        num_particles: draws of ``u`` per dataset and step (default 1 for ``"elbo"``, 8 for
            ``"iwae"`` and ``"rws"``); the model's log density is evaluated
            ``batch_size * num_particles`` times per reverse step.
        reverse_steps: ``mode="hybrid"``: reverse steps after the ``steps`` forward steps
            (default ``steps // 2``); ``schedule`` then applies to this phase (``"default"``:
            ``eps`` 1e-2 -> 1e-3 and ``lam`` 1e2 -> 1e4 over 70 % of it, so the transport
            cost only regularizes the refinement).
        reverse_lr, reverse_optim: initial learning rate (default: a tenth of ``lr`` when it
            is given, else 1e-3; ``ClippedAdam`` decaying it 10x over the phase) or
            optimizer of the hybrid reverse phase.
        reverse_batch_size: ``mode="hybrid"``: datasets per reverse step (default
            ``batch_size``, the forward phase's pairs per step); each step evaluates the model
            ``reverse_batch_size * num_particles`` times. E.g. ``objective="rws"``: the forward
            phase at ``batch_size=256``, the refinement at ``reverse_batch_size=32`` with 8
            particles (docs/amortized.md, hybrid).
        forward_weight: reverse (and hybrid's reverse phase): weight ``w`` of a mass-covering
            anchor, the forward NLL ``-log q(u* | y)`` of the step's own simulated pairs added
            to the reverse objective (:class:`~pyro_kr.amortized.ForwardAnchoredLoss`; no
            extra simulation or model evaluation). ``0`` (default): reverse KL alone, which
            turns every error of the amortized network into overconfidence; ``w > 0`` widens
            ``q`` where the network misplaces it (docs/amortized.md, calibration).
        warmup_steps: ``mode="reverse"`` only: before the ``steps`` reverse steps, this many
            steps of forward NLL ``-log q(u* | y)`` on fresh prior-predictive pairs
            (:class:`~pyro_kr.amortized.SimulatedForwardLoss`: new simulations every step, no
            bank, no model evaluation). ``0`` (default): none. ``history.forward_steps`` is the
            warm-up's length and ``loss`` holds both phases. The reverse phase after it is a
            refinement, as ``"hybrid"``'s: ``schedule="default"`` anneals ``eps`` 1e-2 -> 1e-3
            and ``lam`` 1e2 -> 1e4, and without ``optim`` the learning rate (``lr``, default
            1e-3) decays 10x over the ``steps`` (``ClippedAdam``); its callback steps continue
            the warm-up's count.
            Lotka-Volterra: 13,000 warm-up steps then 1,000 of ``objective="rws"``,
            ``forward_weight=1`` (docs/amortized.md, "Reverse mode with a warm-up").
        warmup_batch_size: pairs per warm-up step (default 256).
        warmup_lr: initial learning rate of the warm-up (default 2e-3; ``ClippedAdam``,
            gradient norm clipped at 10, decaying it 10x over the warm-up).
        warmup_optim: the warm-up's optimizer instead (a ``pyro.optim`` optimizer, e.g.
            ``pyro.optim.ClippedAdam({"lr": 2e-3, "lrd": 0.01 ** (1 / warmup_steps)})`` for a
            100x decay); not with ``warmup_lr``.
        average_from: opt-in iterate averaging (Polyak-Ruppert / SWA,
            :class:`pyro_kr.averaging.ParamAverage`): the parameters after the last steps of a
            phase are averaged (uniformly, in the unconstrained space the param store keeps)
            and the average is swapped in at the phase's end. ``None`` (default): off, the
            code path of before. A float in ``(0, 1)``: the fraction of a phase's steps
            *before* its average (``0.75``: the last quarter); an int ``k``: the iterates after
            steps ``k + 1, ...`` (single-phase runs only). Two-phase runs (``warmup_steps`` >
            0, ``"hybrid"``) take a float, applied to each phase separately: the warm-up (or
            forward phase) is averaged over its own tail and the average is where the
            refinement starts; the refinement is averaged over its own tail. The forward
            phase needs an explicit ``steps`` (its length is otherwise set by early stopping),
            keeps the average instead of the best check (``history.average_val_loss`` is its
            validation loss), stays stopped by its patience (a warning if it stops before the
            average starts: the best check is kept) and does not combine with ``ema_decay``.
            Not with ``checkpoint=`` (the average is not checkpointed). The callback sees the
            live parameters. Recorded in ``history.average_starts`` / ``averaged_steps``.
        progress, checkpoint, checkpoint_every, callback: as in :func:`pyro_kr.fit`.
            Unlike ``fit``, no end-of-training check runs: ``fit``'s check scores one
            posterior, and the reverse objective's model is a fresh batch of simulated
            datasets at every call, whose summed log weights say nothing about any one
            posterior. Check the calibration over the prior predictive instead
            (docs/amortized.md, calibration).

    Returns:
        An :class:`AmortizedHistory`.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (parameters restored, as in ``fit``).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(y=None):
        ...     z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        ...     return pyro.sample("y", dist.Normal(z, 0.5).to_event(1), obs=y)
        >>> pyro.clear_param_store()  # parameters live in the global param store
        >>> guide = AmortizedKR(model, observed="y", map="affine")
        >>> h = fit_amortized(model, guide, mode="reverse", steps=5, progress=False)
        >>> h.steps
        5
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if not isinstance(guide, AmortizedKR):
        raise TypeError(f"guide must be a pyro_kr.AmortizedKR, got {type(guide).__name__}")
    check_dim("batch_size", batch_size)
    if objective not in _OBJECTIVES:
        raise ValueError(f"objective must be one of {_OBJECTIVES}, got {objective!r}")
    if num_particles is None:
        num_particles = 8 if objective in ("iwae", "rws") else 1
    check_dim("num_particles", num_particles)
    if objective == "rws" and num_particles < 2:
        raise ValueError("objective='rws' weights several draws per dataset: num_particles "
                         f"must be >= 2, got {num_particles}")
    if not (isinstance(forward_weight, int | float) and forward_weight >= 0):
        raise ValueError(f"forward_weight must be a number >= 0, got {forward_weight!r}")
    if mode == "forward" and forward_weight:
        raise ValueError("forward_weight anchors the reverse objective; mode='forward' is "
                         "the forward objective already: leave forward_weight at 0")
    if mode != "hybrid" and (reverse_steps, reverse_lr, reverse_optim,
                             reverse_batch_size) != (None, None, None, None):
        raise ValueError(
            f"reverse_steps, reverse_lr, reverse_optim and reverse_batch_size belong to "
            f"mode='hybrid', got mode={mode!r}; use steps, lr, optim and batch_size"
        )
    _check_warmup(mode, warmup_steps, warmup_batch_size, warmup_lr, warmup_optim, checkpoint)
    if mode == "hybrid":
        half = (steps if steps is not None else _REVERSE_STEPS) // 2
        reverse_steps = max(half, 1) if reverse_steps is None else reverse_steps
        check_dim("reverse_steps", reverse_steps)
        reverse_batch_size = batch_size if reverse_batch_size is None else reverse_batch_size
        check_dim("reverse_batch_size", reverse_batch_size)
        if checkpoint is not None:
            raise ValueError(
                "mode='hybrid' does not checkpoint its two phases; run mode='forward' and then "
                "mode='reverse' on the same guide, each with its own checkpoint"
            )
    if simulation_seed is not None:
        warnings.warn(
            "fit_amortized(simulation_seed=...) is deprecated: pass seed=... (the same name as "
            "in COTFlowMatching.fit); simulation_seed will be removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        seed = simulation_seed
    if mode == "reverse" and steps is None:
        steps = _REVERSE_STEPS
    if steps is not None:
        check_dim("steps", steps)
    if (isinstance(min_patience_steps, bool) or not isinstance(min_patience_steps, int)
            or min_patience_steps < 0):
        raise ValueError(f"min_patience_steps must be an int >= 0 (optimizer steps; 0: no "
                         f"floor on the patience), got {min_patience_steps!r}")
    if plateau_factor is not None and not 0 < plateau_factor < 1:
        raise ValueError(f"plateau_factor must lie in (0, 1) or be None, got {plateau_factor}")
    if stop_after_cuts not in (None, "auto") and (isinstance(stop_after_cuts, bool)
                                                  or not isinstance(stop_after_cuts, int)
                                                  or stop_after_cuts < 1):
        raise ValueError(f"stop_after_cuts must be an int >= 1 (learning-rate cuts since the "
                         f"best check), 'auto' or None (patience only), got {stop_after_cuts!r}")
    if ema_decay is not None and (isinstance(ema_decay, bool)
                                  or not isinstance(ema_decay, int | float)
                                  or not 0 < ema_decay < 1):
        raise ValueError(f"ema_decay must be a float in (0, 1), e.g. 0.999, or None; got "
                         f"{ema_decay!r}")
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, int | float) or not (
            weight_decay >= 0):
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    if weight_decay and optim is not None:
        raise ValueError("weight_decay configures the default optimizer of the forward phase; "
                         "with optim=..., set the weight decay in that optimizer instead")
    if mode == "reverse" and (ema_decay is not None or weight_decay):
        raise ValueError("ema_decay and weight_decay belong to the forward phase "
                         "(mode='forward' or 'hybrid'); mode='reverse' takes optim=...")
    starts = _average_plan(average_from, mode, steps, warmup_steps, reverse_steps,
                           checkpoint, ema_decay)
    schedule = _resolve_schedule(schedule, reverse_steps if mode == "hybrid" else steps, mode,
                                 refine=bool(warmup_steps))
    guide.setup(*args, **kwargs)
    common = dict(  # lr_decay=False: the amortized phases keep their own lr rules;
        # check=False: fit's check scores one posterior, not a batch of simulated datasets
        steps=steps, lr=lr, optim=optim, progress=progress, checkpoint=checkpoint,
        checkpoint_every=checkpoint_every, lr_decay=False, check=False,
    )
    if mode == "reverse" and warmup_steps:
        if optim is None:  # a refinement, as hybrid's reverse phase: 10x decay over the steps
            common.update(lr=None, optim=pyro.optim.ClippedAdam(
                {"lr": 1e-3 if lr is None else lr, "lrd": 0.1 ** (1 / steps)}))
        return _fit_warmed_reverse(
            model, guide, args, kwargs, batch_size, schedule, callback, common, objective,
            num_particles, forward_weight, warmup_steps,
            _WARMUP_BATCH if warmup_batch_size is None else warmup_batch_size,
            warmup_optim if warmup_optim is not None else pyro.optim.ClippedAdam(
                {"lr": _FORWARD_LR if warmup_lr is None else warmup_lr,
                 "lrd": 0.1 ** (1 / warmup_steps)}),
            starts,
        )
    if mode == "reverse":
        return _fit_reverse(model, guide, args, kwargs, batch_size, schedule, callback, common,
                            objective, num_particles, forward_weight,
                            average_from=starts.get("reverse"))
    forward = _fit_forward(
        model, guide, args, kwargs, batch_size=batch_size, num_simulations=num_simulations,
        simulations=simulations, validation_fraction=validation_fraction,
        validate_every=validate_every, patience=patience,
        min_patience_steps=min_patience_steps, plateau_factor=plateau_factor,
        stop_after_cuts=stop_after_cuts, ema_decay=ema_decay, weight_decay=weight_decay,
        seed=seed, callback=callback, common=common, average_from=starts.get("forward"),
    )
    if mode == "forward":
        return forward
    if reverse_optim is None:  # a refinement: the learning rate decays 10x over the phase
        reverse_lr = 0.1 * (lr if lr is not None else 1e-2) if reverse_lr is None else reverse_lr
        reverse_optim = pyro.optim.ClippedAdam(
            {"lr": reverse_lr, "lrd": 0.1 ** (1 / reverse_steps)}
        )
    common.update(steps=reverse_steps, lr=None, optim=reverse_optim)
    offset = forward.steps

    def shifted(step: int, record: dict[str, float]) -> bool | None:
        return callback(offset + step, record) if callback is not None else None

    reverse = _fit_reverse(model, guide, args, kwargs, reverse_batch_size, schedule, shifted,
                           common, objective, num_particles, forward_weight,
                           average_from=starts.get("reverse"))
    out = AmortizedHistory(
        loss=forward.loss + reverse.loss, elbo=forward.elbo + reverse.elbo,
        eps=forward.eps + reverse.eps, lam=forward.lam + reverse.lam,
        seconds=forward.seconds + reverse.seconds, mode="hybrid",
    )
    out.average_starts = forward.average_starts + reverse.average_starts
    out.averaged_steps = forward.averaged_steps + reverse.averaged_steps
    out.average_val_loss = forward.average_val_loss
    out.val_step, out.val_loss = forward.val_step, forward.val_loss
    out.best_step, out.stopped_early = forward.best_step, forward.stopped_early
    out.simulations = forward.simulations + reverse.simulations
    out.model_evaluations = reverse.model_evaluations
    out.forward_steps, out.lr_cuts = forward.steps, forward.lr_cuts
    out.patience_checks = forward.patience_checks
    out.stop_after_cuts = forward.stop_after_cuts
    return out


def _average_plan(average_from, mode, steps, warmup_steps, reverse_steps, checkpoint,
                  ema_decay) -> dict[str, int]:
    """Steps left out before each phase's tail average (``{}``: no averaging)."""
    if average_from is None:
        return {}
    if checkpoint is not None:
        raise ValueError("average_from is not checkpointed (a resumed run would restart the "
                         "average): run it without checkpoint=..., or checkpoint without "
                         "average_from")
    two_phase = mode == "hybrid" or (mode == "reverse" and warmup_steps)
    if two_phase and not isinstance(average_from, float):
        raise ValueError(
            f"average_from={average_from!r}: a run with two phases (warmup_steps > 0 or "
            "mode='hybrid') averages each phase over the same share of its steps; pass a "
            "float in (0, 1), e.g. 0.5 for each phase's second half"
        )
    if mode in ("forward", "hybrid"):
        if ema_decay is not None:
            raise ValueError("average_from and ema_decay are two averages of the forward "
                             "phase: pass one of them")
        if steps is None:
            raise ValueError(
                "average_from needs the forward phase's length: pass steps=... (without it "
                "early stopping sets the length, and the tail's start is unknown)"
            )
    if mode == "forward":
        return {"forward": average_start(average_from, steps)}
    if mode == "hybrid":
        return {"forward": average_start(average_from, steps),
                "reverse": average_start(average_from, reverse_steps)}
    if warmup_steps:
        return {"warmup": average_start(average_from, warmup_steps),
                "reverse": average_start(average_from, steps)}
    return {"reverse": average_start(average_from, steps)}


def _check_warmup(mode, steps, batch_size, lr, optim, checkpoint) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"warmup_steps must be an int >= 0 (0: no warm-up), got {steps!r}")
    if steps and mode != "reverse":
        raise ValueError(f"warmup_steps belongs to mode='reverse' (got mode={mode!r}); "
                         "mode='hybrid' starts with its own forward phase")
    if not steps and (batch_size, lr, optim) != (None, None, None):
        raise ValueError("warmup_batch_size, warmup_lr and warmup_optim configure the "
                         "warm-up: pass warmup_steps > 0 too")
    if lr is not None and optim is not None:
        raise ValueError("pass warmup_lr or warmup_optim, not both (warmup_lr sets the "
                         "initial lr of the default ClippedAdam)")
    if optim is not None and not isinstance(optim, PyroOptim):
        raise TypeError(f"warmup_optim must be a pyro.optim optimizer such as "
                        f"pyro.optim.ClippedAdam({{'lr': 2e-3}}), got {type(optim).__name__}")
    if batch_size is not None and (isinstance(batch_size, bool)
                                   or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"warmup_batch_size must be an int >= 1, got {batch_size!r}")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, int | float)
                           or not lr > 0):
        raise ValueError(f"warmup_lr must be a number > 0, got {lr!r}")
    if steps and checkpoint is not None:
        raise ValueError("a warm-up does not checkpoint its two phases; run the warm-up "
                         "without checkpoint=..., or checkpoint a plain mode='reverse' run")


def _fit_warmed_reverse(model, guide, args, kwargs, batch_size, schedule, callback, common,
                        objective, num_particles, forward_weight, warmup_steps,
                        warmup_batch, optim, starts) -> AmortizedHistory:
    """Forward NLL on fresh pairs for ``warmup_steps``, then the reverse objective."""
    loss = SimulatedForwardLoss(model, guide, args, kwargs, warmup_batch)

    def register(*a, **k) -> None:
        guide.networks()  # point the networks at the param store's values

    stopped = []

    def first(step: int, record: dict[str, float]) -> bool:
        stopped.append(bool(callback(step, record)) if callback is not None else False)
        return stopped[-1]

    # fit swaps the warm-up's tail average (if any) in: the refinement starts from it
    warm = fit(_noop, register, loss=loss, callback=first, average_from=starts.get("warmup"),
               **{**common, "steps": warmup_steps, "lr": None, "optim": optim})
    if stopped and stopped[-1]:  # the callback stopped the warm-up: no reverse phase
        out = AmortizedHistory(**warm.state_dict(), mode="reverse")
        out.simulations, out.forward_steps = loss.simulations, warm.steps
        return out

    def shifted(step: int, record: dict[str, float]) -> bool | None:
        return callback(warmup_steps + step, record) if callback is not None else None

    reverse = _fit_reverse(model, guide, args, kwargs, batch_size, schedule, shifted, common,
                           objective, num_particles, forward_weight,
                           average_from=starts.get("reverse"))
    out = AmortizedHistory(
        loss=warm.loss + reverse.loss, elbo=warm.elbo + reverse.elbo,
        eps=warm.eps + reverse.eps, lam=warm.lam + reverse.lam,
        seconds=warm.seconds + reverse.seconds, mode="reverse",
    )
    out.average_starts = warm.average_starts + reverse.average_starts
    out.averaged_steps = warm.averaged_steps + reverse.averaged_steps
    out.simulations = loss.simulations + reverse.simulations
    out.model_evaluations = reverse.model_evaluations
    out.forward_steps = warm.steps
    return out


def _fit_reverse(model, guide, args, kwargs, batch_size, schedule, callback, common,
                 objective, num_particles, forward_weight=0.0,
                 average_from: int | None = None) -> AmortizedHistory:
    pair = _ReversePair(model, guide, batch_size)
    nesting = guide.plate_depth + 1
    if objective == "iwae":
        loss = ImportanceWeightedELBO(schedule, num_particles=num_particles,
                                      batch_dim=-nesting, max_plate_nesting=nesting)
    elif objective == "rws":
        loss = ReweightedWakeLoss(guide, lambda: pair.last_pairs, schedule,
                                  num_particles=num_particles, batch_dim=-nesting,
                                  max_plate_nesting=nesting)
    else:
        loss = TransportELBO(schedule, num_particles=num_particles, max_plate_nesting=nesting)
    if forward_weight:  # the sleep-phase anchor on the pairs the step simulated
        loss = ForwardAnchoredLoss(loss, guide, lambda: pair.last_pairs, forward_weight)
    history = fit(pair.model, pair.guide, *args, loss=loss, callback=callback,
                  average_from=average_from, **common, **kwargs)
    out = AmortizedHistory(**history.state_dict(), mode="reverse")
    out.simulations = history.steps * batch_size
    out.model_evaluations = out.simulations * num_particles
    return out


def _bank_size(guide: AmortizedKR, simulations, num_simulations) -> int:
    if not isinstance(simulations, dict):
        raise TypeError(f"simulations must be a dict name -> tensor, got {type(simulations)}")
    needed = [*guide.order, *guide.observed]
    missing = [n for n in needed if n not in simulations]
    if missing:
        raise ValueError(f"simulations lacks the sites {missing}; it needs {needed}")
    sizes = {n: len(simulations[n]) for n in needed}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"simulations must hold the same number of draws per site, got {sizes}")
    n = sizes[needed[0]]
    if num_simulations is not None and num_simulations != n:
        raise ValueError(f"num_simulations={num_simulations} but simulations holds {n} draws")
    return n


def _check_bank(guide: AmortizedKR, bank: SimulationBank, num_simulations) -> None:
    if num_simulations is not None and num_simulations != len(bank):
        raise ValueError(f"num_simulations={num_simulations} but the bank holds {len(bank)} "
                         "pairs: leave num_simulations out")
    expected = {n: guide.prototype_trace.nodes[n]["value"].shape for n in guide.order}
    expected |= {n: guide.layout.shapes[n] for n in guide.observed}
    have = {**bank.latent_shapes, **bank.observation_shapes}
    wrong = {n: (tuple(s), tuple(have[n]) if n in have else None)
             for n, s in expected.items() if have.get(n) != s}
    if wrong:
        raise ValueError(
            "the bank does not match the guide (site: (guide shape, bank shape)): "
            f"{wrong}; simulate it from the same model with observed={guide.observed}"
        )


def _streamed_loss(guide, bank, batch_size, validation_fraction, seed, checkpoint):
    """The forward loss over shards streamed from disk, resumed at the checkpoint's step."""
    stream = ShardStream(bank, batch_size=batch_size, validation_fraction=validation_fraction,
                         seed=seed)
    start = 0
    if checkpoint is not None and os.path.exists(checkpoint):
        start = int(load_checkpoint(checkpoint)["step"])
    loss = StreamingForwardLoss(guide, stream, start=start)
    val_latent, val_data = loss.validation()
    return loss, val_latent, val_data, guide.reference_like()


def _scale_lr(optim: PyroOptim, factor: float) -> None:
    """Multiply the learning rate of every parameter's optimizer by ``factor``."""
    for opt in optim.optim_objs.values():
        for group in opt.param_groups:
            group["lr"] *= factor


def _fit_forward(model, guide, args, kwargs, *, batch_size, num_simulations, simulations,
                 validation_fraction, validate_every, patience, min_patience_steps,
                 plateau_factor, stop_after_cuts, ema_decay, weight_decay, seed, callback,
                 common, average_from: int | None = None) -> AmortizedHistory:
    bank = simulations if isinstance(simulations, SimulationBank) else None
    if bank is not None:  # pyro_kr.simulate's bank: in memory, or shards streamed from disk
        _check_bank(guide, bank, num_simulations)
        num_simulations = len(bank)
        simulations = None if bank.path is not None else {**bank.latents, **bank.observations}
    if simulations is not None:
        num_simulations = _bank_size(guide, simulations, num_simulations)
    if num_simulations is None:
        raise ValueError("mode='forward' and 'hybrid' need num_simulations (the simulation "
                         "budget) or a bank of simulations")
    check_dim("num_simulations", num_simulations, minimum=2)
    if validate_every is not None:
        check_dim("validate_every", validate_every)
    check_dim("patience", patience)
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must lie in (0, 1), got {validation_fraction}")
    if bank is not None and bank.path is not None:
        loss, val_latent, val_data, ref = _streamed_loss(
            guide, bank, batch_size, validation_fraction, seed, common["checkpoint"]
        )
        n_val = len(val_latent)
    else:
        latent_shapes = {n: guide.prototype_trace.nodes[n]["value"].shape for n in guide.order}
        sims = simulations if simulations is not None else simulate_pairs(
            model, args, kwargs, {**latent_shapes, **guide.layout.shapes}, num_simulations,
            depth=guide.plate_depth, seed=seed,
        )
        ref = guide.reference_like()
        with torch.no_grad():
            latent = guide.pack({n: sims[n].to(ref) for n in guide.order}).detach()
        data = {n: sims[n].to(ref) for n in guide.observed}
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(num_simulations, generator=gen).to(ref.device)
        n_val = max(1, int(round(validation_fraction * num_simulations)))
        val, train = perm[:n_val], perm[n_val:]
        loss = _ForwardLoss(guide, latent[train], {k: v[train] for k, v in data.items()},
                            batch_size)
        val_latent, val_data = latent[val], {k: v[val] for k, v in data.items()}
    # Steps from the bank size: validate once per epoch of the training split, and after at
    # least 4 training pairs per validation pair (a check then costs at most about a quarter of
    # the training between checks); cap the phase at _MAX_EPOCHS epochs.
    epoch = math.ceil((num_simulations - n_val) / batch_size)
    if validate_every is None:
        validate_every = max(epoch, math.ceil(4 * n_val / batch_size))
    # the patience covers at least min_patience_steps optimizer steps (small banks check often)
    patience = max(patience, math.ceil(min_patience_steps / validate_every))
    common = dict(common)
    if stop_after_cuts == "auto":  # measured with the default optimizer and lr only
        default_optim = common["optim"] is None and common["lr"] is None
        stop_after_cuts = _STOP_AFTER_CUTS if default_optim else None
    if common["steps"] is None:
        common["steps"] = _MAX_EPOCHS * epoch
    if common["optim"] is None:  # Adam with gradient clipping; the plateau rule decays it
        lr = _FORWARD_LR if common["lr"] is None else common["lr"]
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        common.update(optim=pyro.optim.ClippedAdam({"lr": lr, "weight_decay": weight_decay}),
                      lr=None)
    optim = common["optim"]
    record = AmortizedHistory(mode="forward")
    state = {"best": math.inf, "best_params": None, "smooth": None, "best_smooth": math.inf,
             "bad": 0, "since_cut": 0, "cuts_since_best": 0}
    cut_after = max(1, patience // 4)
    # ema_decay's exponential moving average (from the first step, no bias correction)
    average = None if ema_decay is None else ParamAverage(decay=float(ema_decay))

    def validate(step: int) -> bool:
        live = None
        if average is not None:  # score (and keep) the averaged parameters
            live = snapshot_params()
            restore_params(average.averaged())
        with torch.no_grad():
            chunks = torch.arange(n_val, device=ref.device).split(4096)
            value = sum(float(loss.nll(c, val_latent, val_data)) * len(c) for c in chunks)
        value /= n_val
        record.val_step.append(step + 1)
        record.val_loss.append(value)
        if value < state["best"]:  # the parameters kept: the best check itself
            state.update(best=value, best_params=snapshot_params(), cuts_since_best=0)
            record.best_step = step + 1
        if live is not None:
            restore_params(live)
        # Patience and plateaus are judged on a smoothed validation loss: one lucky check
        # neither resets nor exhausts them.
        smooth = value if state["smooth"] is None else (
            _VAL_SMOOTHING * value + (1 - _VAL_SMOOTHING) * state["smooth"])
        state["smooth"] = smooth
        if smooth < state["best_smooth"]:
            state.update(best_smooth=smooth, bad=0, since_cut=0)
            return False
        state["bad"] += 1
        state["since_cut"] += 1
        if plateau_factor is not None and state["since_cut"] >= cut_after:
            _scale_lr(optim, plateau_factor)
            state["since_cut"] = 0
            state["cuts_since_best"] += 1
            record.lr_cuts.append(step + 1)
        if stop_after_cuts is not None and state["cuts_since_best"] >= stop_after_cuts:
            return True
        return state["bad"] >= patience

    def check(step: int, rec: dict[str, float]) -> bool:
        stop = bool(callback(step, rec)) if callback is not None else False
        if average is not None:
            average.update()
        if (step + 1) % validate_every == 0 and validate(step):
            record.stopped_early = True
            return True
        return stop

    def register(*a, **k) -> None:
        guide.networks()  # point the networks at the param store's values

    # with average_from, fit swaps the tail average in at the end (it warns if the run stopped
    # before the average started)
    history = fit(_noop, register, loss=loss, callback=check, average_from=average_from,
                  **common)
    if any(history.averaged_steps):  # the tail average replaces the best check
        with torch.no_grad():
            chunks = torch.arange(n_val, device=ref.device).split(4096)
            tail_val = sum(float(loss.nll(c, val_latent, val_data)) * len(c)
                           for c in chunks) / n_val
    else:
        if state["best_params"] is not None and (average is not None
                                                 or record.val_loss[-1] > state["best"]):
            restore_params(state["best_params"])
        tail_val = None
    out = AmortizedHistory(**history.state_dict(), mode="forward")
    out.average_val_loss = tail_val
    out.simulations = num_simulations
    out.val_step, out.val_loss = record.val_step, record.val_loss
    out.best_step, out.stopped_early = record.best_step, record.stopped_early
    out.lr_cuts = record.lr_cuts
    out.patience_checks = patience
    out.stop_after_cuts = stop_after_cuts
    return out
