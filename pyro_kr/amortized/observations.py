"""The observed sites of an amortized guide: layout, validation, flattening, unconstraining."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from torch import nn

from pyro_kr._validation import check_finite

__all__ = ["ObservedLayout", "SiteUnconstrain", "accepts_keyword"]


def accepts_keyword(fn: Callable, name: str) -> bool:
    """Whether ``fn`` can be called with the keyword argument ``name``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins, C functions: assume it does
        return True
    return any(
        p.kind is inspect.Parameter.VAR_KEYWORD
        or (p.name == name and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
        for p in params
    )


@dataclass(frozen=True)
class ObservedLayout:
    """Shapes and supports of the observed sites, read from a trace of the model.

    Attributes:
        names: observed site names, in the order they are flattened.
        shapes: name -> shape of one observation (as in the model, plates included).
        supports: name -> support constraint of the site's distribution.
        event_dims: name -> event dim of the site's distribution.
        frames: name -> the site's ``cond_indep_stack`` (its plates).
    """

    names: tuple[str, ...]
    shapes: dict[str, torch.Size]
    supports: dict[str, object]
    event_dims: dict[str, int]
    frames: dict[str, tuple]

    @classmethod
    def from_trace(cls, trace, names: list[str], owner: str) -> ObservedLayout:
        """Check that every name is an observed sample site of ``trace`` and read its layout."""
        sample = {n: s for n, s in trace.nodes.items() if s["type"] == "sample"}
        for name in names:
            if name not in sample:
                raise ValueError(
                    f"{owner}: observed site {name!r} is not a sample site of the model; its "
                    f"sample sites are {sorted(sample)}"
                )
            if not sample[name]["is_observed"]:
                raise ValueError(
                    f"{owner}: observed site {name!r} is a latent site of the model (it is "
                    f"sampled without obs= when the model is called with {name}=<data>); "
                    "observed must name the sites whose data the model receives"
                )
        return cls(
            names=tuple(names),
            shapes={n: sample[n]["value"].shape for n in names},
            supports={n: sample[n]["fn"].support for n in names},
            event_dims={n: sample[n]["fn"].event_dim for n in names},
            frames={n: tuple(sample[n]["cond_indep_stack"]) for n in names},
        )

    @property
    def size(self) -> int:
        """Total number of observed scalars."""
        return sum(math.prod(s) for s in self.shapes.values())

    def check(self, owner: str, data: dict[str, torch.Tensor], ref: torch.Tensor):
        """Validate ``data`` (name -> ``(*batch, *shape)``); return it converted and the batch."""
        out, batch = {}, None
        for name in self.names:
            shape = tuple(self.shapes[name])
            value = torch.as_tensor(data[name], dtype=ref.dtype, device=ref.device)
            k = value.dim() - len(shape)
            if k < 0 or tuple(value.shape[k:]) != shape:
                expected = ", ".join(["*batch", *map(str, shape)])
                raise ValueError(
                    f"{owner} expected observation {name!r} of shape ({expected}), "
                    f"got shape {tuple(value.shape)}"
                )
            check_finite(owner, value, what=f"observation {name!r}")
            if batch is not None and value.shape[:k] != batch:
                raise ValueError(
                    f"{owner}: observations share one batch shape; got {tuple(batch)} and "
                    f"{tuple(value.shape[:k])} for {name!r}"
                )
            batch = value.shape[:k]
            out[name] = value
        return out, batch

    def flatten(self, data: dict[str, torch.Tensor], batch: torch.Size) -> torch.Tensor:
        """Concatenate the flattened observations: ``(*batch, size)``."""
        return torch.cat([data[n].reshape(batch + (-1,)) for n in self.names], dim=-1)

    def from_model(self, model: Callable, args: tuple, kwargs: dict, owner: str):
        """Read the observed values from a blocked trace of the model (data not by keyword)."""
        with torch.no_grad(), poutine.block():
            trace = poutine.trace(model).get_trace(*args, **kwargs)
        out = {}
        for name in self.names:
            site = trace.nodes.get(name)
            if site is None or not site["is_observed"]:
                raise ValueError(
                    f"{owner} needs the data of observed site {name!r}: call it with the "
                    f"model's arguments and {name}=<data> (got no data for {name!r})"
                )
            out[name] = site["value"]
        return out


class SiteUnconstrain(nn.Module):
    """Map flattened observations ``(..., n)`` to R with each site's ``biject_to(support).inv``."""

    def __init__(self, layout: ObservedLayout) -> None:
        super().__init__()
        self._layout = layout

    def forward(self, flat: torch.Tensor) -> torch.Tensor:
        parts, pos, batch = [], 0, flat.shape[:-1]
        for name in self._layout.names:
            shape = self._layout.shapes[name]
            size = math.prod(shape)
            value = flat[..., pos : pos + size].reshape(batch + shape)
            value = biject_to(self._layout.supports[name]).inv(value)
            parts.append(value.reshape(batch + (-1,)))
            pos += size
        return torch.cat(parts, dim=-1)
