"""Registry of inference methods the benchmark compares.

Each method is a function ``fit(problem, y, *, steps, seed, num_draws, progress, particles)``
returning a :class:`MethodResult` (posterior draws as a dict of named arrays, wall time,
seconds per step after the first, the first step's time apart, loss trace, and the trained
guide for PSIS). Every SVI method trains through :func:`pyro_kr.fit` with Adam and the same
budget: ``steps`` steps of ``particles`` vectorized ELBO particles (default
:data:`PARTICLES`), so ours and Pyro's guides are timed through the same code.

Entries: Pyro's ``AutoNormal``, ``AutoMultivariateNormal``,
``AutoLowRankMultivariateNormal`` (its default rank), ``AutoIAFNormal``,
``AutoNormalizingFlow`` with ``spline_autoregressive`` (``Trace_ELBO``), ``nuts`` (time to a
fresh PyMC NUTS posterior) and, when :class:`pyro_kr.AutoKR` is available,
``autokr_monotone`` / ``autokr_affine`` (``AutoKR``'s defaults, ``order="auto"`` included;
annealed :class:`~pyro_kr.TransportELBO`) and
``autokr_monotone_elbo`` / ``autokr_affine_elbo`` (the same guides trained with the plain
ELBO) and ``autokr_monotone_laplace`` / ``autokr_affine_laplace`` (annealed, affine part
started at the Laplace approximation: ``AutoKR(init_scale="laplace", order="model")``) and
``autokr_monotone_ordered`` (annealed, ``AutoKR(order=problem.kr_order)``: the KR order the
problem's structure suggests; the model's order where the problem declares none).

Example:
    >>> from pyro_kr.bench import methods
    >>> "auto_normal" in methods.names()
    True
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import torch

from pyro_kr.objective.schedules import RAMP_FRACTION
from pyro_kr.traces import draws_plate, plate_depth, vectorize_or_loop

LR = 1e-2
"""Adam learning rate of every SVI method (except the ``*_laplace`` ones: ``LAPLACE_LR``)."""

PARTICLES = 8
"""ELBO particles per step of every SVI method, Pyro's guides and ``autokr_*`` alike."""


@dataclass
class MethodResult:
    """What a method returns: draws ``name -> (num_draws, *shape)`` and its cost.

    ``wall_time_s`` is the whole training time; ``seconds_per_step`` leaves out the first step,
    whose one-off set-up cost is ``first_step_s``. ``loss`` is the training objective per step,
    ``neg_elbo`` the -ELBO estimate per step (the same quantity for every SVI method; it differs
    from ``loss`` where the objective adds a transport term).
    """

    draws: dict[str, np.ndarray]
    wall_time_s: float
    seconds_per_step: float
    loss: list[float]
    guide: Any = None
    failed: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    first_step_s: float | None = None
    particles: int | None = None
    neg_elbo: list[float] = field(default_factory=list)


@contextlib.contextmanager
def float64() -> Iterator[None]:
    """Make float64 the default dtype inside the block (problems are float64)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def sample_guide(guide, names: list[str], n: int, shapes: dict[str, tuple], **kwargs) -> dict:
    """Draw ``n`` posterior samples of the named sites from a trained guide (vectorized).

    Args:
        guide: a trained Pyro autoguide.
        names: latent site names to return.
        n: number of draws.
        shapes: event shape of every site (``problem.param_shapes``).
        **kwargs: the model's keyword arguments (e.g. ``y=``).

    Returns:
        ``{name: np.ndarray of shape (n, *shape)}``.
    """
    trace = getattr(guide, "prototype_trace", None)
    depth = 0 if trace is None else plate_depth(trace)

    def vectorized():
        with torch.no_grad():
            out = draws_plate(guide, n, depth)(**kwargs)
        return {k: out[k].detach().cpu().numpy().reshape((n,) + tuple(shapes[k])) for k in names}

    def looped():
        rows: dict[str, list] = {k: [] for k in names}
        with torch.no_grad():
            for _ in range(n):
                out = guide(**kwargs)
                for k in names:
                    rows[k].append(out[k].detach().cpu().numpy().reshape(shapes[k]))
        return {k: np.stack(v) for k, v in rows.items()}

    return vectorize_or_loop(vectorized, looped, vectorize=None, what="guide draws", n=n)[0]


class _StepClock:
    """``fit`` callback that times the first step apart from the rest.

    The first step pays one-off costs (tracing the model, building the guide's parameters, a
    Laplace fit, JIT-like warm-up of torch kernels); it is reported as ``first_step_s`` and
    left out of ``seconds_per_step``.
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.ends: list[float] = []

    def __call__(self, step: int, record: dict) -> None:
        self.ends.append(time.perf_counter())

    def timings(self) -> dict[str, float]:
        """``wall_time_s`` (all steps), ``first_step_s`` and ``seconds_per_step`` (the rest)."""
        if not self.ends:
            nan = math.nan
            return {"wall_time_s": nan, "first_step_s": nan, "seconds_per_step": nan}
        first = self.ends[0] - self.start
        rest = len(self.ends) - 1
        per_step = (self.ends[-1] - self.ends[0]) / rest if rest else first
        return {
            "wall_time_s": self.ends[-1] - self.start,
            "first_step_s": first,
            "seconds_per_step": per_step,
        }


