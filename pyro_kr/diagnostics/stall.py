"""``check_fit``: has a fitted guide learned from the data, or stalled at the prior / collapsed?

A variational fit can end in three silent failures:

* **At the prior.** The guide never moved away from where it started (a learning rate too
  small, a flat start, a symmetric posterior whose modes pull the guide equally): its draws
  sit where the prior's do, while the data put the posterior elsewhere.
* **Collapsed.** The guide moved but misses part of the posterior's mass (scales too narrow,
  or one mode of several): the importance ratios ``p(x, z) / q(z)`` are heavy-tailed.
* **Diverged.** The guide moved away from the prior but ended worse than the prior itself (its
  ELBO is below the prior's): the optimisation blew up.

``check_fit`` draws ``N`` times from the guide and ``N`` times from the prior (the model with
its observed sites left as they are, used as a guide), scores both under the model and
compares:

* ``khat``: PSIS k-hat of the guide (Vehtari et al. 2024); ``> 0.7``: the guide is not a
  usable approximation. Nothing is reported below that.
* ``prior_khat``: PSIS k-hat of the prior used as the guide. ``<= 0.7`` means the posterior is
  close to the prior, so a guide near the prior is not a stall.
* ``shift``: how far the guide moved, the largest ``|median_q - median_prior| / IQR_prior``
  over all scalar latent coordinates (constrained values).
* ``elbo`` and ``prior_elbo``: the ELBO of the guide and of the prior as the guide (the
  expected log likelihood under the prior; its KL term is 0). ``elbo - prior_elbo`` is what the
  guide gained over the prior.
* ``gap``: half the variance of the guide's log weights ``log p(x, z) - log q(z)``, an estimate
  of what the guide has still to gain, ``log p(x) - ELBO = KL(q || posterior)`` (exact when the
  log weights are Gaussian, the second-order term of ``log E_q[w] - E_q[log w]``). Unlike
  ``log mean w`` it needs no draw in the weights' tail.
* ``progress``: ``gain / (gain + gap)`` with ``gain = elbo - prior_elbo``: the share of the way
  from the prior's ELBO to the evidence the guide has covered (``<= 0``: no better than the
  prior).
* ``start_elbo`` (given by the caller; ``fit`` gives it) and ``moved``: the ELBO where the fit
  started, and whether the ELBO went ``"up"``, ``"down"`` or (within :data:`ELBO_MARGIN` plus
  three standard errors) ``"no"`` from there.

Limitation: k-hat only sees mass the guide's draws reach, so a guide that covers one of
several well-separated modes can pass (``"ok"``).

Status: ``"ok"`` (``khat <= 0.7``); ``"diverged"`` (``khat > 0.7``, ``prior_khat > 0.7``, the
guide sits at least :data:`SHIFT_TOL` prior IQRs away from the prior's location and its ELBO is
more than :data:`ELBO_MARGIN` below the prior's: it is somewhere worse than the prior itself, a
normalizing flow blown up by a large learning rate, or a guide that started far off, e.g. at
``init_to_feasible``'s point, and never recovered); ``"at_prior"`` (``khat > 0.7``,
``prior_khat > 0.7`` and the guide learned nothing from the data: its ELBO is less than
:data:`ELBO_MARGIN` above the
prior's, or its medians all lie within :data:`SHIFT_TOL` prior IQRs of the prior's **and** its
ELBO says it did not get away: it covered less than :data:`PROGRESS_TOL` of the way from the
prior's ELBO to the evidence, or, given the ELBO of its start (``start_elbo``; ``fit`` passes
it), it is within :data:`ELBO_MARGIN` plus three standard errors of it); ``"collapsed"``
otherwise, and also for a fit whose ELBO fell below its start's by more than that (it moved, and
diverged). A fit stopped early on its way (too few steps, too small a learning rate) reads as
one of the two, depending on how far it got; both messages name that fix.

Why the ELBO decides, not the location alone: a posterior much narrower than the prior but
centred near the prior's median (Lotka-Volterra in the benchmark suite: medians within 0.04 to
0.22 prior IQR of the prior's) has a small ``shift``, yet a fit of it gains about 1,500 nats over
the prior and has a gap of a few nats (``progress`` near 1), and is not a stall. An untrained
guide at its start (a narrow Gaussian at the prior's median, ``init_scale=0.1``) also gains
over the prior, from its narrowness alone (hundreds of nats when the likelihood is sharp), so
neither a gain in nats nor the guide's width tells it from a fit. Its ``gap`` usually does (the
likelihood changes by tens of nats across its draws: ``progress`` 0.1 to 0.2 in the tests),
but not at a saddle of the likelihood: an untrained guide at the centre of ``symmetric_modes``'
four modes sees a flat likelihood (``gap`` 2 nats, ``progress`` 0.97). Its ELBO is its start's,
which is what ``fit`` checks (it keeps the parameters after the first step and scores them
with the same draws); a standalone ``check_fit`` without ``start_elbo`` reads such a guide as
``"collapsed"``, still a warning.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine

from pyro_kr.diagnostics._draws import draw_guide
from pyro_kr.diagnostics.psis import KHAT_OK, PSISResult

__all__ = [
    "ELBO_MARGIN",
    "FitCheck",
    "FitWarning",
    "GAUSSIAN_MARGIN",
    "GaussianCheck",
    "PROGRESS_TOL",
    "SHIFT_TOL",
    "check_fit",
    "compare_to_gaussian",
    "warn_if_unhealthy",
]

GAUSSIAN_MARGIN = 0.05
"""A guide whose ELBO is this many nats (plus 3 standard errors) below the Laplace Gaussian's
is reported as worse than that Gaussian."""

GAUSSIAN_CHECK_MAX_DIM = 200
"""``fit`` compares an ``AutoKR`` with its Laplace Gaussian only up to this many latents (the
Laplace fit needs a ``d x d`` Hessian)."""

SHIFT_TOL = 0.5
"""A guide whose medians all lie within this many prior IQRs of the prior's has not moved away
from the prior's location (a stall only if its ELBO agrees: :data:`PROGRESS_TOL`)."""

