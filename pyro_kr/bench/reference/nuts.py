"""Reference posteriors by PyMC MCMC, checked for convergence and cached on disk.

:func:`nuts` runs PyMC's NUTS (or DEMetropolisZ, the sampler Kerrigan et al. 2024 used for its
Lotka-Volterra reference) on a benchmark problem's PyMC twin or on any ``pm.Model``, refuses a
run that has not converged (R-hat, bulk ESS), and caches the draws as ArviZ netCDF keyed by the
problem, the observation values and the sampler settings.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from pyro_kr._validation import check_dim
from pyro_kr.bench.reference import _cache, _io

METHODS = ("nuts", "demetropolisz")
"""Samplers :func:`nuts` accepts (``method=``)."""


class ReferenceQualityError(RuntimeError):
    """An MCMC run did not converge well enough to serve as a reference posterior."""


class ReferenceNotCachedError(LookupError):
    """``nuts(..., build=False)`` found no cached reference for these settings."""


def check_quality(idata, *, rhat_max: float, min_ess: float, what: str = "reference run") -> None:
    """Raise :class:`ReferenceQualityError` if max R-hat or min bulk ESS fails its threshold.

    Args:
        idata: ``InferenceData`` with a ``posterior`` group of shape ``(chain, draw, ...)``.
        rhat_max: largest acceptable rank-normalized split R-hat.
        min_ess: smallest acceptable bulk effective sample size (over all coordinates).
        what: how to name the run in the error message.

    Example:
        >>> import numpy as np
        >>> from pyro_kr.bench.reference import _io
        >>> rng = np.random.default_rng(0)
        >>> check_quality(_io.from_dict({"x": rng.normal(size=(2, 400))}),
        ...               rhat_max=1.05, min_ess=100)
    """
    rhat, ess = _io.convergence(idata)
    problems = []
    if not rhat <= rhat_max:
        problems.append(f"max R-hat {rhat:.4f} > rhat_max {rhat_max}")
    if not ess >= min_ess:
        problems.append(f"min bulk ESS {ess:.1f} < min_ess {min_ess:.1f}")
    if problems:
        raise ReferenceQualityError(
            f"{what} refused: " + "; ".join(problems) + ". Run longer (more draws/tune), "
            "use more chains, or reparameterize the model; nothing was cached."
        )


def _pymc_observation_digest(model) -> str:
    """Digest of a ``pm.Model``'s structure and observed data (for the cache key)."""
    parts = [model.str_repr() if hasattr(model, "str_repr") else str(model)]
    for rv in model.observed_RVs:
        value = model.rvs_to_values[rv]
        if hasattr(value, "data"):
            data = value.data
        elif hasattr(value, "get_value"):
            data = value.get_value()
        else:
            data = value.eval()
        parts.append(rv.name + ":" + _cache.array_digest(data))
    for rv in model.free_RVs:
        parts.append(f"{rv.name}:{rv.type}")
    return _cache.array_digest(np.frombuffer("|".join(parts).encode(), dtype=np.uint8))


def _resolve(problem_or_model, observation, name: str | None):
    """Return ``(name, observation digest, build_model)`` for a Problem or a ``pm.Model``."""
    import pymc as pm

    if isinstance(problem_or_model, pm.Model):
        model = problem_or_model
        label = name or model.name or "pymc_model"
        return label, _pymc_observation_digest(model), (lambda: model)
    if not hasattr(problem_or_model, "pymc_model"):
        raise TypeError(
            "reference.nuts expected a pyro_kr Problem (with .pymc_model) or a pymc.Model, "
            f"got {type(problem_or_model).__name__}"
        )
    problem = problem_or_model
    if getattr(problem, "has_likelihood", True) is False:
        raise ValueError(
            f"problem {getattr(problem, 'name', '?')!r} has no likelihood (no PyMC twin); "
            "its reference is its generator, use problem.reference(i)"
        )
    if isinstance(observation, (int, np.integer)) and not isinstance(observation, bool):
        y = problem.observation(int(observation))
    else:
        y = observation
    label = name or getattr(problem, "name", None) or type(problem).__name__
    return label, _cache.array_digest(y), (lambda: problem.pymc_model(y))


@contextlib.contextmanager
def quiet_pymc(quiet: bool):
    """Silence PyMC's info logging (sampler assignment, timing) when ``quiet``."""
    logger = logging.getLogger("pymc")
    old = logger.level
    if quiet:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(old)


