"""Every ArviZ call of :mod:`pyro_kr.bench.reference`, in one place (arviz 0.23 ``InferenceData``).

Keeping them here means the switch to arviz 1.x (xarray ``DataTree``) touches one file.
Functions: atomic netCDF write, strict netCDF read, ``from_dict`` and the convergence numbers
(max R-hat, min bulk ESS) the reference builder checks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pyro_kr._atomic import atomic_path


def _az():
    import arviz as az

    return az


def from_dict(
    posterior: Mapping[str, np.ndarray],
    *,
    sample_stats: Mapping[str, np.ndarray] | None = None,
    attrs: Mapping[str, Any] | None = None,
):
    """Build an ``InferenceData`` from arrays of shape ``(chain, draw, *event)``.

    Example:
        >>> import numpy as np
        >>> idata = from_dict({"x": np.zeros((2, 10))}, attrs={"note": "demo"})
        >>> idata.posterior["x"].shape
        (2, 10)
    """
    idata = _az().from_dict(
        posterior={k: np.asarray(v) for k, v in posterior.items()},
        sample_stats=None if sample_stats is None else dict(sample_stats),
    )
    if attrs:
        set_attrs(idata, attrs)
    return idata


def set_attrs(idata, attrs: Mapping[str, Any]) -> None:
    """Store ``attrs`` on the ``posterior`` group (netCDF-safe: str, int, float)."""
    for key, value in attrs.items():
        if isinstance(value, bool):
            value = int(value)
        elif not isinstance(value, (str, int, float, np.integer, np.floating)):
            value = str(value)
        idata.posterior.attrs[key] = value


def get_attrs(idata) -> dict[str, Any]:
    """Return the ``posterior`` group's attributes as a plain dict."""
    out = {}
    for key, value in idata.posterior.attrs.items():
        out[key] = value.item() if isinstance(value, np.generic) else value
    return out


def posterior_arrays(idata) -> dict[str, np.ndarray]:
    """Return ``{name: array of shape (chain, draw, *event)}`` from the posterior group."""
    return {name: np.asarray(var.values) for name, var in idata.posterior.data_vars.items()}


def sample_stats_arrays(idata) -> dict[str, np.ndarray]:
    """Return the ``sample_stats`` arrays (empty dict if the group is absent)."""
    if not hasattr(idata, "sample_stats"):
        return {}
    return {name: np.asarray(var.values) for name, var in idata.sample_stats.data_vars.items()}


def convergence(idata) -> tuple[float, float]:
    """Return ``(max R-hat, min bulk ESS)`` over every scalar of every posterior variable.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> rhat, ess = convergence(from_dict({"x": rng.normal(size=(2, 200))}))
        >>> rhat < 1.05 and ess > 100
        True
    """
    az = _az()
    rhat = az.rhat(idata.posterior)
    ess = az.ess(idata.posterior, method="bulk")
    rhat_values = [np.asarray(v.values, dtype=float).ravel() for v in rhat.data_vars.values()]
    ess_values = [np.asarray(v.values, dtype=float).ravel() for v in ess.data_vars.values()]
    r = np.concatenate(rhat_values) if rhat_values else np.array([np.nan])
    e = np.concatenate(ess_values) if ess_values else np.array([np.nan])
    # A constant coordinate gives NaN R-hat: treat NaN as non-converged.
    max_rhat = float(np.inf) if np.isnan(r).any() else float(r.max())
    min_ess = 0.0 if np.isnan(e).any() else float(e.min())
    return max_rhat, min_ess


def write_netcdf_atomic(idata, path: str | os.PathLike) -> Path:
    """Write ``idata`` to ``path`` through a temporary file and ``os.replace``.

    An interrupted write leaves at most a ``*.tmp`` file that is removed on error, never a
    half-written ``path``.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        idata.to_netcdf(tmp)
    return path


def read_netcdf(path: str | os.PathLike):
    """Read an ``InferenceData`` fully into memory (the file is closed afterwards).

    Raises whatever the netCDF backend raises for an unreadable file; callers treat any
    exception as a corrupted cache entry.
    """
    idata = _az().from_netcdf(str(path))
    for group in idata.groups():
        getattr(idata, group).load()
    if not hasattr(idata, "posterior"):
        raise ValueError(f"{path} holds no posterior group")
    return idata