PROGRESS_TOL = 0.5
"""A guide at the prior's location that covered less than this share of the way from the
prior's ELBO to the evidence (:attr:`FitCheck.progress`) learned nothing from the data."""

ELBO_MARGIN = 1.0
"""A guide whose ELBO is not this many nats above the prior's learned nothing from the data."""


class FitWarning(UserWarning):
    """A fitted guide stalled at the prior, collapsed or diverged (see :func:`check_fit`)."""


@dataclass(frozen=True)
class FitCheck:
    """The outcome of :func:`check_fit` (all numbers from ``num_samples`` draws each; the
    fields, ``progress`` and ``moved`` are defined in :mod:`pyro_kr.diagnostics.stall`)."""

    status: str
    khat: float
    prior_khat: float
    shift: float
    elbo: float
    prior_elbo: float
    num_samples: int
    gap: float = math.nan
    start_elbo: float = math.nan

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def progress(self) -> float:
        """``gain / (gain + gap)``, ``gain = elbo - prior_elbo``: the share of the way from the
        prior's ELBO to the evidence the guide covered (``<= 0`` when it gained nothing;
        ``nan`` without a ``gap``)."""
        gain = self.elbo - self.prior_elbo
        if gain <= 0:
            return gain
        return gain / (gain + self.gap)

    @property
    def moved(self) -> str | None:
        """How the ELBO changed from ``start_elbo``: ``"up"`` or ``"down"`` by more than
        :data:`ELBO_MARGIN` plus three standard errors of the difference, ``"no"`` within that
        (``None`` without a start)."""
        if math.isnan(self.start_elbo):
            return None
        se = math.sqrt(2.0 * self.gap / self.num_samples)  # sd of the log weights / sqrt(N)
        tol = ELBO_MARGIN + 3.0 * math.sqrt(2.0) * se
        change = self.elbo - self.start_elbo
        return "up" if change > tol else "down" if change < -tol else "no"

    @property
    def message(self) -> str:
        """The symptom with its numbers and the fixes (empty when ``ok``)."""
        numbers = (
            f"guide k-hat {self.khat:.2f}, prior k-hat {self.prior_khat:.2f}, ELBO "
            f"{self.elbo:.4g} vs the prior's {self.prior_elbo:.4g} (still to gain about "
            f"{self.gap:.3g}), largest move {self.shift:.2f} prior IQR; "
            f"{self.num_samples} draws"
        )
        if not math.isnan(self.start_elbo):
            numbers += f"; ELBO at the start of the fit {self.start_elbo:.4g}"
        if self.status == "at_prior":
            return (
                "the fit stalled at the prior: the guide's draws sit where the prior's do "
                f"while the data move the posterior away ({numbers}). Fixes: train longer or "
                "with a larger lr; start at the posterior mode (AutoKR(init_scale='laplace'), "
                "or init_loc_fn=init_to_sample); for a posterior with several modes, restart "
                "from other initial points and keep the fit with the best ELBO."
            )
        if self.status == "diverged":
            return (
                "the fit diverged: the guide sits away from the prior's location with an ELBO "
                "below the prior's, worse than the prior itself (the optimisation blew up, or "
                f"the fit started far off and never recovered) ({numbers}). "
                "Fixes: a smaller lr (or pyro.optim.ClippedAdam with clip_norm), start at the "
                "prior median (init_loc_fn=init_to_median) or the posterior mode "
                "(AutoKR(init_scale='laplace')), and check the model for regions where its log "
                "density overflows (an ODE or exp of a large latent)."
            )
        if self.status == "collapsed":
            return (
                "the guide misses part of the posterior's mass (scales too narrow, or only "
                f"some of several modes), or it is still on its way: k-hat > {KHAT_OK} "
                f"({numbers}). Fixes: train longer, with a larger lr or more particles; "
                "another KR order (AutoKR(order=[...]); the default order='auto' puts "
                "non-Gaussian conditionals first) or a deeper map; or correct the draws by "
                "importance resampling, pyro_kr.diagnostics.psis(guide, model, ...).resample()."
            )
        return ""


