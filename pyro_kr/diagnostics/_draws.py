"""Draw from a guide and score every draw under the model: the raw material of diagnostics.

For ``N`` draws ``z_s ~ q`` we record the constrained latent values, the importance log
weights ``log p(x, z_s) - log q(z_s)``, the pointwise log likelihood of every observed site and
the site layout (shapes, plate dims). Two strategies:

* vectorized (default): the guide and the replayed model run once inside an outer
  ``pyro.plate`` of size ``N`` placed left of every model plate (as Pyro's
  ``Trace_ELBO(vectorize_particles=True)`` does); then the model's log joint of the first and
  last draws is recomputed without the plate, and a mismatch (a model that does not broadcast)
  falls back to
* a loop over draws: ``N`` pairs of ``poutine.trace(guide)`` and
  ``poutine.trace(poutine.replay(model, guide_trace))``; slower, works for any model.

The vectorized pass runs in chunks of draws when ``N`` times the latent numel per draw exceeds
``pyro_kr.guides.chunks.SAMPLE_CHUNK_COORDINATES`` (read at call time; divided by the guide's
``sampling_cost``, 8 for ``AutoKR(structure="plates")``), so its memory stays
bounded; the chunks' results are concatenated. A batch within the budget runs in one pass, with
the same random stream as before chunking; chunked, each chunk draws its own base sample.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from pyro_kr._batching import BATCH_SAFE_HINT, batch_problem, subsampled_plates
from pyro_kr._validation import check_dim
from pyro_kr.guides import chunks
from pyro_kr.traces import (
    as_draws,
    draws_plate,
    log_prob_per_draw,
    plate_depth,
    sample_sites,
    vectorize_or_loop,
)


@dataclass(frozen=True, eq=False)
class GuideDraws:
    """Guide draws scored under the model (all tensors detached, on the model's device).

    Attributes:
        latent: ``name -> (N, *site shape)`` constrained latent values, in model order.
        log_joint: ``(N,)`` ``log p(x, z_s)`` (scaled and masked as the model says).
        log_q: ``(N,)`` ``log q(z_s)`` of the guide (auxiliary sites included).
        log_likelihood: ``name -> (N, *batch shape)`` pointwise unscaled log likelihood of each
            observed site.
        observed: ``name -> value`` of the observed sites.
        dims: ``name -> dim names`` of each latent and observed value (plate names where a
            plate indexes the dim, else ``"{name}_dim_{k}"``).
        log_likelihood_dims: ``name -> dim names`` of each pointwise log likelihood.
        coords: ``plate name -> list of indices``.
        vectorized: whether the draws were computed in one vectorized pass.
        plate_depth: the model's plate nesting depth (the draws plate sits left of it).
        batch_ndims: ``name -> number of batch dims`` of each latent and observed site.
    """

    latent: dict[str, torch.Tensor]
    log_joint: torch.Tensor
    log_q: torch.Tensor
    log_likelihood: dict[str, torch.Tensor]
    observed: dict[str, torch.Tensor]
    dims: dict[str, list[str]]
    log_likelihood_dims: dict[str, list[str]]
    coords: dict[str, list[int]] = field(default_factory=dict)
    vectorized: bool = True
    plate_depth: int = 0
    batch_ndims: dict[str, int] = field(default_factory=dict)

    @property
    def log_weight(self) -> torch.Tensor:
        """``(N,)`` importance log weights ``log p(x, z) - log q(z)``."""
        return self.log_joint - self.log_q


def _site_dims(site: dict) -> tuple[list[str], int, dict[str, list[int]]]:
    """Dim names of a site's value, its number of batch dims, and plate coordinates."""
    value_ndim = site["value"].dim()
    batch_ndim = len(site["fn"].batch_shape)
    frames = {f.dim: f for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None}
    names, coords = [], {}
    for k in range(value_ndim):
        frame = frames.get(k - batch_ndim) if k < batch_ndim else None
        if frame is not None and site["value"].shape[k] == frame.size:
            names.append(frame.name)
            coords[frame.name] = list(range(frame.size))
        else:
            names.append(f"{site['name']}_dim_{k}")
    return names, batch_ndim, coords


def _prototype(guide: Callable, model: Callable, args: tuple, kwargs: dict):
    guide_tr = prune_subsample_sites(poutine.trace(guide).get_trace(*args, **kwargs))
    model_tr = prune_subsample_sites(
        poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(*args, **kwargs)
    )
    return guide_tr, model_tr


def _vectorized(guide, model, args, kwargs, n, depth, latent_names, obs_sites):
    guide_tr = prune_subsample_sites(
        poutine.trace(draws_plate(guide, n, depth)).get_trace(*args, **kwargs)
    )
    model_tr = prune_subsample_sites(
        poutine.trace(poutine.replay(draws_plate(model, n, depth), trace=guide_tr)).get_trace(
            *args, **kwargs
        )
    )
    guide_tr.compute_log_prob()
    model_tr.compute_log_prob()
    log_q = sum(log_prob_per_draw(s["log_prob"], n, depth) for s in sample_sites(guide_tr))
    log_joint = sum(log_prob_per_draw(s["log_prob"], n, depth) for s in sample_sites(model_tr))
    latent = {
        name: as_draws(model_tr.nodes[name]["value"], n, shape)
        for name, shape in latent_names.items()
    }
    loglik = {
        name: as_draws(model_tr.nodes[name]["unscaled_log_prob"], n, batch_shape)
        for name, batch_shape in obs_sites.items()
    }
    return latent, log_joint, log_q, loglik


def _vectorized_in_chunks(guide, model, args, kwargs, n, depth, latent_names, obs_sites):
    """:func:`_vectorized` in chunks of draws of at most ``SAMPLE_CHUNK_COORDINATES`` latent
    coordinates each (divided by the guide's ``sampling_cost``, if it declares one),
    concatenated along the draws dim (one call when all ``n`` fit)."""
    per_draw = sum(math.prod(shape) for shape in latent_names.values())
    rows = chunks.chunk_rows(n, per_draw, cost=chunks.sampling_cost(guide))
    if rows >= n:
        return _vectorized(guide, model, args, kwargs, n, depth, latent_names, obs_sites)
    parts = [
        _vectorized(guide, model, args, kwargs, min(rows, n - start), depth, latent_names,
                    obs_sites)
        for start in range(0, n, rows)
    ]
    latent, log_joint, log_q, loglik = zip(*parts, strict=True)
    return (
        {name: torch.cat([p[name] for p in latent]) for name in latent_names},
        torch.cat(log_joint),
        torch.cat(log_q),
        {name: torch.cat([p[name] for p in loglik]) for name in obs_sites},
    )


def _model_log_joint(model, args, kwargs, values: dict[str, torch.Tensor]) -> torch.Tensor:
    tr = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
    return tr.log_prob_sum()


def _looped(guide, model, args, kwargs, n, latent_names, obs_sites):
    latent = {name: [] for name in latent_names}
    loglik = {name: [] for name in obs_sites}
    log_joint, log_q = [], []
    for _ in range(n):
        guide_tr, model_tr = _prototype(guide, model, args, kwargs)
        log_q.append(guide_tr.log_prob_sum())
        log_joint.append(model_tr.log_prob_sum())
        for name in latent_names:
            latent[name].append(model_tr.nodes[name]["value"])
        for name in obs_sites:
            site = model_tr.nodes[name]
            loglik[name].append(site["fn"].log_prob(site["value"]))
    return (
        {k: torch.stack(v) for k, v in latent.items()},
        torch.stack(log_joint),
        torch.stack(log_q),
        {k: torch.stack(v) for k, v in loglik.items()},
    )


def draw_guide(
    guide: Callable,
    model: Callable,
    args: tuple = (),
    kwargs: dict | None = None,
    *,
    num_samples: int = 4000,
    seed: int = 0,
    vectorize: bool | None = None,
) -> GuideDraws:
    """Draw ``num_samples`` times from ``guide`` and score each draw under ``model``.

    Args:
        guide: a Pyro guide (any autoguide, or a callable with the model's signature).
        model: the Pyro model; ``args`` / ``kwargs`` are passed to both.
        args: positional model arguments.
        kwargs: keyword model arguments.
        num_samples: number of draws ``N``.
        seed: seed of the draws; the global torch RNG state is restored afterwards.
        vectorize: ``True`` vectorized only (errors propagate), ``False`` loop only,
            ``None`` vectorized with a fallback to the loop (with a warning). The vectorized
            pass runs in chunks of draws of at most
            :data:`~pyro_kr.guides.chunks.SAMPLE_CHUNK_COORDINATES` latent coordinates.

    Returns:
        A :class:`GuideDraws`.

    Example:
        >>> import pyro
        >>> import pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> def model():
        ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...     pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(0.5))
        >>> d = draw_guide(AutoNormal(model), model, num_samples=100)
        >>> d.latent["z"].shape, d.log_weight.shape
        (torch.Size([100]), torch.Size([100]))
    """
    check_dim("num_samples", num_samples)
    kwargs = {} if kwargs is None else dict(kwargs)
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), poutine.block():
        torch.manual_seed(seed)
        raw_guide_tr = poutine.trace(guide).get_trace(*args, **kwargs)
        raw_model_tr = poutine.trace(poutine.replay(model, trace=raw_guide_tr)).get_trace(
            *args, **kwargs
        )
        _refuse_subsampling(raw_guide_tr, raw_model_tr)
        guide_tr = prune_subsample_sites(raw_guide_tr)
        model_tr = prune_subsample_sites(raw_model_tr)
        latent_sites = [
            s for s in sample_sites(model_tr)
            if not s["is_observed"] and s["name"] in guide_tr.nodes
            and not guide_tr.nodes[s["name"]]["infer"].get("is_auxiliary", False)
        ]
        obs = [s for s in sample_sites(model_tr) if s["is_observed"]]
        latent_names = {s["name"]: s["value"].shape for s in latent_sites}
        obs_sites = {s["name"]: s["fn"].batch_shape for s in obs}
        dims, ll_dims, coords, batch_ndims = {}, {}, {}, {}
        for site in latent_sites + obs:
            names, batch_ndim, site_coords = _site_dims(site)
            dims[site["name"]] = names
            batch_ndims[site["name"]] = batch_ndim
            coords.update(site_coords)
            if site["is_observed"]:
                ll_dims[site["name"]] = names[:batch_ndim]
        depth = plate_depth(guide_tr, model_tr)
        result = None
        if vectorize is not False and num_samples > 1:
            # A few draws first: a model that broadcasts draws against draws would need
            # num_samples^2 memory in the full pass.
            reason = batch_problem(
                model, guide, args, kwargs, num_draws=min(3, num_samples), dim=-depth - 1
            )
            if reason is not None:
                if vectorize:
                    raise ValueError(
                        f"vectorize=True, but the model is not batch-safe: {reason}. "
                        f"{BATCH_SAFE_HINT[0].upper()}{BATCH_SAFE_HINT[1:]}, or pass "
                        "vectorize=None (loop with a warning) or vectorize=False"
                    )
                warnings.warn(
                    f"the model is not batch-safe ({reason}); falling back to a loop over "
                    f"{num_samples} draws (slower). For vectorized speed, "
                    f"{BATCH_SAFE_HINT}; pass vectorize=False to silence this warning",
                    RuntimeWarning,
                    stacklevel=3,
                )
                vectorize = False

        def vectorized_draws():
            result = _vectorized_in_chunks(
                guide, model, args, kwargs, num_samples, depth, latent_names, obs_sites
            )
            _check_vectorized(model, args, kwargs, result, (0, num_samples - 1))
            return result

        result, vectorized = vectorize_or_loop(
            vectorized_draws,
            lambda: _looped(guide, model, args, kwargs, num_samples, latent_names, obs_sites),
            vectorize=vectorize, what="draws", n=num_samples, stacklevel=4,
        )
        latent, log_joint, log_q, loglik = result
        observed = {s["name"]: s["value"].detach() for s in obs}
    return GuideDraws(
        latent={k: v.detach() for k, v in latent.items()},
        log_joint=log_joint.detach(),
        log_q=log_q.detach(),
        log_likelihood={k: v.detach() for k, v in loglik.items()},
        observed=observed,
        dims=dims,
        log_likelihood_dims=ll_dims,
        coords=coords,
        vectorized=vectorized,
        plate_depth=depth,
        batch_ndims=batch_ndims,
    )