def _train(problem, y, guide, loss, *, steps: int, lr: float, progress: bool,
           lr_decay: bool | None = None):
    """Train ``guide`` through :func:`pyro_kr.fit` (the same loop for every SVI method;
    ``lr_decay`` as in ``fit``: its default decays the lr after an annealing ramp).

    Returns:
        ``(loss trace, -ELBO trace, timings, failure)``: ``failure`` is the message of a
        :class:`pyro_kr.NonFiniteLossError` (or of a failed Laplace start), else ``None``.
    """
    import pyro_kr
    from pyro_kr.guides.laplace import LaplaceError

    clock = _StepClock()
    try:
        history = pyro_kr.fit(
            problem.model, guide, y=y, loss=loss, steps=steps, lr=lr, progress=progress,
            callback=clock, lr_decay=lr_decay,
        )
    except (pyro_kr.NonFiniteLossError, LaplaceError) as exc:  # a failure, not a crash
        return [], [], clock.timings(), str(exc)
    losses = [float(v) for v in history.loss]
    elbo = getattr(history, "elbo", None) or [-v for v in losses]
    return losses, [-float(v) for v in elbo], clock.timings(), None


def _guide_result(
    problem, y, guide, trained: tuple, num_draws: int, particles: int
) -> MethodResult:
    """Draw from a trained guide (none when it failed) and pack the run's record."""
    losses, neg_elbo, timings, failed = trained
    draws = (
        {}
        if failed
        else sample_guide(guide, problem.param_names, num_draws, problem.param_shapes, y=y)
    )
    return MethodResult(
        draws=draws,
        wall_time_s=timings["wall_time_s"],
        seconds_per_step=timings["seconds_per_step"],
        loss=losses,
        guide=guide,
        failed=failed,
        first_step_s=timings["first_step_s"],
        particles=particles,
        neg_elbo=neg_elbo,
    )


def _autoguide_method(make_guide: Callable[[Callable], Any], label: str):
    def fit(
        problem, y, *, steps: int, seed: int, num_draws: int, progress: bool = False,
        particles: int = PARTICLES,
    ):
        from pyro.infer import Trace_ELBO

        with float64():
            pyro.clear_param_store()
            pyro.set_rng_seed(seed)
            guide = make_guide(problem.model)
            loss = Trace_ELBO(num_particles=particles, vectorize_particles=particles > 1)
            trained = _train(problem, y, guide, loss, steps=steps, lr=LR, progress=progress)
            return _guide_result(problem, y, guide, trained, num_draws, particles)

    fit.__doc__ = (
        f"Fit Pyro's {label} with Trace_ELBO (``particles`` vectorized particles, default "
        f"{PARTICLES}) and Adam(lr={LR}) through pyro_kr.fit."
    )
    return fit


def _auto_normal(model):
    from pyro.infer.autoguide import AutoNormal

    return AutoNormal(model)


def _auto_mvn(model):
    from pyro.infer.autoguide import AutoMultivariateNormal

    return AutoMultivariateNormal(model)


def _auto_lowrank(model):
    from pyro.infer.autoguide import AutoLowRankMultivariateNormal

    return AutoLowRankMultivariateNormal(model)