def _prior_guide(model: Callable) -> Callable:
    """The model's prior as a guide: the model with its observed sites hidden."""
    return poutine.block(model, hide_fn=lambda msg: msg.get("is_observed", False))


def _flat(latent: dict[str, torch.Tensor]) -> torch.Tensor:
    n = next(iter(latent.values())).shape[0]
    return torch.cat([v.reshape(n, -1).to(torch.float64) for v in latent.values()], dim=-1)


def _shift(q: dict[str, torch.Tensor], prior: dict[str, torch.Tensor]) -> float:
    zq, zp = _flat(q), _flat(prior)
    quart = torch.quantile(zp, torch.tensor([0.25, 0.5, 0.75], dtype=zp.dtype), dim=0)
    iqr = (quart[2] - quart[0]).clamp_min(1e-12)
    return float(((zq.median(0).values - quart[1]).abs() / iqr).max())


def check_fit(
    guide: Callable,
    model: Callable,
    *args: Any,
    num_samples: int = 1000,
    seed: int = 0,
    vectorize: bool | None = None,
    start_elbo: float | None = None,
    **kwargs: Any,
) -> FitCheck:
    """Check whether ``guide`` learned from the data, stalled at the prior or collapsed.

    See the module docstring for the definitions. The global RNG state is left as it was.

    Args:
        guide: a fitted guide.
        model: the Pyro model; ``*args, **kwargs`` (the data) go to both.
        num_samples: draws from the guide and from the prior.
        seed: seed of the draws.
        vectorize: as in :func:`pyro_kr.diagnostics.draw_guide`.
        start_elbo: the ELBO of the guide where its fit started (the mean log weight of
            ``num_samples`` draws with the same ``seed``, as :func:`pyro_kr.fit` computes
            it), or ``None``: a guide at the prior's location whose ELBO did not rise above it
            stalled (see the module docstring).

    Returns:
        A :class:`FitCheck`; ``.message`` names the symptom and the fix.

    Raises:
        ValueError: from :func:`~pyro_kr.diagnostics.draw_guide` (data subsampling, a model
            that is not batch-safe with ``vectorize=True``) or non-finite log weights.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro.infer.autoguide import AutoNormal
        >>> def model():
        ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...     pyro.sample("x", dist.Normal(z, 0.1), obs=torch.tensor(3.0))
        >>> pyro.clear_param_store()
        >>> check_fit(AutoNormal(model), model).status  # untrained: still at the prior
        'at_prior'
    """
    kwargs = dict(kwargs)
    q = draw_guide(guide, model, args, kwargs, num_samples=num_samples, seed=seed,
                   vectorize=vectorize)
    p = draw_guide(_prior_guide(model), model, args, kwargs, num_samples=num_samples,
                   seed=seed + 1, vectorize=vectorize)
    names = [n for n in p.latent if n in q.latent]
    q_psis = PSISResult.from_log_weights(q.log_weight)
    p_psis = PSISResult.from_log_weights(p.log_weight)
    shift = _shift({n: q.latent[n] for n in names}, {n: p.latent[n] for n in names})
    khat, prior_khat = float(q_psis.khat), float(p_psis.khat)
    elbo, prior_elbo = q_psis.elbo, p_psis.elbo
    gap = 0.5 * float(q.log_weight.detach().to(torch.float64).var())
    start = math.nan if start_elbo is None else float(start_elbo)
    result = FitCheck("ok", khat, prior_khat, shift, elbo, prior_elbo, num_samples, gap, start)
    if not khat > KHAT_OK:
        status = "ok"
    elif prior_khat > KHAT_OK and shift >= SHIFT_TOL and elbo < prior_elbo - ELBO_MARGIN:
        status = "diverged"  # away from the prior's location, and worse than the prior
    elif prior_khat > KHAT_OK and (
        elbo <= prior_elbo + ELBO_MARGIN
        or (shift < SHIFT_TOL and (result.progress < PROGRESS_TOL or result.moved == "no"))
    ) and result.moved != "down":  # a fit that lost ELBO since its start moved: it diverged
        status = "at_prior"
    else:
        status = "collapsed"
    return dataclasses.replace(result, status=status)


