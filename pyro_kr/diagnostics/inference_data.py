"""Convert a fitted Pyro guide into an ArviZ ``InferenceData``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from pyro.nn import PyroModule

from pyro_kr._validation import check_dim
from pyro_kr.diagnostics import _arviz
from pyro_kr.diagnostics._draws import draw_guide, predictive_draws
from pyro_kr.posterior_protocol import AmortizedPosterior, FixedObservation


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def to_inference_data(
    guide: Callable,
    model: Callable,
    *args: Any,
    num_samples: int = 4000,
    posterior_predictive: bool = False,
    seed: int = 0,
    vectorize: bool | None = None,
    **kwargs: Any,
) -> Any:
    """Return an ArviZ ``InferenceData`` holding ``num_samples`` draws of a fitted guide.

    Groups (one chain, ``num_samples`` draws):

    * ``posterior``: every latent site of the model that the guide samples, as constrained
      values, named as in the model; dims indexed by a ``pyro.plate`` are named after the plate
      (coordinates ``0 .. size - 1``), the others ``"{site}_dim_{k}"``.
    * ``sample_stats``: ``log_weight = log p(x, z) - log q(z)`` (the importance log weight of
      each draw; its mean is the ELBO), ``lp = log p(x, z)`` and ``log_q``.
    * ``log_likelihood``: pointwise ``log p(x_i | z)`` of every observed site (batch dims only),
      so ``az.loo`` / ``az.waic`` work.
    * ``observed_data``: the values of the observed sites.
    * ``posterior_predictive`` (if asked): replicated data from the model with its latent sites
      conditioned on the draws and its observed sites unconditioned, one replicate per draw
      (what ``pyro.infer.Predictive`` does, but correct for latent sites with event dims).

    Draws are computed in one vectorized pass (an outer ``pyro.plate`` over draws, left of the
    model's plates, as ``Trace_ELBO(vectorize_particles=True)``); the log joint of two draws is
    checked against an unvectorized evaluation, and a model that does not broadcast falls back
    to a loop over draws (with a ``RuntimeWarning``). Works for any Pyro autoguide
    (``AutoNormal``, ``AutoMultivariateNormal``, ``AutoIAFNormal``, ``AutoNormalizingFlow``...)
    and any ``AutoContinuous`` subclass such as ``pyro_kr.AutoKR``. Subsampling plates are not
    supported (their random subsets make the weights meaningless).

    Args:
        guide: the fitted guide (a :class:`~pyro_kr.posterior_protocol.FixedObservation` is
            unwrapped to its guide; an :class:`~pyro_kr.posterior_protocol.AmortizedPosterior`
            that is not a Pyro guide, such as ``COTFlowMatching``, raises a ``TypeError``).
        model: the Pyro model.
        *args: the model's positional arguments (also passed to the guide).
        num_samples: number of draws.
        posterior_predictive: also fill ``posterior_predictive``.
        seed: seed of the draws (the global torch RNG state is restored afterwards).
        vectorize: ``True`` vectorized only, ``False`` loop only, ``None`` (default)
            vectorized with the loop as fallback.
        **kwargs: the model's keyword arguments (the names above are reserved).

    Returns:
        ``arviz.InferenceData``.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> def model(x):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     with pyro.plate("data", len(x)):
        ...         pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
        >>> x = torch.randn(20)
        >>> idata = to_inference_data(AutoNormal(model), model, x, num_samples=200)
        >>> idata.posterior["mu"].shape, idata.log_likelihood["x"].dims
        ((1, 200), ('chain', 'draw', 'data'))
    """
    check_dim("num_samples", num_samples, minimum=2)
    if isinstance(guide, FixedObservation):  # the protocol adapter of a Pyro guide (AutoKR)
        guide = guide.guide
    elif isinstance(guide, AmortizedPosterior) and not isinstance(guide, PyroModule):
        raise TypeError(
            f"to_inference_data scores a Pyro guide under the model; {type(guide).__name__} "
            "answers posterior queries but is not a Pyro guide. Draw with guide.sample(y, n) "
            "and build the InferenceData with arviz.from_dict(posterior=...)"
        )
    draws = draw_guide(
        guide, model, args, kwargs, num_samples=num_samples, seed=seed, vectorize=vectorize
    )
    predictive = None
    if posterior_predictive:
        replicated = predictive_draws(model, args, kwargs, draws, seed=seed + 1)
        predictive = {k: _numpy(v)[None] for k, v in replicated.items()}
    return _arviz.build_inference_data(
        posterior={k: _numpy(v)[None] for k, v in draws.latent.items()},
        dims=draws.dims,
        coords=draws.coords,
        sample_stats={
            "log_weight": _numpy(draws.log_weight)[None],
            "lp": _numpy(draws.log_joint)[None],
            "log_q": _numpy(draws.log_q)[None],
        },
        log_likelihood={k: _numpy(v)[None] for k, v in draws.log_likelihood.items()},
        log_likelihood_dims=draws.log_likelihood_dims,
        observed_data={k: _numpy(v) for k, v in draws.observed.items()},
        posterior_predictive=predictive,
        attrs={"guide": type(guide).__name__, "vectorized": int(draws.vectorized)},
    )