def _auto_iaf(model):
    from pyro.infer.autoguide import AutoIAFNormal

    return AutoIAFNormal(model, num_transforms=2)


def _auto_spline(model):
    from pyro.distributions.transforms import spline_autoregressive
    from pyro.infer.autoguide import AutoNormalizingFlow

    # AutoNormalizingFlow calls the factory with the latent dimension once it is known.
    return AutoNormalizingFlow(model, functools.partial(spline_autoregressive, count_bins=8))


def reference_options(name: str) -> dict[str, Any]:
    """``target_accept`` / ``compile_mode`` of the shipped reference of ``name``.

    The same as :func:`pyro_kr.bench.problems.references.nuts_options` (kept under this name).
    """
    from pyro_kr.bench.problems.references import nuts_options

    return nuts_options(name)


def fresh_nuts(
    problem, y, *, draws: int, chains: int, tune: int, seed: int, progress: bool = False
):
    """A fresh (uncached) PyMC NUTS run that never refuses: for timing and baselines.

    Uses the sampler options the problem's shipped reference was built with
    (:func:`reference_options`); ``y`` is an observation index or tensor.
    """
    from pyro_kr.bench import reference

    return reference.nuts(
        problem,
        y,
        draws=draws,
        chains=chains,
        tune=tune,
        seed=seed,
        cache=False,
        **reference_options(problem.name),
        rhat_max=math.inf,
        min_ess=0,
        progressbar=progress,
    )


def _nuts(
    problem, y, *, steps: int, seed: int, num_draws: int, progress: bool = False,
    particles: int | None = None,
):
    """Time a fresh PyMC NUTS posterior (2 chains, 1000 tuning steps each, no cache).

    ``steps`` and ``particles`` are SVI budgets and do not apply: NUTS's budget is fixed.
    """
    from pyro_kr.bench import reference

    chains, tune = 2, 1000
    draws = max(math.ceil(num_draws / chains), 100)
    idata = fresh_nuts(
        problem, y, draws=draws, chains=chains, tune=tune, seed=seed, progress=progress
    )
    s = reference.summary(idata)
    out = reference.to_draws(idata, problem.param_names)
    out = {k: v[:num_draws] for k, v in out.items()}
    wall = float(s["wall_time_s"])
    return MethodResult(
        draws=out,
        wall_time_s=wall,
        seconds_per_step=wall / (chains * (draws + tune)),
        loss=[],
        extra={
            "max_rhat": s["max_rhat"],
            "min_ess_bulk": s["min_ess_bulk"],
            "ess_per_s": s["ess_per_s"],
        },
    )


LAPLACE_LR = 1e-3
"""Adam learning rate of the ``autokr_*_laplace`` methods (the others use ``LR``)."""

AUTOKR_RAMP = RAMP_FRACTION
"""Fraction of the step budget over which ``autokr_*`` anneal ``(eps, lam)`` (then hold): the
library's one default, :data:`pyro_kr.objective.schedules.RAMP_FRACTION`."""


def _autokr_method(
    map_kind: str,
    annealed: bool = True,
    init_scale: float | str = 0.1,
    ordered: bool = False,
    lr: float = LR,
    tempered: bool = True,
    order: str = "auto",
):
    """``tempered=False``: the untempered recipe (``Annealing.over(steps, beta=1.0)``, constant
    lr), kept for the Laplace start: tempering starts near the prior, away from the Laplace
    Gaussian, and was not measured with it. ``order``: ``AutoKR``'s ``order`` (its default
    ``"auto"``, or ``"model"``); ``ordered=True`` uses ``problem.kr_order`` instead, or the
    model's order where the problem declares none."""

    def fit(
        problem, y, *, steps: int, seed: int, num_draws: int, progress: bool = False,
        particles: int = PARTICLES,
    ):
        import pyro_kr

        with float64():
            pyro.clear_param_store()
            pyro.set_rng_seed(seed)
            kr_order = order
            if ordered:
                kr_order = list(problem.kr_order) if problem.kr_order else "model"
            guide = pyro_kr.AutoKR(
                problem.model, map=map_kind, init_scale=init_scale, order=kr_order
            )
            # the default recipe: (eps, lam) and the likelihood temperature beta ramp over the
            # default share of the budget, then fit decays the lr to the last step
            recipe = {} if tempered else {"beta": 1.0}
            schedule = pyro_kr.Annealing.over(steps, **recipe) if annealed else None
            loss = pyro_kr.TransportELBO(
                schedule, num_particles=particles, vectorize_particles=particles > 1
            )
            trained = _train(problem, y, guide, loss, steps=steps, lr=lr, progress=progress,
                             lr_decay=None if tempered else False)
            return _guide_result(problem, y, guide, trained, num_draws, particles)

    objective = "plain ELBO (TransportELBO(None))"
    if annealed:
        objective = (
            "TransportELBO(Annealing.over(steps)) (tempered) and fit's lr decay after the ramp"
            if tempered else "TransportELBO(Annealing.over(steps, beta=1.0)), constant lr"
        )
    order_text = ", order=problem.kr_order" if ordered else f", order={order!r}"
    fit.__doc__ = (
        f"Fit pyro_kr.AutoKR(map={map_kind!r}, init_scale={init_scale!r}{order_text}) with "
        f"{objective} (``particles`` vectorized particles, default {PARTICLES}), Adam(lr={lr}) "
        "through pyro_kr.fit."
    )
    return fit