@dataclass(frozen=True)
class GaussianCheck:
    """The outcome of :func:`compare_to_gaussian`: a guide against the Laplace Gaussian.

    ``elbo``/``khat``: the guide's ELBO estimate and PSIS k-hat; ``gaussian_*``: the same for
    the Laplace approximation (Gaussian in the packed unconstrained space at the posterior
    mode); ``*_se``: standard errors of the two ELBO estimates (``num_samples`` draws each).
    """

    elbo: float
    elbo_se: float
    khat: float
    gaussian_elbo: float
    gaussian_elbo_se: float
    gaussian_khat: float
    num_samples: int

    @property
    def worse(self) -> bool:
        """The guide's ELBO is below the Gaussian's by more than :data:`GAUSSIAN_MARGIN` nats
        plus 3 combined standard errors."""
        margin = GAUSSIAN_MARGIN + 3.0 * math.hypot(self.elbo_se, self.gaussian_elbo_se)
        return self.elbo < self.gaussian_elbo - margin

    @property
    def message(self) -> str:
        """Why the guide is worse than the Gaussian and the fixes (empty when it is not)."""
        if not self.worse:
            return ""
        return (
            "the fitted guide is worse than the Laplace Gaussian of the same model: ELBO "
            f"{self.elbo:.4g} +- {self.elbo_se:.2g} (k-hat {self.khat:.2f}) vs the Gaussian's "
            f"{self.gaussian_elbo:.4g} +- {self.gaussian_elbo_se:.2g} (k-hat "
            f"{self.gaussian_khat:.2f}); {self.num_samples} draws each. Fixes: start the map "
            "at the Gaussian, AutoKR(init_scale='laplace'); train longer with the annealed "
            "objective, TransportELBO(Annealing.over(steps)), after whose ramp fit decays the "
            "learning rate by default (with another loss, pass a decaying optimizer such as "
            "pyro.optim.ClippedAdam({'lr': 1e-2, 'lrd': ...})); or use the Gaussian, "
            "AutoKR(map='affine', init_scale='laplace')."
        )


def _elbo_and_se(log_weight: torch.Tensor) -> tuple[float, float]:
    lw = log_weight.detach().to(torch.float64)
    return float(lw.mean()), float(lw.std() / math.sqrt(lw.numel()))