def _sample(model, settings: Mapping[str, Any], progressbar: bool):
    """Run PyMC (tests may monkeypatch this). Returns ``(idata, wall seconds)``."""
    import pymc as pm

    with model, quiet_pymc(not progressbar), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        extra: dict[str, Any] = {}
        if settings["method"] == "demetropolisz":
            step = pm.DEMetropolisZ()
        else:
            step = None
            extra["target_accept"] = settings["target_accept"]
        if settings.get("compile_mode"):
            extra["compile_kwargs"] = {"mode": settings["compile_mode"]}
        if settings.get("init") is not None:
            extra["init"] = settings["init"]
        if settings.get("initvals") is not None:
            extra["initvals"] = [dict(v) for v in settings["initvals"]]
        start = time.perf_counter()
        idata = pm.sample(
            draws=settings["draws"],
            tune=settings["tune"],
            chains=settings["chains"],
            cores=settings["cores"],
            random_seed=settings["seed"],
            step=step,
            progressbar=progressbar,
            compute_convergence_checks=False,
            return_inferencedata=True,
            **extra,
        )
        wall = time.perf_counter() - start
    return idata, wall


def load_or_build(
    *,
    name: str,
    digest: str,
    settings: Mapping[str, Any],
    build: Callable[[], Any] | None,
    cache: bool,
    cache_dir,
    rhat_max: float,
    min_ess: float,
):
    """Return a cached reference if valid, else build, check and cache one.

    ``build()`` returns ``(idata, wall seconds)``; ``build=None`` raises
    :class:`ReferenceNotCachedError` instead of sampling. A cache file that cannot be read or
    whose stored key differs is rebuilt with a ``RuntimeWarning``. Shared by :func:`nuts` and
    :func:`pyro_kr.bench.reference.nuts_from_pyro`.
    """
    key = _cache.cache_key(name, digest, settings)
    path = _cache.cache_path(_cache.resolve_cache_dir(cache_dir), name, key) if cache else None
    if path is not None and path.exists():
        try:
            idata = _io.read_netcdf(path)
            stored = _io.get_attrs(idata).get("pyro_kr_key")
            if stored != key:
                raise ValueError(f"stored key {stored!r} differs from {key!r}")
        except Exception as exc:  # noqa: BLE001 - any failure means a corrupted entry
            warnings.warn(
                f"cached reference {path} is corrupted or stale ({type(exc).__name__}: {exc}); "
                "rebuilding it",
                RuntimeWarning,
                stacklevel=3,
            )
            os.remove(path)
        else:
            check_quality(idata, rhat_max=rhat_max, min_ess=min_ess, what=f"cached {path}")
            return idata
    if build is None:
        raise ReferenceNotCachedError(
            f"no cached reference for {name} with settings {dict(settings)} (looked for {path})"
        )
    idata, wall = build()
    check_quality(idata, rhat_max=rhat_max, min_ess=min_ess, what=f"{name} reference run")
    max_rhat, ess = _io.convergence(idata)
    _io.set_attrs(
        idata,
        {
            **{f"setting_{k}": v for k, v in settings.items()},
            "pyro_kr_key": key,
            "pyro_kr_name": name,
            "wall_time_s": float(wall),
            "max_rhat": max_rhat,
            "min_ess_bulk": ess,
            "ess_per_s": ess / wall if wall > 0 else float("nan"),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    if path is not None:
        _io.write_netcdf_atomic(idata, path)
    return idata


def nuts(
    problem_or_model,
    observation: int | Any = 0,
    *,
    draws: int = 2000,
    chains: int = 4,
    tune: int = 1000,
    seed: int = 0,
    method: str = "nuts",
    target_accept: float = 0.8,
    compile_mode: str | None = None,
    init: str | None = None,
    initvals: Sequence[Mapping[str, Any]] | None = None,
    cores: int = 1,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    rhat_max: float = 1.01,
    min_ess: float | None = None,
    progressbar: bool = False,
    name: str | None = None,
    build: bool = True,
):
    """Sample a reference posterior with PyMC, check convergence and cache it.

    Args:
        problem_or_model: a :mod:`pyro_kr.bench.problems` Problem (its ``pymc_model(y)`` is
        sampled)
            or a ``pymc.Model``.
        observation: index of the problem's benchmark observation, or the observation itself
            (array of the problem's data shape). Ignored for a ``pymc.Model``.
        draws: kept draws per chain.
        chains: number of chains (R-hat needs at least 2).
        tune: tuning (warm-up) steps per chain.
        seed: random seed passed to ``pm.sample``.
        method: ``"nuts"`` or ``"demetropolisz"`` (gradient-free, as in Kerrigan et al. 2024).
        target_accept: NUTS target acceptance rate (raise it for curved posteriors).
        compile_mode: PyTensor compile mode, e.g. ``"NUMBA"`` (much faster for ODE models
            written with ``pytensor.scan``); default PyTensor's.
        init: PyMC's ``init`` (e.g. ``"adapt_diag"``: no jitter); default PyMC's.
        initvals: one ``{site: value}`` start per chain; default PyMC's.
        cores: processes for the chains (1 = sequential, the frugal default).
        cache: read and write the on-disk cache.
        cache_dir: cache directory; default ``$PYRO_KR_CACHE`` or ``~/.cache/pyro_kr/references``.
        rhat_max: refuse the run if the max R-hat exceeds this.
        min_ess: refuse the run if the min bulk ESS is below this; default ``draws / 4``.
        progressbar: show PyMC's progress bar and logging.
        name: cache label; default the problem's ``name`` or the model's name.
        build: sample when nothing is cached; ``False`` only loads (and raises
            :class:`ReferenceNotCachedError` when the cache has no such entry).

    Returns:
        ``arviz.InferenceData`` with ``posterior`` of shape ``(chains, draws, ...)`` per site,
        ``sample_stats``, and attributes (on ``posterior``) ``wall_time_s``, ``max_rhat``,
        ``min_ess_bulk``, ``ess_per_s``, ``pyro_kr_key`` and ``setting_*``.

    Raises:
        ReferenceQualityError: the run did not converge (message names R-hat and ESS).
        ReferenceNotCachedError: ``build=False`` and no cached entry.

    Example:
        >>> import pymc as pm
        >>> with pm.Model(name="demo") as m:
        ...     x = pm.Normal("x", 0.0, 1.0)
        >>> idata = nuts(m, draws=200, chains=2, tune=200, cache=False)  # doctest: +SKIP
        >>> float(idata.posterior["x"].std())  # doctest: +SKIP
        1.0...
    """
    check_dim("draws", draws, minimum=1)
    check_dim("chains", chains, minimum=1)
    check_dim("tune", tune, minimum=0)
    check_dim("cores", cores, minimum=1)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not 0.0 < target_accept < 1.0:
        raise ValueError(f"target_accept must lie in (0, 1), got {target_accept}")
    if not rhat_max >= 1.0:
        raise ValueError(f"rhat_max must be >= 1.0, got {rhat_max}")
    min_ess = draws / 4 if min_ess is None else float(min_ess)
    label, digest, build_model = _resolve(problem_or_model, observation, name)
    settings = {
        "sampler": "pymc",
        "method": method,
        "draws": draws,
        "chains": chains,
        "tune": tune,
        "seed": seed,
        "cores": cores,
    }
    if method == "nuts":
        settings["target_accept"] = target_accept
    if compile_mode is not None:
        settings["compile_mode"] = compile_mode
    if init is not None:
        settings["init"] = init
    if initvals is not None:
        settings["initvals"] = [
            {k: np.asarray(v).tolist() for k, v in dict(chain).items()} for chain in initvals
        ]
    return load_or_build(
        name=label,
        digest=digest,
        settings=settings,
        build=(lambda: _sample(build_model(), settings, progressbar)) if build else None,
        cache=cache,
        cache_dir=cache_dir,
        rhat_max=rhat_max,
        min_ess=min_ess,
    )


def to_draws(idata, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Flatten chains: ``{name: array of shape (chain * draw, *event)}``.

    Example:
        >>> import numpy as np
        >>> from pyro_kr.bench.reference import _io
        >>> d = to_draws(_io.from_dict({"x": np.zeros((2, 5, 3))}))
        >>> d["x"].shape
        (10, 3)
    """
    arrays = _io.posterior_arrays(idata)
    if names is not None:
        missing = [n for n in names if n not in arrays]
        if missing:
            raise ValueError(f"posterior has no sites {missing}; it has {sorted(arrays)}")
        arrays = {n: arrays[n] for n in names}
    return {k: v.reshape((-1,) + v.shape[2:]) for k, v in arrays.items()}


def summary(idata) -> dict[str, Any]:
    """Return the settings, convergence numbers and timing stored with a reference.

    Example:
        >>> import numpy as np
        >>> from pyro_kr.bench.reference import _io
        >>> s = summary(_io.from_dict({"x": np.zeros((2, 5))}, attrs={"wall_time_s": 1.5}))
        >>> s["wall_time_s"], s["chains"], s["draws"]
        (1.5, 2, 5)
    """
    attrs = _io.get_attrs(idata)
    arrays = _io.posterior_arrays(idata)
    first = next(iter(arrays.values())) if arrays else np.zeros((0, 0))
    out: dict[str, Any] = {"chains": int(first.shape[0]), "draws": int(first.shape[1])}
    out["sites"] = {k: list(v.shape[2:]) for k, v in arrays.items()}
    out.update(attrs)
    return out
