"""Every ArviZ call pyro_kr makes, in one place (arviz 0.2x ``InferenceData``).

ArviZ 1.x replaces ``InferenceData`` by xarray ``DataTree`` and moves ``psislw``; porting
pyro_kr to it means editing this module only. ArviZ is imported inside the functions, so
``import pyro_kr.diagnostics`` does not import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyro


def _import_arviz():
    try:
        import arviz
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "pyro_kr.diagnostics needs ArviZ: pip install 'pyro_kr[bench]' (or arviz<0.24)"
        ) from error
    return arviz


def _dataset(
    data: Mapping[str, np.ndarray],
    dims: Mapping[str, list[str]],
    coords: Mapping[str, list[int]],
    *,
    sampled: bool,
):
    az = _import_arviz()
    used = {d for name in data for d in dims.get(name, [])}
    return az.dict_to_dataset(
        dict(data),
        coords={k: v for k, v in coords.items() if k in used},
        dims={name: list(dims.get(name, [])) for name in data},
        default_dims=None if sampled else [],
        library=pyro,
    )


def build_inference_data(
    *,
    posterior: Mapping[str, np.ndarray],
    dims: Mapping[str, list[str]],
    coords: Mapping[str, list[int]],
    sample_stats: Mapping[str, np.ndarray] | None = None,
    log_likelihood: Mapping[str, np.ndarray] | None = None,
    log_likelihood_dims: Mapping[str, list[str]] | None = None,
    observed_data: Mapping[str, np.ndarray] | None = None,
    posterior_predictive: Mapping[str, np.ndarray] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> Any:
    """Return an ``az.InferenceData`` from arrays shaped ``(chain, draw, *value shape)``.

    Args:
        posterior: ``name -> (chain, draw, ...)`` latent draws.
        dims: ``name -> dim names`` (without chain/draw) for posterior, observed data and
            posterior predictive variables.
        coords: ``dim name -> coordinate values``.
        sample_stats: ``name -> (chain, draw)`` per-draw statistics.
        log_likelihood: ``name -> (chain, draw, *batch shape)`` pointwise log likelihood.
        log_likelihood_dims: dim names of the log likelihood variables.
        observed_data: ``name -> value`` (no chain/draw dims).
        posterior_predictive: ``name -> (chain, draw, ...)`` replicated data.
        attrs: attributes attached to every group.

    Example:
        >>> idata = build_inference_data(posterior={"z": np.zeros((1, 10))}, dims={}, coords={})
        >>> idata.posterior["z"].shape
        (1, 10)
    """
    az = _import_arviz()
    groups = {"posterior": _dataset(posterior, dims, coords, sampled=True)}
    if sample_stats:
        groups["sample_stats"] = _dataset(sample_stats, {}, coords, sampled=True)
    if log_likelihood:
        groups["log_likelihood"] = _dataset(
            log_likelihood, log_likelihood_dims or {}, coords, sampled=True
        )
    if observed_data:
        groups["observed_data"] = _dataset(observed_data, dims, coords, sampled=False)
    if posterior_predictive:
        groups["posterior_predictive"] = _dataset(
            posterior_predictive, dims, coords, sampled=True
        )
    if attrs:
        for dataset in groups.values():
            dataset.attrs.update(attrs)
    return az.InferenceData(**groups)


def psislw(log_weights: np.ndarray) -> tuple[np.ndarray, float]:
    """Return Pareto-smoothed normalized log weights ``(N,)`` and the tail shape ``k-hat``.

    Wraps ``az.psislw`` with ``reff = 1`` (independent draws from the guide).

    Example:
        >>> lw, khat = psislw(np.random.default_rng(0).normal(size=1000))
        >>> lw.shape
        (1000,)
    """
    az = _import_arviz()
    log_weights = np.asarray(log_weights, dtype=np.float64)
    smoothed, khat = az.psislw(log_weights, reff=1.0)
    return np.asarray(smoothed, dtype=np.float64), float(np.asarray(khat))
