"""Input checks shared by every public entry point.

User errors raise ``ValueError``/``TypeError`` naming what was expected and what came;
nothing here uses ``assert``.
"""

from __future__ import annotations

import torch


def check_dim(name: str, value: int, *, minimum: int = 1) -> int:
    """Return ``value`` as an int if it is an integer ``>= minimum``, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_event(owner: str, x: torch.Tensor, dim: int, *, what: str = "input") -> None:
    """Check that ``x`` has shape ``(..., dim)`` and finite entries."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner} expected a torch.Tensor {what}, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[-1] != dim:
        raise ValueError(
            f"{owner} expected {what} of shape (..., {dim}), got shape {tuple(x.shape)}"
        )
    check_finite(owner, x, what=what)


def check_finite(owner: str, x: torch.Tensor, *, what: str = "input") -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinite entries."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{owner} received {what} with {bad} non-finite entries (NaN or inf); "
            "check the data and the model's parameters before calling it"
        )


def check_dtype(owner: str, x: torch.Tensor, reference: torch.Tensor, *, what: str = "input"):
    """Raise ``TypeError`` when ``x`` and the module's parameters disagree in dtype."""
    if x.dtype != reference.dtype:
        raise TypeError(
            f"{owner} received {what} of dtype {x.dtype} but its parameters are "
            f"{reference.dtype}; convert the module with .to({x.dtype}) or the input with "
            f".to({reference.dtype})"
        )


def _site_mask(site: dict) -> torch.Tensor | None:
    """The site's mask (``poutine.mask`` or ``fn.mask(...)``) as a tensor, or ``None``."""
    masks = []
    if torch.is_tensor(site.get("mask")):
        masks.append(site["mask"])
    fn = site["fn"]
    while fn is not None:
        if torch.is_tensor(getattr(fn, "_mask", None)):
            masks.append(fn._mask)
        fn = getattr(fn, "base_dist", None)
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        out = out & m
    return out


def check_observed(owner: str, model_trace) -> None:
    """Raise ``ValueError`` if an observed site holds NaN/inf values where it is not masked."""
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or not site["is_observed"]:
            continue
        value = site["value"]
        if not torch.is_tensor(value) or not (value.is_floating_point() or value.is_complex()):
            continue
        bad = ~torch.isfinite(value)
        mask = _site_mask(site)
        if mask is not None and site["fn"].event_dim == 0:
            try:
                bad = bad & mask.to(torch.bool)
            except RuntimeError:  # a mask that does not broadcast: Pyro will say so
                pass
        if bool(bad.any()):
            first = tuple(int(i) for i in bad.nonzero()[0]) if bad.dim() else ()
            raise ValueError(
                f"{owner}: observed site {name!r} holds {int(bad.sum())} NaN/inf values "
                f"(first at index {first}); drop those entries, impute them, or leave them out "
                "of the likelihood with poutine.mask / pyro.sample(..., obs_mask=...) after "
                "replacing them by a finite placeholder"
            )


def check_no_enumeration(owner: str, model_trace, guide_trace) -> None:
    """Raise ``ValueError`` for a discrete latent the guide does not sample (enumerated or not).

    ``Trace_ELBO``-style objectives would draw such a site from its prior on every step,
    which silently gives a wrong posterior.
    """
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or name in guide_trace.nodes:
            continue
        if type(site["fn"]).__name__ == "_Subsample":  # a plate's indices, not a latent
            continue
        enumerate_ = site["infer"].get("enumerate")
        discrete = bool(getattr(site["fn"].support, "is_discrete", False))
        if enumerate_ is None and not discrete:
            continue
        how = f"infer={{'enumerate': {enumerate_!r}}}" if enumerate_ else "not in the guide"
        raise ValueError(
            f"{owner} cannot fit the discrete latent site {name!r} ({how}): it would be "
            "sampled from its prior on every step, which gives a wrong posterior, and "
            "enumeration (pyro.infer.config_enumerate) is not supported. Marginalize it out "
            "in the model (e.g. dist.MixtureSameFamily), or fit with "
            "pyro.infer.TraceEnum_ELBO and a guide of the continuous sites"
        )
