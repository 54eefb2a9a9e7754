"""The weighted transport cost ``c_eps`` and the reference draws it is evaluated on."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.poutine.trace_struct import Trace

__all__ = ["pushforward_transforms", "reference_pairs", "transport_cost", "weighted_cost"]


def weighted_cost(x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """``c_eps(x, y) = sum_i eps^(i-1) (x_i - y_i)^2`` (Baptista et al. 2025, eq. 1).

    Args:
        x, y: tensors of shape ``(..., d)``; coordinate ``i`` is the ``i``-th in the KR order.
        eps: weight ratio in ``(0, 1]``.

    Returns:
        Tensor of shape ``(...)``.

    Example:
        >>> import torch
        >>> weighted_cost(torch.zeros(3), torch.ones(3), 0.5)
        tensor(1.7500)
    """
    if not 0 < eps <= 1:
        raise ValueError(f"eps must lie in (0, 1], got {eps}")
    d = x.shape[-1]
    weights = eps ** torch.arange(d, dtype=x.dtype, device=x.device)
    return ((x - y) ** 2 * weights).sum(-1)


def _unwrap(fn):
    """Peel Pyro's wrappers (expand, mask, to_event) off a site distribution."""
    while not isinstance(fn, torch.distributions.TransformedDistribution):
        inner = getattr(fn, "base_dist", None)
        if inner is None:
            return None
        fn = inner
    return fn


def _is_standard_normal(base) -> bool:
    while isinstance(base, dist.Independent | dist.ExpandedDistribution | dist.MaskedDistribution):
        base = base.base_dist
    if not isinstance(base, torch.distributions.Normal):
        return False
    return bool((base.loc == 0).all()) and bool((base.scale == 1).all())


def pushforward_transforms(site: dict) -> list | None:
    """The transforms ``[T_1, ..., T_k]`` of a guide site sampled as ``T#N(0, I)``
    (``T = T_k o ... o T_1``), or ``None`` if the site is not such a pushforward."""
    fn = _unwrap(site["fn"])
    if fn is None or not _is_standard_normal(fn.base_dist):
        return None
    return list(fn.transforms)


def reference_pairs(guide_trace: Trace) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """Return ``(site name, x, T(x))`` for every guide site sampled as ``T#N(0, I)``.

    ``x`` is the reference draw (detached: it does not depend on the parameters) and
    ``T(x)`` the pushed-forward value carrying the gradient. ``x`` is recovered through the
    transforms' inverse, which is a cache hit for maps created with ``cache_size=1`` (all
    pyro_kr maps and Pyro's autoregressive flows), so no root finding happens.

    Raises:
        ValueError: if the guide has no such site (e.g. ``AutoNormal``, whose latents are
            sampled site by site, or ``AutoMultivariateNormal``).
    """
    pairs = []
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"]:
            continue
        transforms = pushforward_transforms(site)
        if transforms is None:
            continue
        z = site["value"]
        x = z
        for transform in reversed(transforms):
            x = transform.inv(x)
        pairs.append((name, x.detach(), z))
    if not pairs:
        sites = [n for n, s in guide_trace.nodes.items() if s["type"] == "sample"]
        raise ValueError(
            "TransportELBO needs a guide whose latent vector is a transform of a standard "
            "normal reference draw (pyro_kr.AutoKR, AutoNormalizingFlow, AutoIAFNormal); "
            f"none of the guide's sample sites {sites} is a TransformedDistribution over "
            "N(0, I). Use Trace_ELBO for this guide, or switch to pyro_kr.AutoKR."
        )
    return pairs


def transport_cost(guide_trace: Trace, eps: float) -> torch.Tensor:
    """``sum`` of ``c_eps(x, T(x))`` over the guide's reference pairs, in the KR order.

    A site's coordinates are weighted ``eps^(i-1)`` by their position in its last dim, unless
    the site records each coordinate's KR position ``i - 1`` in ``infer["kr_index"]`` (the
    sparse ``AutoKR`` does for the subsampled groups of a plate); the site's Pyro ``scale``
    (``N / B`` under plate subsampling) multiplies its cost, so the estimate is unbiased.
    """
    if not 0 < eps <= 1:
        raise ValueError(f"eps must lie in (0, 1], got {eps}")
    total = 0.0
    for name, x, z in reference_pairs(guide_trace):
        site = guide_trace.nodes[name]
        index = site["infer"].get("kr_index")
        if index is None:
            cost = weighted_cost(x, z, eps).sum()
        else:
            cost = (torch.as_tensor(eps, dtype=x.dtype) ** index * (x - z) ** 2).sum()
        total = total + site["scale"] * cost
    return total
