"""Restarts chosen by ELBO: ``fit(..., restarts=K)`` (issue 18, several modes).

A fit that tempers the likelihood (``Annealing.over(steps)``'s default) can still lose a whole
pair of modes of a symmetric posterior: which modes it keeps is decided by the particles' noise
while ``beta`` rises, and nothing afterwards moves mass back. Such a fit ends with a clearly
lower ELBO (on ``symmetric_modes`` 0.44-0.76 nats over 10 seeds, where the estimate's
standard error is 0.04-0.08; docs/hard_posteriors.md), so ``K`` independent fits and keeping
the one with the best ELBO catch it, at ``K`` times the cost.

Every restart starts from the same initial parameters (the guide's start: for ``AutoKR``
``init_loc_fn``'s point and ``init_scale``, built once before the first restart from the
caller's random stream) with a fresh Adam and the loss's schedule rewound, and trains
``steps`` steps; the restarts differ in their random streams (the particles), which continue
one after the other from the caller's seed, so the whole call is reproducible. Each trained
guide is scored by a held-out ELBO estimate: ``num_draws`` guide draws with one fixed seed
(:data:`ELBO_SEED`, the same for every restart; drawn inside ``fork_rng``, so the training
streams are untouched), scored under the model as given (untempered). The best restart's
parameters are copied back into the param store (in place, exactly) and its schedule state
restored; the others are discarded.

``restarts="auto"`` (``fit``'s default since 2026-12-06, :func:`auto_restarts`): for a dense
monotone :class:`~pyro_kr.AutoKR` the posterior is first searched for several modes
(:meth:`pyro_kr.AutoKR.survey_modes`: L-BFGS from the initial point and four prior draws,
deterministic, the caller's random stream untouched); where two or more strict modes hold mass
``fit`` trains :data:`AUTO_RESTARTS` restarts, logged at WARNING with the modes found; otherwise
(one mode, no strict mode, another guide) it trains once, exactly as ``restarts=1`` would.

Shorter pilots are not offered: on ``symmetric_modes`` the ELBO at 25 % or 50 % of the steps
does not tell the fits apart (the pair is lost between 50 % and 100 %), see
docs/hard_posteriors.md.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import pyro
import torch

from pyro_kr._batching import quiet_plate_guess
from pyro_kr.checkpoint import restore_params, snapshot_params
from pyro_kr.diagnostics import draw_guide

__all__ = ["AUTO_RESTARTS", "ELBO_SEED", "auto_restarts", "heldout_elbo", "fit_restarts"]

logger = logging.getLogger(__name__)

ELBO_SEED = 20261205
"""Seed of the held-out draws that score every restart (the same draws' base noise for each)."""


AUTO_RESTARTS = 8
"""Restarts ``fit(..., restarts="auto")`` trains where the mode survey finds several modes (on
``symmetric_modes`` 8 restarts held every mode within 0.1 of its share on 10 of 10 seeds, 4 on
7 of 10; docs/hard_posteriors.md)."""


def auto_restarts(
    guide: Callable, args: tuple, kwargs: dict, *, optim=None, checkpoint=None,
) -> tuple[int, str]:
    """The number of runs ``fit(..., restarts="auto")`` trains, and why.

    ``AUTO_RESTARTS`` where ``guide`` is a dense monotone :class:`~pyro_kr.AutoKR` whose
    :meth:`~pyro_kr.AutoKR.survey_modes` finds two or more modes holding mass and ``fit`` can
    restart (its own Adam, no checkpoint, not under ``torchrun``); ``1`` otherwise. Where the
    survey finds several modes but the guide or the call cannot use restarts, the reason and
    the fix are logged at WARNING; the choice is logged at INFO (WARNING for restarts).

    Returns:
        ``(runs, reason)``; ``reason`` is recorded as ``History.restarts_choice``.
    """
    from pyro_kr import distributed  # lazy: keeps this module light for fit's import

    survey_of = getattr(guide, "survey_modes", None)
    if survey_of is None:
        reason = f"one run: {type(guide).__name__} is not an AutoKR (no mode survey)"
        logger.info("fit: restarts='auto': %s", reason)
        return 1, reason
    if checkpoint is not None:
        reason = "one run: checkpoint= given (a checkpoint resumes one run; no mode survey)"
        logger.info("fit: restarts='auto': %s", reason)
        return 1, reason
    if distributed.launched():
        reason = "one run: launched by torchrun (the ranks would have to agree; no mode survey)"
        logger.info("fit: restarts='auto': %s", reason)
        return 1, reason
    survey = survey_of(*args, **kwargs)
    if not survey.several:
        reason = f"one run: {survey.summary()}"
        logger.info("fit: restarts='auto': %s", reason)
        return 1, reason
    found = f"the posterior has several modes ({survey.summary()})"
    if getattr(guide, "map_kind", "monotone") != "monotone":
        reason = (f"one run: {found}, but map='affine' holds one mode; use map='monotone' "
                  "(fit then trains restarts) to hold them all")
    elif optim is not None:
        reason = (f"one run: {found}, but restarts need fit's own Adam; pass lr= instead of "
                  f"optim= to train {AUTO_RESTARTS} restarts, or restarts=1 to silence this")
    else:
        reason = (f"{AUTO_RESTARTS} restarts ({AUTO_RESTARTS}x the steps), keeping the best "
                  f"held-out ELBO: {found}; pass restarts=1 to train once")
        logger.warning("fit: restarts='auto': %s", reason)
        return AUTO_RESTARTS, reason
    logger.warning("fit: restarts='auto': %s", reason)
    return 1, reason


def heldout_elbo(
    guide: Callable, model: Callable, args: tuple = (), kwargs: dict | None = None, *,
    num_draws: int = 1000, seed: int = ELBO_SEED,
) -> tuple[float, float]:
    """ELBO estimate of ``guide`` against ``model`` and its standard error.

    The mean and standard error of ``log p(x, z) - log q(z)`` over ``num_draws`` draws
    ``z ~ q`` with ``seed`` (vectorized where the model allows, else a loop); the global RNG
    state is left as it was. A non-finite log weight makes the estimate ``-inf``.

    Returns:
        ``(elbo, se)`` as floats.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro.infer.autoguide import AutoNormal
        >>> def model():
        ...     pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> pyro.clear_param_store()
        >>> elbo, se = heldout_elbo(AutoNormal(model, init_scale=1.0), model, num_draws=100)
        >>> abs(elbo) < 1e-6 and se < 1e-6  # q = p: every log weight is 0
        True
    """
    if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 2:
        raise ValueError(
            f"num_draws must be an int >= 2 (for a standard error), got {num_draws!r}"
        )
    draws = draw_guide(guide, model, args, {} if kwargs is None else kwargs,
                       num_samples=num_draws, seed=seed)
    lw = draws.log_weight.detach().to(torch.float64)
    if not bool(torch.isfinite(lw).all()):
        return -math.inf, math.nan
    return float(lw.mean()), float(lw.std() / math.sqrt(lw.numel()))


def _build_params(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> None:
    """Create every parameter (guide and model) at its initial value, without training."""
    with torch.no_grad(), pyro.poutine.block(), quiet_plate_guess():
        guide_trace = pyro.poutine.trace(guide).get_trace(*args, **kwargs)
        pyro.poutine.replay(model, trace=guide_trace)(*args, **kwargs)


def fit_restarts(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, *,
    restarts: int, num_draws: int, loss, steps: int, lr: float | None,
    lr_decay: bool | None, progress: bool, callback: Callable | None, check: bool,
    lr_decay_from: float | str | None = None, average_from: float | int | None = None,
):
    """``restarts`` runs of :func:`pyro_kr.fit` (each a single run without the end check) from
    the same start; keep the one with the best :func:`heldout_elbo`. Called by ``fit`` with
    ``restarts > 1`` after it has validated the arguments; returns the chosen run's
    :class:`~pyro_kr.History` with ``restarts`` (one record per run) and ``chosen_restart``
    set, and ``seconds`` the training time of every run together.

    Raises:
        NonFiniteLossError: every restart hit a NaN/inf loss (the last one's error; a restart
            that fails while another succeeds is logged at WARNING and recorded).
    """
    from pyro_kr.fit import NonFiniteLossError, fit  # lazy: pyro_kr.fit calls this module

    schedule = getattr(loss, "schedule", None)
    schedule_start = schedule.state_dict() if schedule is not None else None
    _build_params(model, guide, args, kwargs)
    start = snapshot_params()
    records: list[dict] = []
    best = None  # (elbo, k, history, params, schedule state)
    error: NonFiniteLossError | None = None
    seconds = 0.0
    for k in range(restarts):
        restore_params(start)
        if schedule is not None:
            schedule.load_state_dict(schedule_start)
        began = time.perf_counter()
        try:
            history = fit(model, guide, *args, loss=loss, steps=steps, lr=lr,
                          lr_decay=lr_decay, lr_decay_from=lr_decay_from, progress=progress,
                          callback=callback, check=False, average_from=average_from,
                          restarts=1, **kwargs)
        except NonFiniteLossError as exc:
            spent = time.perf_counter() - began
            seconds += spent
            error = exc
            records.append({"restart": k, "elbo": -math.inf, "elbo_se": math.nan,
                            "steps": math.nan, "seconds": spent,
                            "error": str(exc)})
            logger.warning("fit: restart %d of %d failed and is left out: %s", k + 1,
                           restarts, exc)
            continue
        seconds += history.seconds
        elbo, se = heldout_elbo(guide, model, args, kwargs, num_draws=num_draws)
        records.append({"restart": k, "elbo": elbo, "elbo_se": se, "steps": history.steps,
                        "seconds": history.seconds})
        logger.info("fit: restart %d of %d: held-out ELBO %.6g +- %.2g (%d draws)", k + 1,
                    restarts, elbo, se, num_draws)
        if best is None or elbo > best[0]:
            best = (elbo, k, history, snapshot_params(),
                    schedule.state_dict() if schedule is not None else None)
    if best is None:
        raise NonFiniteLossError(
            f"every one of the {restarts} restarts stopped on a NaN/inf loss; the last: {error}"
        )
    elbo, chosen, history, params, schedule_state = best
    restore_params(params, strict=True)
    if schedule is not None:
        schedule.load_state_dict(schedule_state)
    history.restarts = records
    history.chosen_restart = chosen
    history.seconds = seconds
    others = ", ".join(f"{r['elbo']:.6g}" for r in records if r["restart"] != chosen)
    logger.info("fit: chose restart %d of %d by held-out ELBO %.6g (the others: %s)",
                chosen + 1, restarts, elbo, others)
    if check:
        from pyro_kr.diagnostics.stall import warn_if_unhealthy  # lazy: ArviZ-backed module

        warn_if_unhealthy(model, guide, args, kwargs, start=start)
    return history