def predictive_draws(
    model: Callable, args: tuple, kwargs: dict | None, draws: GuideDraws, *, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Replicate the observed sites once per draw: ``name -> (N, *observed shape)``.

    The model runs with its latent sites conditioned on the draws and its observed sites
    unconditioned (``poutine.uncondition``), vectorized over draws when ``draws.vectorized``
    (latent values are reshaped to ``(N, 1, ..., *site shape)`` so the draws dim sits left of
    every plate, which ``pyro.infer.Predictive`` gets wrong for sites with event dims), else in
    a loop.

    Example:
        >>> import pyro
        >>> import pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> def model(x=None):
        ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...     pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> guide = AutoNormal(model)
        >>> d = draw_guide(guide, model, (torch.tensor(0.5),), num_samples=10)
        >>> predictive_draws(model, (torch.tensor(0.5),), {}, d)["x"].shape
        torch.Size([10])
    """
    kwargs = {} if kwargs is None else dict(kwargs)
    n = draws.log_weight.shape[0]
    free = poutine.uncondition(model)
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []

    def looped():
        out: dict[str, list[torch.Tensor]] = {name: [] for name in draws.observed}
        for i in range(n):
            data = {name: value[i] for name, value in draws.latent.items()}
            tr = poutine.trace(poutine.condition(free, data=data)).get_trace(*args, **kwargs)
            for name in out:
                out[name].append(tr.nodes[name]["value"])
        return {name: torch.stack(values) for name, values in out.items()}

    with torch.random.fork_rng(devices=devices), torch.no_grad(), poutine.block():
        torch.manual_seed(seed)
        return vectorize_or_loop(
            lambda: _vectorized_predictive(free, args, kwargs, draws, n),
            looped,
            vectorize=None if draws.vectorized else False,
            what="posterior predictive", n=n, stacklevel=4,
        )[0]


def _vectorized_predictive(free, args, kwargs, draws: GuideDraws, n: int):
    depth = draws.plate_depth
    data = {}
    for name, value in draws.latent.items():
        pad = (1,) * (depth - draws.batch_ndims[name])
        data[name] = value.reshape((n,) + pad + tuple(value.shape[1:]))
    tr = poutine.trace(draws_plate(poutine.condition(free, data=data), n, depth)).get_trace(
        *args, **kwargs
    )
    return {
        name: as_draws(tr.nodes[name]["value"], n, draws.observed[name].shape)
        for name in draws.observed
    }


def _refuse_subsampling(*traces) -> None:
    plates = subsampled_plates(*traces)
    if plates:
        which = ", ".join(f"{k!r} ({n} of {full})" for k, (n, full) in plates.items())
        raise ValueError(
            f"the model subsamples plate {which}: importance weights (psis) and pointwise "
            "log likelihoods need the log joint of the full data, which a subsample only "
            "estimates. Run this with the model on the full data (pyro.plate without "
            "subsample_size, e.g. make subsample_size a model argument and pass None)"
        )


def _check_vectorized(model, args, kwargs, result, indices) -> None:
    latent, log_joint, _, _ = result
    for i in indices:
        expected = _model_log_joint(model, args, kwargs, {k: v[i] for k, v in latent.items()})
        got = log_joint[i]
        if not torch.isclose(got, expected.to(got), rtol=1e-4, atol=1e-3):
            raise ValueError(
                f"the vectorized log joint of draw {i} ({float(got):.6g}) differs from the "
                f"unvectorized one ({float(expected):.6g}): the model does not broadcast over "
                "an outer plate"
            )
