"""Vectorized, seeded prior-predictive simulation of ``(latents, observations)`` pairs.

The model runs once inside an outer ``pyro.plate`` of size ``n`` placed left of all of its
own plates, with its observed sites unconditioned (``poutine.uncondition``), so one call
returns ``n`` joint draws ``(u, y) ~ p(u) p(y | u)``. A model that does not broadcast over an
outer plate falls back to a loop over draws (with a ``RuntimeWarning``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import pyro
import torch
from pyro import poutine

__all__ = ["plate_depth", "simulate_pairs"]

_SIM_PLATE = "_pyro_kr_simulations"


def plate_depth(trace) -> int:
    """The plate nesting depth of a model trace (0 for a model without plates)."""
    depth = 0
    for site in trace.nodes.values():
        if site["type"] != "sample" or type(site["fn"]).__name__ == "_Subsample":
            continue
        dims = [-f.dim for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None]
        depth = max(depth, len(site["fn"].batch_shape), *dims)
    return depth


def _as_draws(value: torch.Tensor, n: int, shape: torch.Size) -> torch.Tensor:
    if value.numel() == n * math.prod(shape):
        return value.reshape((n,) + tuple(shape))
    if value.numel() == math.prod(shape):
        return value.reshape(shape).expand((n,) + tuple(shape))
    raise ValueError(f"value of shape {tuple(value.shape)} is not {n} draws of {tuple(shape)}")


def _vectorized(free, args, kwargs, n, depth, shapes):
    with pyro.plate(_SIM_PLATE, n, dim=-depth - 1):
        trace = poutine.trace(free).get_trace(*args, **kwargs)
    return {name: _as_draws(trace.nodes[name]["value"], n, s) for name, s in shapes.items()}


def _looped(free, args, kwargs, n, shapes):
    out: dict[str, list[torch.Tensor]] = {name: [] for name in shapes}
    for _ in range(n):
        trace = poutine.trace(free).get_trace(*args, **kwargs)
        for name in shapes:
            out[name].append(trace.nodes[name]["value"].reshape(shapes[name]))
    return {name: torch.stack(values) for name, values in out.items()}


def simulate_pairs(
    model: Callable,
    args: tuple,
    kwargs: dict,
    shapes: dict[str, torch.Size],
    n: int,
    *,
    depth: int,
    seed: int | None = None,
    vectorize: bool | None = None,
) -> dict[str, torch.Tensor]:
    """Draw ``n`` joint prior-predictive values of the sites in ``shapes``.

    Args:
        model: the Pyro model; its observed sites are unconditioned.
        args, kwargs: the model's arguments.
        shapes: site name -> shape of one value (as in a single trace of the model).
        n: number of draws.
        depth: the model's plate nesting depth (:func:`plate_depth`).
        seed: seed for the draws (the global RNG state is restored afterwards); ``None`` draws
            from the global RNG (what the training loop wants, for exact resume).
        vectorize: ``True`` vectorized only, ``False`` loop only, ``None`` vectorized with a
            fallback to the loop.

    Returns:
        dict name -> ``(n, *shape)`` (no gradient).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(y=None):
        ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...     return pyro.sample("y", dist.Normal(z, 0.1), obs=y)
        >>> out = simulate_pairs(model, (), {}, {"z": torch.Size(), "y": torch.Size()}, 5,
        ...                      depth=0, seed=0)
        >>> tuple(out["y"].shape)
        (5,)
    """
    free = poutine.uncondition(model)
    shapes = {k: torch.Size(v) for k, v in shapes.items()}
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad(), poutine.block():
            if vectorize is not False:
                try:
                    return _vectorized(free, args, kwargs, n, depth, shapes)
                except Exception as error:  # noqa: BLE001 - any failure means: use the loop
                    if vectorize:
                        raise
                    first = (str(error).splitlines() or [""])[0]
                    warnings.warn(
                        f"vectorized simulation failed ({type(error).__name__}: {first}); "
                        f"falling back to a loop over {n} simulations",
                        RuntimeWarning,
                    )
            return _looped(free, args, kwargs, n, shapes)


def site_names(names: str | Sequence[str]) -> list[str]:
    """Normalize ``observed`` (a name or a sequence of names) to a non-empty list of names."""
    if isinstance(names, str):
        return [names]
    names = list(names)
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"observed must be a site name or a list of site names, got {names!r}")
    return names
