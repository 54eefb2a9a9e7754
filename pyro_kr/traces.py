"""Trace utilities: the one place that reads Pyro traces and runs a model over many draws.

Everything in ``pyro_kr`` that runs a model or a guide "once per draw" goes through here:

* :func:`sample_sites`, :func:`is_subsample`: the sample sites of a trace (subsample sites are
  the index draws of ``pyro.plate(..., subsample_size=...)``, not latents);
* :func:`plate_depth`: the plate nesting depth of one or more traces, so an outer plate of
  draws can sit at ``dim = -(depth + 1)``, left of every model plate;
* :func:`draws_plate`, :func:`as_draws`, :func:`log_prob_per_draw`: run a callable inside
  such an outer plate and read back ``(n, *shape)`` values and ``(n,)`` log-probs;
* :func:`vectorize_or_loop`: the vectorized pass with a fallback to a loop over draws (one
  warning, one message);
* :func:`simulate_pairs`: ``n`` seeded prior-predictive draws of chosen sites;
* :class:`LatentSite`, :func:`latent_sites`, :func:`pack`, :func:`unpack`: the layout of
  latent sites as one unconstrained vector (as Pyro's ``AutoContinuous`` packs them);
* :func:`guide_plates`, :func:`guess_plate_nesting`: the two Pyro internals the library needs
  (``AutoGuide._create_plates``, ``ELBO._guess_max_plate_nesting``), wrapped here only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pyro
import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.poutine.util import site_is_subsample

__all__ = [
    "DRAWS_PLATE",
    "SIMULATION_PLATE",
    "LatentSite",
    "as_draws",
    "draws_plate",
    "guess_plate_nesting",
    "guide_plates",
    "is_subsample",
    "latent_sites",
    "log_prob_per_draw",
    "pack",
    "plate_depth",
    "sample_sites",
    "simulate_pairs",
    "site_names",
    "unpack",
    "vectorize_or_loop",
]

#: Name of the outer plate of draws (left of every model plate).
DRAWS_PLATE = "_pyro_kr_draws"
#: Name of :func:`simulate_pairs`' outer plate: another name, because a guide that simulates
#: (the amortized reverse-mode pair) runs inside a plate of draws when it is diagnosed.
SIMULATION_PLATE = "_pyro_kr_simulations"

T = TypeVar("T")


def is_subsample(site: dict) -> bool:
    """Whether ``site`` is the index draw of a subsampling ``pyro.plate`` (not a latent)."""
    return site["type"] == "sample" and site_is_subsample(site)


def sample_sites(trace, *, subsample: bool = True) -> list[dict]:
    """The sample sites of ``trace`` in trace order (``subsample=False`` drops index draws)."""
    return [
        s for s in trace.nodes.values()
        if s["type"] == "sample" and (subsample or not site_is_subsample(s))
    ]


def plate_depth(*traces) -> int:
    """The plate nesting depth of one or more traces (0 for a model without plates).

    The depth counts the vectorized plates a site sits in and the batch dims of its
    distribution, so an outer plate at ``dim=-(depth + 1)`` is left of every batch dim.

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     with pyro.plate("data", 3):
        ...         pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> plate_depth(poutine.trace(model).get_trace())
        1
    """
    depth = 0
    for trace in traces:
        for site in sample_sites(trace, subsample=False):
            dims = [-f.dim for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None]
            depth = max(depth, len(site["fn"].batch_shape), *dims)
    return depth


def draws_plate(fn: Callable[..., T], n: int, depth: int, name: str = DRAWS_PLATE):
    """``fn`` wrapped to run inside an outer ``pyro.plate`` of ``n`` draws at ``-(depth + 1)``.

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     return pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> draws_plate(model, 4, depth=0)().shape
        torch.Size([4])
    """

    def wrapped(*args, **kwargs):
        with pyro.plate(name, n, dim=-depth - 1):
            return fn(*args, **kwargs)

    return wrapped


def as_draws(value: torch.Tensor, n: int, shape: torch.Size | Sequence[int]) -> torch.Tensor:
    """Read ``value`` from a vectorized pass as ``(n, *shape)`` (a draws-free value is expanded).

    Raises:
        ValueError: ``value`` holds neither ``n`` draws of ``shape`` nor one.
    """
    shape = tuple(shape)
    if value.numel() == n * math.prod(shape):
        return value.reshape((n,) + shape)
    if value.numel() == math.prod(shape):
        return value.reshape(shape).expand((n,) + shape)
    raise ValueError(f"value of shape {tuple(value.shape)} is not {n} draws of {shape}")


def log_prob_per_draw(log_prob: torch.Tensor | float, n: int, depth: int) -> torch.Tensor:
    """A site's log-prob from a pass in :func:`draws_plate` (draws at ``dim = -(depth + 1)``),
    summed per draw: ``(n,)``. A log-prob without the draws dim (a site outside the plate of
    draws) counts for every draw.

    Raises:
        ValueError: the log-prob does not broadcast over ``n`` draws.

    Example:
        >>> log_prob_per_draw(torch.ones(4, 3), 4, depth=1)  # 4 draws, a plate of 3
        tensor([3., 3., 3., 3.])
    """
    lp = torch.as_tensor(log_prob)
    if lp.dim() < depth + 1:
        return lp.sum().expand(n)
    k = lp.dim() - depth - 1
    if math.prod(lp.shape[:k]) != 1 or lp.shape[k] not in (1, n):
        raise ValueError(f"log-prob of shape {tuple(lp.shape)} does not broadcast over draws")
    lp = lp.reshape(lp.shape[k:]).reshape(lp.shape[k], -1).sum(-1)
    return lp.expand(n)


def vectorize_or_loop(
    vectorized: Callable[[], T],
    looped: Callable[[], T],
    *,
    vectorize: bool | None,
    what: str,
    n: int,
    stacklevel: int = 3,
) -> tuple[T, bool]:
    """Run ``vectorized()``, falling back to ``looped()`` with a ``RuntimeWarning``.

    Args:
        vectorized, looped: the two ways to compute the same result.
        vectorize: ``True`` vectorized only (errors propagate), ``False`` loop only, ``None``
            vectorized with a fallback to the loop.
        what: what is computed, for the warning (``"vectorized {what} failed ...``).
        n: number of draws, for the warning.

    Returns:
        ``(result, whether it was vectorized)``.

    Example:
        >>> def bad():
        ...     raise RuntimeError("shape mismatch")
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     vectorize_or_loop(bad, lambda: 1, vectorize=None, what="draws", n=5)
        (1, False)
        >>> str(w[0].message)[:55]
        'vectorized draws failed (RuntimeError: shape mismatch);'
    """
    if vectorize is not False:
        try:
            return vectorized(), True
        except Exception as error:  # noqa: BLE001 - any failure means: use the loop
            if vectorize:
                raise
            first = (str(error).splitlines() or [""])[0]
            warnings.warn(
                f"vectorized {what} failed ({type(error).__name__}: {first}); falling back to "
                f"a loop over {n} draws",
                RuntimeWarning,
                stacklevel=stacklevel,
            )
    return looped(), False


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

    The model runs once inside an outer ``pyro.plate`` of ``n`` draws left of all of its own
    plates, with its observed sites unconditioned (``poutine.uncondition``); a model that
    does not broadcast over the outer plate falls back to a loop (with a ``RuntimeWarning``).

    Args:
        model: the Pyro model; its observed sites are unconditioned.
        args, kwargs: the model's arguments.
        shapes: site name -> shape of one value (as in a single trace of the model).
        n: number of draws.
        depth: the model's plate nesting depth (:func:`plate_depth`).
        seed: seed for the draws (the global RNG state is restored afterwards); ``None`` draws
            from the global RNG (what a training loop wants, for exact resume).
        vectorize: ``True`` vectorized only, ``False`` loop only, ``None`` vectorized with a
            fallback to the loop.

    Returns:
        dict name -> ``(n, *shape)`` (no gradient).

    Example:
        >>> import pyro.distributions as dist
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

    def vectorized():
        trace = poutine.trace(draws_plate(free, n, depth, SIMULATION_PLATE)).get_trace(
            *args, **kwargs
        )
        return {name: as_draws(trace.nodes[name]["value"], n, s) for name, s in shapes.items()}

    def looped():
        out: dict[str, list[torch.Tensor]] = {name: [] for name in shapes}
        for _ in range(n):
            trace = poutine.trace(free).get_trace(*args, **kwargs)
            for name in shapes:
                out[name].append(trace.nodes[name]["value"].reshape(shapes[name]))
        return {name: torch.stack(values) for name, values in out.items()}

    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad(), poutine.block():
            return vectorize_or_loop(
                vectorized, looped, vectorize=vectorize, what="simulation", n=n, stacklevel=4
            )[0]


def site_names(names: str | Sequence[str]) -> list[str]:
    """Normalize ``observed`` (a name or a sequence of names) to a non-empty list of names."""
    if isinstance(names, str):
        return [names]
    names = list(names)
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"observed must be a site name or a list of site names, got {names!r}")
    return names


@dataclass(frozen=True)
class LatentSite:
    """One latent sample site: its name, value shape, unconstrained shape and support."""

    name: str
    shape: torch.Size
    unconstrained_shape: torch.Size
    support: Any

    @property
    def numel(self) -> int:
        """Number of unconstrained coordinates of the site."""
        return int(self.unconstrained_shape.numel())


def latent_sites(trace, exclude: Sequence[str] = ()) -> list[LatentSite]:
    """The non-subsample sample sites of ``trace`` not named in ``exclude``, in trace order."""
    out = []
    for site in sample_sites(trace, subsample=False):
        if site["name"] in exclude:
            continue
        support = site["fn"].support
        value = site["value"]
        unconstrained = biject_to(support).inv(value)
        out.append(LatentSite(site["name"], value.shape, unconstrained.shape, support))
    return out


def pack(values: dict[str, torch.Tensor], sites: Sequence[LatentSite], num: int) -> torch.Tensor:
    """Pack ``num`` constrained draws ``name -> (num, *shape)`` into unconstrained ``(num, dim)``.

    Example:
        >>> import pyro.distributions as dist
        >>> def model():
        ...     pyro.sample("s", dist.LogNormal(0.0, 1.0))
        >>> sites = latent_sites(poutine.trace(model).get_trace())
        >>> pack({"s": torch.tensor([1.0, 2.0])}, sites, 2).squeeze(-1)
        tensor([0.0000, 0.6931])
    """
    pieces = []
    for site in sites:
        value = values[site.name].reshape((num,) + tuple(site.shape))
        pieces.append(biject_to(site.support).inv(value).reshape(num, site.numel))
    return torch.cat(pieces, dim=-1)


def unpack(u: torch.Tensor, sites: Sequence[LatentSite]) -> dict[str, torch.Tensor]:
    """Map packed unconstrained latents ``(..., dim)`` to constrained values ``(..., *shape)``.

    Raises:
        ValueError: the last dim of ``u`` is not the packed size of ``sites``.
    """
    dim = sum(site.numel for site in sites)
    if u.shape[-1] != dim:
        raise ValueError(f"unpack expected shape (..., {dim}), got {tuple(u.shape)}")
    out, start = {}, 0
    batch = u.shape[:-1]
    for site in sites:
        piece = u[..., start : start + site.numel].reshape(batch + site.unconstrained_shape)
        out[site.name] = biject_to(site.support)(piece)
        start += site.numel
    return out


def guide_plates(guide, *args, **kwargs) -> dict[str, Any]:
    """The plates of an autoguide's prototype model (``name -> pyro.plate``), for its args.

    Wraps Pyro's ``AutoGuide._create_plates``, which builds each plate once per call with the
    model's subsample sizes; this is the only place the library calls it.
    """
    return guide._create_plates(*args, **kwargs)


def guess_plate_nesting(elbo, model: Callable, guide: Callable, args: tuple, kwargs: dict):
    """Set ``elbo.max_plate_nesting`` from one trace of ``(model, guide)`` (Pyro's guess).

    Wraps Pyro's ``ELBO._guess_max_plate_nesting`` (it runs the pair once, consuming RNG,
    exactly as Pyro's first step would); this is the only place the library calls it.
    """
    elbo._guess_max_plate_nesting(model, guide, args, kwargs)