def compare_to_gaussian(
    guide: Callable,
    model: Callable,
    *args: Any,
    num_samples: int = 1000,
    seed: int = 0,
    vectorize: bool | None = None,
    **kwargs: Any,
) -> GaussianCheck:
    """Compare a fitted guide with the Laplace Gaussian of ``model`` (ELBO and PSIS k-hat).

    The Gaussian is :class:`~pyro_kr.AutoKR` with ``map="affine", init_scale="laplace"``,
    untrained: ``N(mode, H^-1)`` in the packed unconstrained space (see
    :mod:`pyro_kr.guides.laplace`), built in a separate parameter-store scope (the caller's
    parameters are untouched). Both ELBOs are estimated from ``num_samples`` draws; the guide
    is :attr:`GaussianCheck.worse` when its ELBO is below the Gaussian's by more than three
    combined standard errors. The global RNG state is left as it was.

    Raises:
        LaplaceError: the posterior has no usable mode (e.g. a centered funnel): there is no
            Laplace Gaussian to compare with.
        ValueError: as :func:`check_fit`.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro.infer.autoguide import AutoNormal
        >>> def model():
        ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...     pyro.sample("x", dist.Normal(z, 0.1), obs=torch.tensor(3.0))
        >>> pyro.clear_param_store()
        >>> compare_to_gaussian(AutoNormal(model), model).worse  # untrained: at the prior
        True
    """
    from pyro_kr.guides.autokr import AutoKR  # lazy: guides import the diagnostics

    kwargs = dict(kwargs)
    q = draw_guide(guide, model, args, kwargs, num_samples=num_samples, seed=seed,
                   vectorize=vectorize)
    init_loc_fn = getattr(guide, "init_loc_fn", None)
    options = {} if init_loc_fn is None else {"init_loc_fn": init_loc_fn}
    store = pyro.get_param_store()
    with store.scope(), torch.random.fork_rng(devices=[]):
        gaussian = AutoKR(model, map="affine", init_scale="laplace", **options)
        g = draw_guide(gaussian, model, args, kwargs, num_samples=num_samples, seed=seed + 2,
                       vectorize=vectorize)
    elbo, elbo_se = _elbo_and_se(q.log_weight)
    g_elbo, g_se = _elbo_and_se(g.log_weight)
    khat = float(PSISResult.from_log_weights(q.log_weight).khat)
    g_khat = float(PSISResult.from_log_weights(g.log_weight).khat)
    return GaussianCheck(elbo, elbo_se, khat, g_elbo, g_se, g_khat, num_samples)


def warn_if_unhealthy(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, *, num_samples: int = 500,
    start: dict[str, torch.Tensor] | None = None,
) -> FitCheck | None:
    """Run :func:`check_fit` (vectorized draws only) and warn with its message if not ok.

    ``start``: the parameters where the fit started (a
    :func:`pyro_kr.checkpoint.snapshot_params` snapshot); their ELBO, from the same draws'
    seed, is the check's ``start_elbo`` (the live parameters are put back exactly).

    For a dense :class:`~pyro_kr.AutoKR` not at the prior, also run
    :func:`compare_to_gaussian` and warn when the guide is worse than the Laplace Gaussian.

    Returns the check, or ``None`` where it cannot run (a model that is not batch-safe, data
    subsampling, non-finite log weights, a guide that does not draw): ``fit`` calls this after
    training and must not fail because of it.
    """
    start_elbo = None
    if start is not None:
        try:
            start_elbo = _elbo_at(start, guide, model, args, kwargs, num_samples)
        except Exception:  # noqa: BLE001 - no start to compare with: the check goes on
            start_elbo = None
    try:
        result = check_fit(guide, model, *args, num_samples=num_samples, vectorize=True,
                           start_elbo=start_elbo, **kwargs)
    except Exception:  # noqa: BLE001 - a diagnostic after training never fails the fit
        return None
    if not result.ok:  # k-hat = +inf too: the worst tail, not a reason to stay silent
        warnings.warn(result.message, FitWarning, stacklevel=3)
    if result.status != "at_prior" and _wants_gaussian_check(guide):
        try:
            gaussian = compare_to_gaussian(guide, model, *args, num_samples=num_samples,
                                           vectorize=True, **kwargs)
        except Exception:  # noqa: BLE001 - no Laplace Gaussian (no mode): nothing to compare
            return result
        if gaussian.worse:
            warnings.warn(gaussian.message, FitWarning, stacklevel=3)
    return result


def _elbo_at(
    params: dict[str, torch.Tensor], guide: Callable, model: Callable, args: tuple,
    kwargs: dict, num_samples: int,
) -> float:
    """The ELBO (mean log weight of ``num_samples`` vectorized draws, seed 0, as
    :func:`check_fit`'s) with the parameters set to ``params``; the live values are restored."""
    from pyro_kr.checkpoint import restore_params, snapshot_params

    live = snapshot_params()
    try:
        restore_params(params)
        q = draw_guide(guide, model, args, dict(kwargs), num_samples=num_samples, seed=0,
                       vectorize=True)
    finally:
        restore_params(live)
    return float(q.log_weight.detach().to(torch.float64).mean())


def _wants_gaussian_check(guide: Callable) -> bool:
    """A dense ``AutoKR`` of at most :data:`GAUSSIAN_CHECK_MAX_DIM` latents."""
    from pyro_kr.guides.autokr import AutoKR  # lazy: guides import the diagnostics

    return (
        isinstance(guide, AutoKR)
        and guide.structure_plan is None
        and 0 < getattr(guide, "latent_dim", 0) <= GAUSSIAN_CHECK_MAX_DIM
    )
