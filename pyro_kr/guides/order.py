"""``auto_order``: a Knothe-Rosenblatt order chosen from the model's structure.

``AutoKR(model, order="auto")`` packs the latent sites in the order this module returns. Two
things decide it, both read off the model before any training:

1. **Dependencies** (a hard constraint). A site whose value parameterizes another site's prior
   distribution (a global mean, a scale, a hyperparameter) comes before that site: the order
   is a topological order of the prior dependency graph that
   :func:`pyro.infer.inspect.get_dependencies` returns.
2. **Conditional non-Gaussianity** (the tie-break). Among the sites whose parents are placed,
   a site whose conditional log density is *not* quadratic in its own unconstrained value
   comes first, and conditionally Gaussian sites come last; the model's order breaks the
   remaining ties. The last components of a triangular map represent the conditionals of the
   last variables given all earlier ones: a Gaussian conditional (whose mean and width may
   depend on the earlier variables) is what a monotone triangular component represents
   exactly, while a non-Gaussian conditional can be multimodal (in the banana
   ``y ~ N(theta1 + theta2^2, sigma)``, ``theta2 | theta1`` has two modes, ``theta1 | theta2``
   is Gaussian), which a monotone component cannot bend into.

The non-Gaussianity of site ``s`` is measured along a random direction ``u`` of its
unconstrained block, at ``num_points`` prior draws ``z`` (all sites in unconstrained space):
with ``g(t)`` the second derivative of ``t -> log p(data, z + t u) + log|J|``, the score is
``max |g(+h) - g(0)| + |g(-h) - g(0)|) / (2 |g(0)|)`` over the draws, ``h = |g(0)|^(-1/2)``
(one conditional sd). It is 0 for a conditional that is Gaussian in the site's unconstrained
coordinates, whatever the other sites' values; a site scores ``inf`` where ``g(0) >= 0``.
Constrained sites (scales through ``exp``) are non-Gaussian in this sense.

When it cannot decide, :func:`auto_order` raises :class:`OrderUndecided` (a ``ValueError``)
with the reason; ``AutoKR`` (whose default is ``order="auto"``) then logs the reason and keeps
the model's order. The cases: a prior that cannot be sampled (e.g. ``ImproperUniform``), a
model Pyro cannot trace the dependencies of, a model or density that fails at a prior draw,
and more than :data:`MAX_SITES` latent sites (the score costs ``12 x sites`` model runs, each
over all sites). The order is deterministic: prior draws and directions come from a fixed seed
inside :func:`torch.random.fork_rng`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.infer.inspect import get_dependencies
from pyro.poutine.util import site_is_subsample

from pyro_kr.guides.packing import discrete_latents

__all__ = ["MAX_SITES", "OrderUndecided", "auto_order", "non_gaussianity"]

NON_GAUSSIAN = 1e-2
"""A site whose score (see the module docstring) exceeds this counts as non-Gaussian."""

MAX_SITES = 16
"""Above this many latent sites :func:`auto_order` does not score them (setup cost grows as
``sites^2`` model-site evaluations: about 23 CPU-s for 100 scalar sites) and raises
:class:`OrderUndecided`."""


class OrderUndecided(ValueError):
    """:func:`auto_order` cannot choose an order for this model; the message says why."""


def _rng_devices() -> list[int]:
    """The CUDA device whose RNG :func:`torch.manual_seed` reseeds too (restored on exit)."""
    return [torch.cuda.current_device()] if torch.cuda.is_initialized() else []


def _latent_sites(trace) -> list[str]:
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not site["infer"].get("_do_not_trace")
        and not site_is_subsample(site)
    ]


def _prior_trace(model: Callable, args: tuple, kwargs: dict):
    with poutine.block():
        return poutine.trace(model).get_trace(*args, **kwargs)


def non_gaussianity(
    model: Callable,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    *,
    num_points: int = 4,
    seed: int = 0,
) -> dict[str, float]:
    """Score every latent site's conditional non-Gaussianity (0: Gaussian), in model order.

    See the module docstring for the definition. Runs the model ``num_points`` times from the
    prior (inside :func:`torch.random.fork_rng`: the global RNG is left as it was) and takes
    second derivatives by autograd.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model():
        ...     a = pyro.sample("a", dist.Normal(0.0, 1.0))
        ...     b = pyro.sample("b", dist.Normal(0.0, 1.0))
        ...     pyro.sample("y", dist.Normal(a + b**2, 0.5), obs=torch.tensor(1.0))
        >>> s = non_gaussianity(model)
        >>> s["a"] < 1e-6 < 1e-2 < s["b"]
        True
    """
    model_kwargs = {} if model_kwargs is None else model_kwargs
    with torch.random.fork_rng(devices=_rng_devices()):
        torch.manual_seed(seed)
        return _non_gaussianity(model, model_args, model_kwargs, num_points)


def _non_gaussianity(model, model_args, model_kwargs, num_points) -> dict[str, float]:
    scores: dict[str, float] = {}
    traces = [_prior_trace(model, model_args, model_kwargs) for _ in range(num_points)]
    names = _latent_sites(traces[0])
    supports = {n: traces[0].nodes[n]["fn"].support for n in names}
    directions = {}
    for n in names:
        shape = biject_to(supports[n]).inv(traces[0].nodes[n]["value"]).shape
        value = traces[0].nodes[n]["value"]
        u = torch.randn(shape, dtype=value.dtype).to(value.device)  # seeded CPU stream
        directions[n] = u / u.norm().clamp_min(1e-12)
    for n in names:
        scores[n] = 0.0
        for trace in traces:
            base = {k: biject_to(supports[k]).inv(trace.nodes[k]["value"]).detach() for k in names}
            scores[n] = max(scores[n], _score(model, model_args, model_kwargs, supports, base, n,
                                              directions[n]))
    return scores


def _log_density(model, args, kwargs, supports, unconstrained) -> torch.Tensor:
    values, log_jacobian = {}, 0.0
    for name, u in unconstrained.items():
        transform = biject_to(supports[name])
        values[name] = transform(u)
        log_jacobian = log_jacobian + transform.log_abs_det_jacobian(u, values[name]).sum()
    with poutine.block():
        trace = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
    return trace.log_prob_sum() + log_jacobian


def _curvature(model, args, kwargs, supports, base, name, u, t: float) -> float:
    s = torch.zeros((), dtype=u.dtype, requires_grad=True)
    with torch.enable_grad():
        point = dict(base)
        point[name] = base[name] + (t + s) * u
        f = _log_density(model, args, kwargs, supports, point)
        (g1,) = torch.autograd.grad(f, s, create_graph=True)
        if not g1.requires_grad:  # f is linear in s
            return 0.0
        (g2,) = torch.autograd.grad(g1, s)
    return float(g2)


def _score(model, args, kwargs, supports, base, name, u) -> float:
    g0 = _curvature(model, args, kwargs, supports, base, name, u, 0.0)
    if not math.isfinite(g0):
        return 0.0  # a prior draw where the density is not finite tells nothing
    if g0 >= 0:
        return math.inf
    h = abs(g0) ** -0.5
    gp = _curvature(model, args, kwargs, supports, base, name, u, h)
    gm = _curvature(model, args, kwargs, supports, base, name, u, -h)
    if not (math.isfinite(gp) and math.isfinite(gm)):
        return math.inf
    return (abs(gp - g0) + abs(gm - g0)) / (2 * abs(g0))


def auto_order(
    model: Callable, model_args: tuple = (), model_kwargs: dict | None = None
) -> list[str]:
    """Return the model's latent site names in the order ``AutoKR(order="auto")`` uses.

    A topological order of the prior dependency graph (parents first); among the sites whose
    parents are placed, non-Gaussian ones (:func:`non_gaussianity` above
    :data:`NON_GAUSSIAN`) first, then the model's order.

    Args:
        model: a Pyro model with continuous latent sites.
        model_args, model_kwargs: the model's arguments (the observed data).

    Raises:
        ValueError: the model has discrete latent sites.
        OrderUndecided: a ``ValueError`` saying why no order could be chosen (see the module
            docstring); ``AutoKR`` logs it and keeps the model's order.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        ...     tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        ...     with pyro.plate("schools", len(y)):
        ...         theta = pyro.sample("theta", dist.Normal(mu, tau))
        ...         pyro.sample("y", dist.Normal(theta, 1.0), obs=y)
        >>> auto_order(model, (torch.zeros(3),))
        ['tau', 'mu', 'theta']
    """
    model_kwargs = {} if model_kwargs is None else model_kwargs
    with torch.random.fork_rng(devices=_rng_devices()):  # leaves the caller's RNG stream as it was
        return _auto_order(model, model_args, model_kwargs)


def _why(exc: Exception) -> str:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"


def _auto_order(model: Callable, model_args: tuple, model_kwargs: dict) -> list[str]:
    try:
        with poutine.block():
            trace = _prior_trace(model, model_args, model_kwargs)
    except Exception as exc:  # noqa: BLE001 - any prior that cannot be sampled
        raise OrderUndecided(
            f"order='auto' could not draw from the model's prior ({_why(exc)})"
        ) from exc
    discrete = discrete_latents(trace)
    if discrete:
        raise ValueError(f"order='auto' needs continuous latent sites; {discrete} are discrete")
    latent = _latent_sites(trace)
    if len(latent) <= 1:
        return latent
    if len(latent) > MAX_SITES:
        raise OrderUndecided(
            f"order='auto' scores at most MAX_SITES={MAX_SITES} latent sites (setup cost grows "
            f"as sites^2); the model has {len(latent)}"
        )
    try:
        with poutine.block():
            deps = get_dependencies(model, model_args, model_kwargs)["prior_dependencies"]
    except Exception as exc:  # noqa: BLE001 - Pyro's provenance tracing can fail on any op
        raise OrderUndecided(
            f"order='auto' could not trace the model's dependencies ({_why(exc)})"
        ) from exc
    parents = {n: {p for p in deps.get(n, {}) if p != n and p in latent} for n in latent}
    try:
        scores = non_gaussianity(model, model_args, model_kwargs)
    except Exception as exc:  # noqa: BLE001 - the model or its density failed at a prior draw
        raise OrderUndecided(
            f"order='auto' could not score the sites' conditionals at prior draws ({_why(exc)})"
        ) from exc
    placed: list[str] = []
    while len(placed) < len(latent):
        ready = [n for n in latent if n not in placed and parents[n] <= set(placed)]
        if not ready:  # cannot happen for a generative program; keep the model order
            ready = [n for n in latent if n not in placed]
        rough = [n for n in ready if not scores.get(n, 0.0) <= NON_GAUSSIAN]
        placed.append((rough or ready)[0])
    return placed
