"""Plate analysis for :class:`~pyro_kr.AutoKR`: which latent sites are global, which local.

When the local latents of a hierarchical model (one block per group, inside a ``pyro.plate``)
are conditionally independent given the global latents (the sites outside every plate), the
Knothe-Rosenblatt map in the order (globals, group 1, group 2, ...) is sparse: the component of
group ``i`` depends on the globals' reference coordinates and on group ``i``'s own ones only
(Spantini, Bigoni & Marzouk 2018). A ``pyro.plate`` declares exactly this conditional
independence, so the prototype trace is enough to find the structure.

:func:`plate_plan` returns a :class:`PlatePlan` when the trace has the supported structure
(globals outside every plate; every other latent site in one and the same vectorized plate,
whose dim is the site's leftmost), and otherwise a sentence saying why not, which
``AutoKR`` logs before it falls back to the dense map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["PlatePlan", "plate_plan"]


@dataclass(frozen=True)
class PlatePlan:
    """The global-local split of a model's latent sites.

    Attributes:
        globals: global sites (outside every plate), in KR order.
        locals: local sites (inside ``plate``), in KR order.
        plate: name of the plate holding the local sites.
        dim: the plate's (negative) dim.
        size: groups per evaluation (``subsample_size``; ``full_size`` without subsampling).
        full_size: number of groups ``N``.
        local_sizes: unconstrained size of each local site per group.
    """

    globals: tuple[str, ...]
    locals: tuple[str, ...]
    plate: str
    dim: int
    size: int
    full_size: int
    local_sizes: tuple[int, ...]

    @property
    def local_dim(self) -> int:
        """Unconstrained coordinates per group, ``d_l``."""
        return sum(self.local_sizes)

    @property
    def subsampled(self) -> bool:
        return self.size != self.full_size


def _plates(site: dict) -> list:
    return [f for f in site["cond_indep_stack"] if f.vectorized]


def plate_plan(trace, unconstrained_shapes: dict, order: list[str]) -> PlatePlan | str:
    """Return the :class:`PlatePlan` of a prototype trace, or the reason there is none.

    Args:
        trace: the guide's prototype trace (latent sites only matter).
        unconstrained_shapes: site name -> unconstrained shape (``AutoContinuous``'s).
        order: the latent sites in the guide's KR order.
    """
    nodes = trace.nodes
    globals_, locals_, frames = [], [], {}
    for name in order:
        site = nodes[name]
        stack = _plates(site)
        if not stack:
            globals_.append(name)
            continue
        if len(stack) > 1:
            return (
                f"latent site {name!r} sits in nested plates "
                f"{[f.name for f in stack]}; the sparse map supports one plate level"
            )
        frame = stack[0]
        frames[frame.name] = frame
        value = site["value"]
        event_dim = site["fn"].event_dim
        position = value.dim() - event_dim + frame.dim
        shape = tuple(unconstrained_shapes[name])
        if position != 0 or not shape or shape[0] != frame.size:
            return (
                f"the plate {frame.name!r} is not the leftmost dim of latent site {name!r} "
                f"(value shape {tuple(value.shape)}, plate dim {frame.dim})"
            )
        locals_.append(name)
    if not locals_:
        return "no latent site sits in a plate"
    if len(frames) > 1:
        return f"local latent sites sit in different plates {sorted(frames)}"
    if not globals_:
        return "no global latent site (outside every plate) to condition the local sites on"
    first_local = min(order.index(n) for n in locals_)
    if any(order.index(g) > first_local for g in globals_):
        return (
            f"the KR order {order} puts a local site before a global one; the sparse map "
            "needs the global sites first"
        )
    (frame,) = frames.values()
    full = frame.full_size or frame.size
    sizes = tuple(
        math.prod(tuple(unconstrained_shapes[n])[1:]) for n in locals_
    )
    if frame.size != full and frame.size < 1:
        return f"plate {frame.name!r} has an empty subsample"
    return PlatePlan(
        globals=tuple(globals_), locals=tuple(locals_), plate=frame.name, dim=frame.dim,
        size=frame.size, full_size=full, local_sizes=sizes,
    )


def group_shape(plan: PlatePlan, n: int) -> torch.Size:
    """Batch shape of ``n`` groups placed at the plate's dim: ``(n, 1, ..., 1)``."""
    return torch.Size((n,) + (1,) * (-1 - plan.dim))
