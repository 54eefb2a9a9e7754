"""``pyro_kr.simulate``: a seeded bank of prior-predictive pairs, in-process or on Ray.

The ``num_simulations`` pairs are cut into chunks of ``chunk_size``; chunk ``i`` is drawn by
:func:`pyro_kr.traces.simulate_pairs` (vectorized over an outer plate) from a
seed derived from ``(seed, i)`` alone, so the pairs depend on ``seed`` and ``chunk_size``
only, never on the backend or the number of workers. ``backend="ray"`` runs one Ray task per
chunk; with ``path=`` each finished chunk is written atomically as a shard by the driver, and
a rerun skips the shards already there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from pyro import poutine

from pyro_kr._atomic import atomic_path
from pyro_kr._validation import check_dim
from pyro_kr.simulation.bank import SimulationBank
from pyro_kr.simulation.shards import (
    FORMAT,
    MANIFEST,
    VERSION,
    check_manifest,
    num_chunks,
    read_shard,
    shard_path,
    write_shard,
)
from pyro_kr.traces import plate_depth, sample_sites, simulate_pairs, site_names

__all__ = ["DEFAULT_CHUNK_SIZE", "chunk_seed", "simulate"]

DEFAULT_CHUNK_SIZE = 10_000
_BACKENDS = ("local", "ray")
_PROBE = 2**31 - 1  # chunk index of the manifest's probe draws (never a real chunk)
_INSTALL = 'pip install "pyro_kr[distributed]"  (or: pip install "ray>=2.9")'


def chunk_seed(seed: int, index: int) -> int:
    """The torch seed of chunk ``index`` of a bank with ``seed`` (NumPy ``SeedSequence``)."""
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _run_chunk(model, args, kwargs, shapes, depth, seed, n):
    """Draw one chunk (runs in the driver or in a Ray worker)."""
    return simulate_pairs(model, args, kwargs, shapes, n, depth=depth, seed=seed)


def _layout(model, args, kwargs, observed: list[str]) -> tuple[dict, dict, int]:
    """Latent and observed site shapes/dtypes from one trace, and the plate depth."""
    with torch.random.fork_rng(devices=[]), torch.no_grad(), poutine.block():
        torch.manual_seed(0)
        trace = poutine.trace(model).get_trace(*args, **kwargs)
        free = poutine.trace(poutine.uncondition(model)).get_trace(*args, **kwargs)
    sample = {s["name"]: s for s in sample_sites(trace, subsample=False)}
    missing = [n for n in observed if n not in sample]
    if missing:
        raise ValueError(f"observed sites {missing} are not sample sites of the model; its "
                         f"sample sites are {sorted(sample)}")
    latents = {n: s for n, s in sample.items() if n not in observed and not s["is_observed"]}
    if not latents:
        raise ValueError("the model has no latent sample sites besides the observed ones")

    def spec(name):
        value = free.nodes[name]["value"]
        return {"shape": list(value.shape), "dtype": str(value.dtype)}

    return ({n: spec(n) for n in latents}, {n: spec(n) for n in observed},
            plate_depth(free))


def _model_name(model: Callable) -> str:
    target = getattr(model, "__func__", model)
    name = getattr(target, "__qualname__", type(target).__qualname__)
    return f"{getattr(target, '__module__', '?')}.{name}"


def _manifest(model, args, kwargs, observed, num_simulations, seed, chunk_size) -> tuple:
    latents, observations, depth = _layout(model, args, kwargs, observed)
    shapes = {n: torch.Size(s["shape"]) for n, s in {**latents, **observations}.items()}
    probe = _run_chunk(model, args, kwargs, shapes, depth, chunk_seed(seed, _PROBE), 2)
    manifest = {
        "format": FORMAT, "version": VERSION, "model": _model_name(model), "seed": seed,
        "chunk_size": chunk_size, "num_simulations": num_simulations, "latents": latents,
        "observations": observations,
        "probe": {k: v.double().flatten().tolist() for k, v in probe.items()},
    }
    return manifest, shapes, depth


def _split(draws: dict, manifest: dict, dtypes: dict) -> tuple[dict, dict]:
    lat = {k: draws[k].to(dtypes[k]) for k in manifest["latents"]}
    obs = {k: draws[k].to(dtypes[k]) for k in manifest["observations"]}
    return lat, obs


def simulate(
    model: Callable,
    num_simulations: int,
    *,
    observed: str | Sequence[str],
    seed: int = 0,
    backend: str = "local",
    chunk_size: int | None = None,
    path: str | os.PathLike | None = None,
    address: str | None = None,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
) -> SimulationBank:
    """Draw ``num_simulations`` pairs ``(u, y) ~ p(u) p(y | u)`` from ``model``'s prior predictive.

    Args:
        model: a Pyro model; its ``observed`` sites are sampled (``poutine.uncondition``).
        num_simulations: number of pairs ``N``.
        observed: the observed site name (or names); every other sample site that the model
            does not observe is a latent.
        seed: chunk ``i`` is drawn with the torch seed :func:`chunk_seed` ``(seed, i)``; the
            same ``seed`` and ``chunk_size`` give the same pairs on every backend and any
            number of workers (the global RNG is left untouched).
        backend: ``"local"`` (chunks in this process, vectorized) or ``"ray"`` (one Ray task
            per chunk; uses a running ``ray.init()`` if there is one, else starts a local
            cluster or connects to ``address``).
        chunk_size: pairs per chunk (default ``min(N, 10_000)``); part of the bank's identity.
        path: folder for the shards. Each chunk is written atomically as it finishes; a rerun
            with the same arguments skips the shards already written (resume after a crash or
            Ctrl-C); a corrupted shard or one from another model, seed or shape is a
            ``ValueError`` naming the file. ``None`` keeps the bank in memory.
        address: Ray cluster address (``"auto"``, ``"ray://head:10001"``) for ``backend="ray"``.
        model_args, model_kwargs: the model's arguments.

    Returns:
        A :class:`~pyro_kr.simulation.SimulationBank`.

    Example:
        >>> import pyro, pyro.distributions as dist, torch, pyro_kr
        >>> def model(y=None):
        ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...     return pyro.sample("y", dist.Normal(z, 0.1), obs=y)
        >>> bank = pyro_kr.simulate(model, 1000, observed="y", seed=0)
        >>> len(bank), float(torch.corrcoef(torch.stack(
        ...     [bank.latents["z"], bank.observations["y"]]))[0, 1]) > 0.99
        (1000, True)
    """
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    check_dim("num_simulations", num_simulations)
    check_dim("seed", seed, minimum=0)
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if address is not None and backend != "ray":
        raise ValueError("address= is a Ray cluster address: pass it with backend='ray'")
    chunk_size = min(num_simulations, DEFAULT_CHUNK_SIZE) if chunk_size is None else chunk_size
    check_dim("chunk_size", chunk_size)
    chunk_size = min(chunk_size, num_simulations)
    args, kwargs = tuple(model_args), dict(model_kwargs or {})
    observed = site_names(observed)
    manifest, shapes, depth = _manifest(
        model, args, kwargs, observed, num_simulations, seed, chunk_size
    )
    dtypes = {n: getattr(torch, s["dtype"].split(".")[-1])
              for n, s in {**manifest["latents"], **manifest["observations"]}.items()}
    n_chunks = num_chunks(num_simulations, chunk_size)
    sizes = [min(chunk_size, num_simulations - i * chunk_size) for i in range(n_chunks)]
    folder = None if path is None else Path(path)
    todo = list(range(n_chunks))
    if folder is not None:
        if (folder / MANIFEST).exists():
            check_manifest(folder, manifest)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(folder / MANIFEST) as tmp:
                tmp.write_text(json.dumps(manifest, indent=1))
        done = [i for i in todo if shard_path(folder, i).exists()]
        for i in done:  # refuse a corrupted or foreign shard before spending compute
            read_shard(folder, i, manifest)
        todo = [i for i in todo if i not in set(done)]
    chunks: dict[int, tuple] = {}

    def finish(i: int, draws: dict) -> None:
        lat, obs = _split(draws, manifest, dtypes)
        if folder is not None:
            write_shard(folder, i, manifest, lat, obs)
        else:
            chunks[i] = (lat, obs)

    jobs = [(i, chunk_seed(seed, i), sizes[i]) for i in todo]
    if backend == "local":
        for i, s, n in jobs:
            finish(i, _run_chunk(model, args, kwargs, shapes, depth, s, n))
    else:
        _run_on_ray(jobs, (model, args, kwargs, shapes, depth), finish, address)
    if folder is not None:
        return SimulationBank(manifest, path=folder)
    return SimulationBank(manifest, chunks=[chunks[i] for i in range(n_chunks)])


def _run_on_ray(jobs, payload, finish, address) -> None:
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"backend='ray' needs Ray: {_INSTALL}") from exc
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1)(_run_chunk)
        shared = [ray.put(x) for x in payload]
        limit = max(2, 2 * int(ray.available_resources().get("CPU", 1)))
        pending: dict = {}
        queue = list(jobs)
        while queue or pending:
            while queue and len(pending) < limit:
                i, s, n = queue.pop(0)
                pending[remote.remote(*shared, s, n)] = i
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                finish(pending.pop(ref), ray.get(ref))
    finally:
        if started:
            ray.shutdown()
