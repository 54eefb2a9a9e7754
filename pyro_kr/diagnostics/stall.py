"""``check_fit``: has a fitted guide learned from the data, or stalled at the prior / collapsed?

A variational fit can end in two silent failures:

* **At the prior.** The guide never moved away from where it started (a learning rate too
  small, a flat start, a symmetric posterior whose modes pull the guide equally): its draws
  sit where the prior's do, while the data put the posterior elsewhere.
* **Collapsed.** The guide moved but misses part of the posterior's mass (scales too narrow,
  or one mode of several): the importance ratios ``p(x, z) / q(z)`` are heavy-tailed.

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
  expected log likelihood under the prior; its KL term is 0).

Limitation: k-hat only sees mass the guide's draws reach, so a guide that covers one of
several well-separated modes can pass (``"ok"``).

Status: ``"ok"`` (``khat <= 0.7``); ``"at_prior"`` (``khat > 0.7``, ``prior_khat > 0.7`` and
the guide either moved less than :data:`SHIFT_TOL` prior IQRs or has an ELBO less than
:data:`ELBO_MARGIN` above the prior's); ``"collapsed"`` otherwise. A fit stopped early on
its way (too few steps, too small a learning rate) reads as one of the two, depending on how far
it got; both messages name that fix.
"""

from __future__ import annotations

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
"""A guide whose medians all lie within this many prior IQRs of the prior's has not moved."""

ELBO_MARGIN = 1.0
"""A guide whose ELBO is not this many nats above the prior's learned nothing from the data."""


class FitWarning(UserWarning):
    """A fitted guide stalled at the prior or collapsed (see :func:`check_fit`)."""


@dataclass(frozen=True)
class FitCheck:
    """The outcome of :func:`check_fit` (all numbers from ``num_samples`` draws each)."""

    status: str
    khat: float
    prior_khat: float
    shift: float
    elbo: float
    prior_elbo: float
    num_samples: int

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def message(self) -> str:
        """The symptom with its numbers and the fixes (empty when ``ok``)."""
        numbers = (
            f"guide k-hat {self.khat:.2f}, prior k-hat {self.prior_khat:.2f}, ELBO "
            f"{self.elbo:.4g} vs the prior's {self.prior_elbo:.4g}, largest move "
            f"{self.shift:.2f} prior IQR; {self.num_samples} draws"
        )
        if self.status == "at_prior":
            return (
                "the fit stalled at the prior: the guide's draws sit where the prior's do "
                f"while the data move the posterior away ({numbers}). Fixes: train longer or "
                "with a larger lr; start at the posterior mode (AutoKR(init_scale='laplace'), "
                "or init_loc_fn=init_to_sample); for a posterior with several modes, restart "
                "from other initial points and keep the fit with the best ELBO."
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
    if not khat > KHAT_OK:
        status = "ok"
    elif prior_khat > KHAT_OK and (shift < SHIFT_TOL or elbo <= prior_elbo + ELBO_MARGIN):
        status = "at_prior"
    else:
        status = "collapsed"
    return FitCheck(status, khat, prior_khat, shift, elbo, prior_elbo, num_samples)


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
    model: Callable, guide: Callable, args: tuple, kwargs: dict, *, num_samples: int = 500
) -> FitCheck | None:
    """Run :func:`check_fit` (vectorized draws only) and warn with its message if not ok.

    For a dense :class:`~pyro_kr.AutoKR` not at the prior, also run
    :func:`compare_to_gaussian` and warn when the guide is worse than the Laplace Gaussian.

    Returns the check, or ``None`` where it cannot run (a model that is not batch-safe, data
    subsampling, non-finite log weights, a guide that does not draw): ``fit`` calls this after
    training and must not fail because of it.
    """
    try:
        result = check_fit(guide, model, *args, num_samples=num_samples, vectorize=True,
                           **kwargs)
    except Exception:  # noqa: BLE001 - a diagnostic after training never fails the fit
        return None
    if not result.ok and math.isfinite(result.khat):
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


def _wants_gaussian_check(guide: Callable) -> bool:
    """A dense ``AutoKR`` of at most :data:`GAUSSIAN_CHECK_MAX_DIM` latents."""
    from pyro_kr.guides.autokr import AutoKR  # lazy: guides import the diagnostics

    return (
        isinstance(guide, AutoKR)
        and guide.structure_plan is None
        and 0 < getattr(guide, "latent_dim", 0) <= GAUSSIAN_CHECK_MAX_DIM
    )
