"""Shipped reference posterior draws: loading, and the command that regenerates them.

The draws for observation 0 of every MCMC-referenced problem live in
``pyro_kr/bench/data/references/{name}_obs0.npz`` (float32, one array per latent site, chains
concatenated) with ``{name}_obs0.json`` next to it (settings, R-hat, ESS, wall time).
Problems with an exact reference (``linear_gaussian``, ``funnel``, the joint-sample tasks)
ship nothing: they draw exactly. ``darcy_2d`` is sampled through
:func:`pyro_kr.bench.reference.nuts_from_pyro` (PyMC's NUTS on the Pyro model's torch potential):
one gradient of its PyMC twin costs ~0.2 s, of the torch potential ~3.5 ms.

Regenerate (PyMC NUTS on the problem's twin; see ``SETTINGS``)::

    python -m pyro_kr.bench.problems.references                 # every MCMC-referenced problem
    python -m pyro_kr.bench.problems.references --problem lotka_volterra --draws 2000

Every run goes through :mod:`pyro_kr.bench.reference` (:func:`~pyro_kr.bench.reference.nuts`
on the PyMC twin, uncached, or :func:`~pyro_kr.bench.reference.nuts_from_pyro`), the one
reference builder; this module adds the per-problem ``SETTINGS`` (the Lotka-Volterra twin
needs PyTensor's numba backend, ``compile_mode``: one gradient costs ~1 ms with numba and
~15 ms with the C backend), the R-hat / ESS gate and the shipped files.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from pyro_kr._atomic import atomic_path

__all__ = [
    "MIN_ESS",
    "RHAT_MAX",
    "SETTINGS",
    "generate",
    "load_reference",
    "main",
    "nuts_options",
    "reference_dir",
]

RHAT_MAX = 1.01
MIN_ESS = 400.0

#: Default NUTS settings per problem (``draws`` are per chain).
SETTINGS: dict[str, dict[str, Any]] = {
    # The LV posterior has local modes ~300 nats below the main one (a chain started at the
    # prior mean with PyMC's default jitter got stuck there: R-hat 2.6), so the chains start
    # at u* * exp(0.05 z), z ~ N(0, I), without PyMC's jitter.
    "lotka_volterra": {
        "draws": 6250, "tune": 1000, "chains": 4, "target_accept": 0.9, "compile_mode": "NUMBA",
        "init_at": [0.83, 0.041, 1.08, 0.04], "init_spread": 0.05,
    },
    "banana": {"draws": 5000, "tune": 1000, "chains": 4, "target_accept": 0.95},
    "eight_schools": {
        "draws": 5000, "tune": 2000, "chains": 4, "target_accept": 0.99, "noncentered": True,
    },
    "elliptic_1d": {"draws": 2500, "tune": 1000, "chains": 4, "target_accept": 0.9},
    # One gradient of the PyMC twin (a dense PyTensor solve) costs ~0.2 s against ~3.5 ms for
    # the torch potential, so darcy_2d samples the Pyro model through nuts_from_pyro.
    "darcy_2d": {
        "draws": 1000, "tune": 500, "chains": 4, "target_accept": 0.8,
        "sampler": "nuts_from_pyro",
    },
}  # fmt: skip


def reference_dir() -> Path:
    """Directory of the shipped reference files."""
    return Path(__file__).resolve().parent.parent / "data" / "references"


def _path(name: str, index: int, directory: Path | None = None) -> Path:
    return (directory or reference_dir()) / f"{name}_obs{index}.npz"


def load_reference(name: str, index: int = 0) -> dict[str, np.ndarray]:
    """Load the shipped draws of problem ``name``, observation ``index``: name -> ``(n, ...)``.

    Raises:
        ValueError: no draws ship for this problem and observation.

    Example:
        >>> draws = load_reference("eight_schools")
        >>> sorted(draws)
        ['mu', 'tau', 'theta']
    """
    path = _path(name, index)
    if not path.exists():
        shipped = sorted(p.stem for p in reference_dir().glob("*.npz"))
        raise ValueError(
            f"no shipped reference for {name!r} observation {index} (expected {path.name}); "
            f"shipped: {shipped}. Build one with pyro_kr.bench.reference.nuts(problem, {index}) "
            f"or python -m pyro_kr.bench.problems.references --problem {name}"
        )
    regenerate = (
        f"regenerate it with `python -m pyro_kr.bench.problems.references --problem {name}` (or "
        "reinstall pyro_kr to restore the shipped file)"
    )
    try:
        with np.load(path) as data:
            draws = {k: np.asarray(data[k]) for k in data.files}
    except Exception as exc:  # noqa: BLE001 - zipfile/OSError/ValueError: re-raised with the fix
        raise ValueError(
            f"reference file {path} cannot be read ({type(exc).__name__}: {exc}): it is "
            f"truncated or corrupted; {regenerate}"
        ) from exc
    _check_draws(name, draws, path, regenerate)
    return draws


def _check_draws(name: str, draws: dict[str, np.ndarray], path: Path, regenerate: str) -> None:
    """Refuse a reference file with missing sites, NaN/inf or sites of unequal length."""
    import pyro_kr.bench.problems as problems

    try:
        expected = list(problems.get(name).param_names)
    except (KeyError, ValueError):  # not a registered problem: check what is there
        expected = list(draws)
    missing = [k for k in expected if k not in draws]
    if missing:
        raise ValueError(
            f"reference file {path} lacks the sites {missing} (it holds {sorted(draws)}; "
            f"{name} has {expected}); {regenerate}"
        )
    for key in expected:
        bad = int(np.size(draws[key]) - np.isfinite(draws[key]).sum())
        if bad:
            raise ValueError(
                f"reference file {path} holds {bad} NaN/inf values in site {key!r}; "
                f"{regenerate}"
            )
    lengths = {k: len(draws[k]) for k in expected}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"reference file {path} has sites with different numbers of draws {lengths}; "
            f"{regenerate}"
        )


def reference_info(name: str, index: int = 0) -> dict[str, Any]:
    """The JSON record (settings, R-hat, ESS, wall time) next to the shipped draws."""
    return json.loads(_path(name, index).with_suffix(".json").read_text())


def _pymc_model(problem: Any, y: Any, settings: dict[str, Any]) -> Any:
    if settings.get("noncentered"):
        return problem.pymc_model_noncentered(y)
    return problem.pymc_model(y)


def _diagnostics(idata: Any, names: list[str]) -> tuple[float, float, float]:
    """Unrounded ``(max R-hat, min bulk ESS, min tail ESS)`` over the named sites."""
    import arviz as az

    post = idata.posterior[names]
    rhat = max(float(v.max()) for v in az.rhat(post).data_vars.values())
    bulk = min(float(v.min()) for v in az.ess(post, method="bulk").data_vars.values())
    tail = min(float(v.min()) for v in az.ess(post, method="tail").data_vars.values())
    return rhat, bulk, tail


def nuts_options(name: str) -> dict[str, Any]:
    """``target_accept`` / ``compile_mode`` the shipped reference of ``name`` was built with.

    Fresh NUTS runs (baselines, ``pyro-kr reference``) pass these to
    :func:`pyro_kr.bench.reference.nuts`, so every reference of a problem is sampled alike.

    Example:
        >>> nuts_options("banana")
        {'target_accept': 0.95}
    """
    chosen = SETTINGS.get(name, {})
    return {k: chosen[k] for k in ("target_accept", "compile_mode") if k in chosen}


def _build(
    problem: Any, y: Any, settings: dict[str, Any], seed: int, progressbar: bool
) -> tuple[Any, float]:
    """One reference run through :mod:`pyro_kr.bench.reference` (the one builder), unchecked here.

    ``sampler="nuts_from_pyro"``: PyMC NUTS on the Pyro model's torch potential; otherwise
    :func:`pyro_kr.bench.reference.nuts` on the problem's PyMC twin. Returns ``(idata, wall s)``.
    """
    from pyro_kr.bench import reference

    common = {
        "draws": settings["draws"], "tune": settings["tune"], "chains": settings["chains"],
        "seed": seed, "target_accept": settings["target_accept"], "progressbar": progressbar,
        "rhat_max": float("inf"), "min_ess": 0.0,  # generate() applies RHAT_MAX / MIN_ESS
        "name": problem.name,
    }  # fmt: skip
    start = time.perf_counter()
    if settings.get("sampler") == "nuts_from_pyro":
        idata = reference.nuts_from_pyro(problem.model, y=y, **common)
    else:
        init: dict[str, Any] = {}
        if "init_at" in settings:
            rng = np.random.default_rng(seed)
            center = np.asarray(settings["init_at"], dtype=np.float64)
            spread = settings["init_spread"]
            init["init"] = "adapt_diag"
            init["initvals"] = [
                dict(zip(problem.param_names, center * np.exp(spread * z), strict=True))
                for z in rng.standard_normal((settings["chains"], len(center)))
            ]
        model = _pymc_model(problem, y.numpy(), settings)
        idata = reference.nuts(
            model, compile_mode=settings.get("compile_mode"), cache=False, **init, **common
        )
    return idata, time.perf_counter() - start


def generate(
    name: str,
    index: int = 0,
    *,
    draws: int | None = None,
    tune: int | None = None,
    chains: int | None = None,
    seed: int = 0,
    out_dir: str | Path | None = None,
    progressbar: bool = False,
    check: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run PyMC NUTS for problem ``name`` and write ``{name}_obs{index}.npz`` and ``.json``.

    Args:
        name: a registered problem with a PyMC twin.
        index: observation index.
        draws, tune, chains: override ``SETTINGS[name]`` (draws and tune are per chain).
        seed: ``random_seed`` of ``pm.sample``.
        out_dir: where to write; default the shipped directory; ``None`` writes there.
        progressbar: show PyMC's progress bar.
        check: refuse (``RuntimeError``, nothing written) a run with max R-hat above
            ``RHAT_MAX`` or min bulk ESS below ``MIN_ESS``.

    Returns:
        ``(draws, record)``: the flattened draws and the JSON record.

    Example:
        >>> d, rec = generate("banana", draws=200, tune=200, chains=2,
        ...                   out_dir="/tmp/ref")  # doctest: +SKIP
    """
    import arviz as az
    import pymc as pm

    import pyro_kr.bench.problems as problems

    if name not in SETTINGS:
        raise ValueError(f"no MCMC reference settings for {name!r}; valid: {', '.join(SETTINGS)}")
    settings = dict(SETTINGS[name])
    for key, value in (("draws", draws), ("tune", tune), ("chains", chains)):
        if value is not None:
            settings[key] = int(value)
    problem = problems.get(name)
    y = problem.observation(index)
    idata, wall = _build(problem, y, settings, seed, progressbar)
    if settings.get("sampler") == "nuts_from_pyro":
        sampler = "pyro_kr.bench.reference.nuts_from_pyro (PyMC NUTS on the Pyro potential)"
    else:
        sampler = "pyro_kr.bench.reference.nuts (pymc.sample, NUTS)"
    post = idata.posterior
    names = problem.param_names
    rhat, ess_bulk, ess_tail = _diagnostics(idata, names)
    out = {k: post[k].values.reshape((-1, *post[k].shape[2:])).astype(np.float32) for k in names}
    record = {
        "problem": name,
        "observation_index": index,
        "observation": y.tolist(),
        "sampler": sampler,
        "settings": {**settings, "seed": seed, "cores": 1},
        "num_draws": int(len(out[names[0]])),
        "max_rhat": rhat,
        "min_ess_bulk": ess_bulk,
        "min_ess_tail": ess_tail,
        "divergences": int(idata.sample_stats["diverging"].values.sum()),
        "wall_time_s": round(wall, 1),
        "min_ess_bulk_per_s": ess_bulk / wall,
        "versions": {"pymc": pm.__version__, "arviz": az.__version__},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if check and not (record["max_rhat"] <= RHAT_MAX and record["min_ess_bulk"] >= MIN_ESS):
        raise RuntimeError(
            f"{name}: reference run rejected, nothing written: max R-hat {record['max_rhat']} "
            f"(need <= {RHAT_MAX}), min bulk ESS {record['min_ess_bulk']:.0f} "
            f"(need >= {MIN_ESS}); record: {record}"
        )
    directory = Path(out_dir) if out_dir is not None else reference_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = _path(name, index, directory)
    with atomic_path(path, suffix=".tmp.npz") as tmp:
        np.savez_compressed(tmp, **out)
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return out, record


def main(argv: list[str] | None = None) -> int:
    """Command line: regenerate shipped references (all MCMC-referenced problems by default)."""
    parser = argparse.ArgumentParser(
        prog="python -m pyro_kr.bench.problems.references", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--problem", choices=sorted(SETTINGS), action="append")
    parser.add_argument("--draws", type=int, help="draws per chain (default: SETTINGS)")
    parser.add_argument("--tune", type=int)
    parser.add_argument("--chains", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=None, help="default: the shipped directory")
    parser.add_argument("--progressbar", action="store_true")
    args = parser.parse_args(argv)
    status = 0
    for name in args.problem or list(SETTINGS):
        try:
            _, rec = generate(
                name,
                draws=args.draws,
                tune=args.tune,
                chains=args.chains,
                seed=args.seed,
                out_dir=args.out_dir,
                progressbar=args.progressbar,
            )
        except RuntimeError as err:  # a rejected run: report it and go on with the others
            print(err)
            status = 1
            continue
        print(
            f"{name}: {rec['num_draws']} draws, max R-hat {rec['max_rhat']:.4f}, "
            f"min bulk ESS {rec['min_ess_bulk']:.0f}, divergences {rec['divergences']}, "
            f"wall {rec['wall_time_s']} s"
        )
    return status


if __name__ == "__main__":
    raise SystemExit(main())
