"""Is a (model, guide) pair batch-safe? The check behind every vectorized pass over draws.

Pyro vectorizes draws (``Trace_ELBO(vectorize_particles=True)``, ``Predictive(parallel=True)``)
by running the guide and the model once inside an outer ``pyro.plate`` of ``n`` draws placed
left of every model plate. That is only right for a *batch-safe* model: one that computes with
``...``-style broadcasting, so a latent of shape ``(n, 1, *shape)`` gives ``n`` independent
results. A tutorial model such as ``logits = X @ w + b`` is not (``X @ w`` contracts the
wrong dim when ``w`` has a leading draws dim): it either raises a shape error or, worse,
broadcasts draws against draws and returns a wrong value of ``n`` times the size.

:func:`batch_problem` runs the pair once vectorized over a few draws (RNG state restored,
no gradients) and compares, site by site, the vectorized log-probability of two draws with
the model replayed unvectorized on the same values. It returns ``None`` for a batch-safe pair
and otherwise a one-line reason naming the site.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from pyro_kr.traces import is_subsample, sample_sites

__all__ = [
    "BATCH_SAFE_HINT",
    "batch_problem",
    "prototype",
    "quiet_plate_guess",
    "subsampled_plates",
]

#: How to make a model batch-safe; appended to every warning and error about it.
BATCH_SAFE_HINT = (
    "write the model with batch-safe ops that act on the rightmost dims and broadcast on the "
    "left (e.g. `(X * w).sum(-1)` instead of `X @ w`, `x[..., i]` instead of `x[i]`)"
)

_PLATE = "_pyro_kr_batch_probe"


def subsampled_plates(*traces) -> dict[str, tuple[int, int]]:
    """``plate name -> (subsample size, full size)`` of every subsampling plate in ``traces``."""
    out = {}
    for trace in traces:
        for site in sample_sites(trace):
            for frame in site["cond_indep_stack"]:
                if frame.full_size is not None and frame.size < frame.full_size:
                    out[frame.name] = (frame.size, frame.full_size)
    return out


def _per_draw(site: dict, n: int, dim: int) -> torch.Tensor | None:
    """Site log-prob reduced to ``(n,)`` (draws at ``dim``), or ``None`` if it does not fit."""
    lp = site["log_prob"]
    if not torch.is_tensor(lp) or lp.dim() < -dim:
        return torch.as_tensor(lp).sum().expand(n)
    k = lp.dim() + dim
    if math.prod(lp.shape[:k]) != 1 or lp.shape[k] not in (1, n):
        return None
    return lp.reshape(lp.shape[k:]).reshape(lp.shape[k], -1).sum(-1).expand(n)


def _describe(who: str, error: Exception, partial) -> str:
    first = (str(error).splitlines() or [""])[0]
    latent = [
        f"{s['name']} {tuple(s['value'].shape)}"
        for s in sample_sites(partial)
        if not s["is_observed"] and not is_subsample(s) and torch.is_tensor(s["value"])
    ]
    after = latent[-1].split(" ")[0] if latent else None
    where = f"right after sample site {after!r}" if after else "before its first sample site"
    shapes = f" (vectorized latent shapes: {', '.join(latent)})" if latent else ""
    return f"the {who} raised {type(error).__name__} {where}: {first}{shapes}"


def batch_problem(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    num_draws: int,
    dim: int,
) -> str | None:
    """Return ``None`` if ``(model, guide)`` vectorizes correctly, else why not (one line).

    Args:
        model, guide: the Pyro pair; ``args`` / ``kwargs`` are passed to both.
        num_draws: size ``n >= 2`` of the draws plate.
        dim: the draws plate's dim (negative, left of every model plate).

    The RNG state is restored afterwards and nothing is recorded in the param store's
    gradients, so calling this does not change a seeded run.

    Example:
        >>> import pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> X = torch.randn(10, 3)
        >>> def model():
        ...     w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        ...     with pyro.plate("data", 10):
        ...         pyro.sample("y", dist.Normal(X @ w, 1.0), obs=torch.zeros(10))
        >>> batch_problem(model, AutoNormal(model), (), {}, num_draws=3, dim=-2)[:53]
        'the model raised RuntimeError right after sample site'
    """
    if num_draws < 2:
        raise ValueError(f"num_draws must be >= 2, got {num_draws}")
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []

    def vec(fn):
        def wrapped(*a, **k):
            with pyro.plate(_PLATE, num_draws, dim=dim):
                return fn(*a, **k)

        return wrapped

    with torch.random.fork_rng(devices=devices), torch.no_grad(), poutine.block():
        guide_handler = poutine.trace(vec(guide))
        try:
            guide_tr = guide_handler.get_trace(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any failure means: not batch-safe
            return _describe("guide", error, guide_handler.msngr.trace)
        model_handler = poutine.trace(poutine.replay(vec(model), trace=guide_tr))
        try:
            model_tr = model_handler.get_trace(*args, **kwargs)
            guide_tr.compute_log_prob()
            model_tr.compute_log_prob()
        except Exception as error:  # noqa: BLE001 - any failure means: not batch-safe
            return _describe("model", error, model_handler.msngr.trace)
        for what, trace in (("guide", guide_tr), ("model", model_tr)):
            for site in sample_sites(prune_subsample_sites(trace)):
                if _per_draw(site, num_draws, dim) is None:
                    return (
                        f"the {what}'s site {site['name']!r} has a log-prob of shape "
                        f"{tuple(site['log_prob'].shape)} when vectorized over {num_draws} "
                        f"draws at dim {dim}: draws were broadcast against draws"
                    )
        return _compare_draws(model, args, kwargs, model_tr, num_draws, dim)


def _compare_draws(model, args, kwargs, model_tr, n: int, dim: int) -> str | None:
    """Replay draws ``0`` and ``n - 1`` unvectorized and compare each site's log-prob."""
    sites = sample_sites(model_tr)
    subsample = {s["name"]: s["value"] for s in sites if is_subsample(s)}
    latent = [s for s in sites if not s["is_observed"] and not is_subsample(s)]
    reference = poutine.trace(model).get_trace(*args, **kwargs)
    for i in (0, n - 1):
        data = dict(subsample)
        for site in latent:
            if site["name"] not in reference.nodes:
                return f"the model's site {site['name']!r} appears only when vectorized"
            shape = reference.nodes[site["name"]]["value"].shape
            value = site["value"]
            k = value.dim() - site["fn"].event_dim + dim
            if k >= 0 and value.shape[k] == n:
                value = value.select(k, i)
            if value.numel() != math.prod(shape):
                return (
                    f"the model's site {site['name']!r} has shape {tuple(site['value'].shape)} "
                    f"when vectorized over {n} draws, expected {n} draws of {tuple(shape)}"
                )
            data[site["name"]] = value.reshape(shape)
        single = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
        single.compute_log_prob()
        for site in sample_sites(prune_subsample_sites(model_tr)):
            if site["name"] not in single.nodes:
                return f"the model's site {site['name']!r} appears only when vectorized"
            got = _per_draw(site, n, dim)[i]
            expected = torch.as_tensor(single.nodes[site["name"]]["log_prob_sum"]).to(got)
            if not torch.isclose(got, expected, rtol=1e-4, atol=1e-3):
                return (
                    f"the model's site {site['name']!r} has log-prob {float(got):.6g} for draw "
                    f"{i} when vectorized but {float(expected):.6g} when run alone: the model "
                    "mixes draws (an op that does not broadcast over a leading dim)"
                )
    return None


class _DropPlateGuess(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Guessed max_plate_nesting")


_DROP_PLATE_GUESS = _DropPlateGuess()


@contextmanager
def quiet_plate_guess() -> Iterator[None]:
    """Drop Pyro's ``Guessed max_plate_nesting = k`` INFO line (and only that line)."""
    logger = logging.getLogger("pyro.infer.elbo")
    logger.addFilter(_DROP_PLATE_GUESS)
    try:
        yield
    finally:
        logger.removeFilter(_DROP_PLATE_GUESS)


def prototype(model: Callable, guide: Callable, args: tuple, kwargs: dict):
    """One unvectorized ``(guide trace, model trace)``; RNG state restored, no gradients."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), poutine.block():
        guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
        model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(
            *args, **kwargs
        )
    return guide_tr, model_tr