_REGISTRY: dict[str, Callable] = {
    "auto_normal": _autoguide_method(_auto_normal, "AutoNormal"),
    "auto_mvn": _autoguide_method(_auto_mvn, "AutoMultivariateNormal"),
    "auto_lowrank": _autoguide_method(_auto_lowrank, "AutoLowRankMultivariateNormal"),
    "auto_iaf": _autoguide_method(_auto_iaf, "AutoIAFNormal"),
    "auto_spline": _autoguide_method(_auto_spline, "AutoNormalizingFlow(spline)"),
    "nuts": _nuts,
}
_AUTOKR: dict[str, Callable] = {
    "autokr_monotone": _autokr_method("monotone"),
    "autokr_affine": _autokr_method("affine"),
    "autokr_monotone_elbo": _autokr_method("monotone", annealed=False),
    "autokr_affine_elbo": _autokr_method("affine", annealed=False),
    # Adam moves every parameter by about lr per step even at the optimum; a Laplace start
    # is close already, so these take 10x smaller steps.
    # Untempered, constant lr, the model's order (as measured): tempering starts near the
    # prior, away from the Laplace Gaussian, and was not measured with it.
    "autokr_monotone_laplace": _autokr_method("monotone", init_scale="laplace", lr=LAPLACE_LR,
                                              tempered=False, order="model"),
    "autokr_affine_laplace": _autokr_method("affine", init_scale="laplace", lr=LAPLACE_LR,
                                            tempered=False, order="model"),
    "autokr_monotone_ordered": _autokr_method("monotone", ordered=True),
}
DEFAULT = ("auto_normal", "auto_mvn", "autokr_affine", "autokr_monotone")
"""Methods ``pyro-kr bench`` runs when ``--methods`` is not given (those available)."""


def _has_autokr() -> bool:
    import pyro_kr

    return all(hasattr(pyro_kr, n) for n in ("AutoKR", "TransportELBO", "Annealing", "fit"))


def names() -> list[str]:
    """Return the available method names (``autokr_*`` only when ``pyro_kr.AutoKR`` exists).

    Example:
        >>> from pyro_kr.bench import methods
        >>> methods.names()[:2]
        ['auto_normal', 'auto_mvn']
    """
    out = list(_REGISTRY)
    if _has_autokr():
        out += list(_AUTOKR)
    return out


def default_names() -> list[str]:
    """Return the methods run by default: :data:`DEFAULT` restricted to :func:`names`."""
    available = names()
    return [m for m in DEFAULT if m in available]


def get(name: str) -> Callable:
    """Return the method ``name``'s fit function.

    Raises:
        ValueError: for an unknown name; the message lists the valid ones.

    Example:
        >>> from pyro_kr.bench import methods
        >>> callable(methods.get("auto_normal"))
        True
    """
    if not isinstance(name, str):
        raise TypeError(f"method name must be a str, got {type(name).__name__}")
    available = names()
    if name not in available:
        raise ValueError(f"unknown method {name!r}; valid names: {', '.join(available)}")
    return _REGISTRY.get(name) or _AUTOKR[name]
