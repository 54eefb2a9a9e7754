"""Plate analysis for :class:`~pyro_kr.AutoKR`: which latent sites are global, which local.

When the local latents of a hierarchical model (one block per group, inside a ``pyro.plate``)
are conditionally independent given the global latents (the sites outside every plate), the
Knothe-Rosenblatt map in the order (globals, group 1, group 2, ...) is sparse: the component of
group ``i`` depends on the globals' reference coordinates and on group ``i``'s own ones only
(Spantini, Bigoni & Marzouk 2018). A ``pyro.plate`` declares exactly this conditional
independence, so the prototype trace is enough to find the structure.

:func:`plate_plan` returns a :class:`PlatePlan` when the trace has the supported structure
(globals outside every plate; one vectorized plate, the group plate, holding every other
latent site, possibly with further nested plates), and otherwise a sentence saying why not,
which ``AutoKR`` logs before it falls back to the dense map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["PlatePlan", "group_positions", "group_shape", "plate_plan"]


@dataclass(frozen=True)
class PlatePlan:
    """The global-local split of a model's latent sites.

    Attributes:
        globals: global sites (outside every plate), in KR order.
        locals: local sites (inside ``plate``, possibly inside further nested plates too), in
            KR order.
        plate: name of the group plate: the plate every local site sits in.
        dim: the plate's (negative) dim.
        size: groups per evaluation (``subsample_size``; ``full_size`` without subsampling).
        full_size: number of groups ``N``.
        local_sizes: unconstrained size of each local site per group (the product of its
            unconstrained shape without the group axis).
        group_axes: for each local site, the axis of its unconstrained shape that indexes the
            groups (``0`` unless a nested plate sits left of the group plate).
        batch_ranks: for each local site, the number of batch dims of its value.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model():
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("schools", 4, dim=-1):
        ...         eta = pyro.sample("eta", dist.Normal(mu, 1.0))
        ...         with pyro.plate("classes", 3, dim=-2):
        ...             pyro.sample("theta", dist.Normal(eta, 1.0))
        >>> tr = pyro.poutine.trace(model).get_trace()
        >>> shapes = {n: tr.nodes[n]["value"].shape for n in ("mu", "eta", "theta")}
        >>> plan = plate_plan(tr, shapes, ["mu", "eta", "theta"])
        >>> plan.plate, plan.local_sizes, plan.group_axes
        ('schools', (1, 3), (0, 1))
    """

    globals: tuple[str, ...]
    locals: tuple[str, ...]
    plate: str
    dim: int
    size: int
    full_size: int
    local_sizes: tuple[int, ...]
    group_axes: tuple[int, ...] = ()
    batch_ranks: tuple[int, ...] = ()

    @property
    def local_dim(self) -> int:
        """Unconstrained coordinates per group, ``d_l``."""
        return sum(self.local_sizes)

    @property
    def subsampled(self) -> bool:
        return self.size != self.full_size


def _plates(site: dict) -> list:
    return [f for f in site["cond_indep_stack"] if f.vectorized]


def _full_size(frame) -> int:
    return frame.full_size or frame.size


def _group_plate(local_stacks: dict[str, list]):
    """The plate shared by every local site (the groups), or the reason there is none."""
    common = set.intersection(*({f.name for f in stack} for stack in local_stacks.values()))
    frames = {f.name: f for stack in local_stacks.values() for f in stack}
    if not common:
        where = {name: [f.name for f in stack] for name, stack in local_stacks.items()}
        return (
            f"no plate holds every local latent site (plates per site: {where}); the sparse "
            "map needs one plate shared by all local sites, whose groups are conditionally "
            "independent given the global sites (crossed effects are not)"
        )
    subsampled = sorted(n for n, f in frames.items() if f.size != _full_size(f))
    if len(subsampled) > 1:
        return f"several plates are subsampled ({subsampled}); the sparse map subsamples one"
    if subsampled:
        if subsampled[0] not in common:
            return (
                f"the subsampled plate {subsampled[0]!r} does not hold every local site; the "
                f"sparse map can subsample only the group plate (one of {sorted(common)})"
            )
        return frames[subsampled[0]]
    # most groups = most sparsity; ties: the outermost plate (dim closest to -1), then name
    return max((frames[n] for n in common), key=lambda f: (_full_size(f), f.dim, f.name))


def plate_plan(trace, unconstrained_shapes: dict, order: list[str]) -> PlatePlan | str:
    """Return the :class:`PlatePlan` of a prototype trace, or the reason there is none.

    Global sites sit outside every plate; local sites sit in plates, and one plate (the
    group plate) must hold all of them. Further plates (nested inside or around the group
    plate) only shape the per-group block: a school-level site ``(N,)`` and a class-level
    site ``(C, N)`` in plates ``schools`` (``N``) and ``classes`` (``C``) give groups of
    ``1 + C`` coordinates.

    Args:
        trace: the guide's prototype trace (latent sites only matter).
        unconstrained_shapes: site name -> unconstrained shape (``AutoContinuous``'s).
        order: the latent sites in the guide's KR order.
    """
    nodes = trace.nodes
    globals_, stacks = [], {}
    for name in order:
        stack = _plates(nodes[name])
        if stack:
            stacks[name] = stack
        else:
            globals_.append(name)
    if not stacks:
        return "no latent site sits in a plate"
    if not globals_:
        return "no global latent site (outside every plate) to condition the local sites on"
    first_local = min(order.index(n) for n in stacks)
    if any(order.index(g) > first_local for g in globals_):
        return (
            f"the KR order {order} puts a local site before a global one; the sparse map "
            "needs the global sites first"
        )
    frame = _group_plate(stacks)
    if isinstance(frame, str):
        return frame
    full = _full_size(frame)
    sizes, axes, ranks = [], [], []
    for name in stacks:
        site = nodes[name]
        batch_rank = site["value"].dim() - site["fn"].event_dim
        axis = batch_rank + frame.dim
        shape = tuple(unconstrained_shapes[name])
        if not 0 <= axis < len(shape) or shape[axis] != frame.size:
            return (
                f"latent site {name!r} (value shape {tuple(site['value'].shape)}) has no "
                f"batch dim for the plate {frame.name!r} at dim {frame.dim}"
            )
        sizes.append(math.prod(shape) // frame.size)
        axes.append(axis)
        ranks.append(batch_rank)
    if frame.size < 1:
        return f"plate {frame.name!r} has an empty subsample"
    return PlatePlan(
        globals=tuple(globals_), locals=tuple(stacks), plate=frame.name, dim=frame.dim,
        size=frame.size, full_size=full, local_sizes=tuple(sizes), group_axes=tuple(axes),
        batch_ranks=tuple(ranks),
    )


def group_shape(plan: PlatePlan, n: int) -> torch.Size:
    """Batch shape of ``n`` groups placed at the plate's dim: ``(n, 1, ..., 1)``."""
    return torch.Size((n,) + (1,) * (-1 - plan.dim))


def group_positions(plan: PlatePlan, shapes: dict) -> torch.Tensor:
    """Position of each (group, local coordinate) in the packed locals, ``(N, d_l)`` long.

    ``shapes``: the local sites' full unconstrained shapes. The locals are packed site by
    site, each site flattened in its own (C) order; row ``i`` lists group ``i``'s coordinates
    site by site, each site's in C order of its remaining axes, which is increasing in the
    packed position, so a map that is lower-triangular per group is lower-triangular in the
    packed order.
    """
    n, rows, offset = plan.full_size, [], 0
    for name, size, axis in zip(plan.locals, plan.local_sizes, plan.group_axes, strict=True):
        shape = tuple(shapes[name])
        numel = math.prod(shape)
        pos = torch.arange(numel).reshape(shape).movedim(axis, 0).reshape(n, size)
        rows.append(pos + offset)
        offset += numel
    return torch.cat(rows, dim=-1)
