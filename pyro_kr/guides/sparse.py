"""The sparse Knothe-Rosenblatt map of a hierarchical model (``AutoKR(structure="plates")``).

With global latents ``z_g`` (outside every plate) and local latents ``z_1, ..., z_N`` (one
block of ``d_l`` unconstrained coordinates per group of a ``pyro.plate``), conditionally
independent given ``z_g``, the KR map from ``x = (x_g, x_1, ..., x_N) ~ N(0, I)`` in the order
(globals, groups) has the form

    z_g = T_g(x_g),        z_i = b_i + A_i x_g + L_i diag(exp(C_i x_g)) S(x_i; x_g, e_i),
                                                                          i = 1..N,

with ``T_g`` a dense monotone triangular map of the globals (as in the dense ``AutoKR``),
``S(.; x_g, e_i)`` ONE conditional monotone triangular map shared by every group (a
:class:`~pyro_kr.ConditionalMonotoneTriangular` stack, or a
:class:`~pyro_kr.ConditionalTriangularAffine` for ``map="affine"``) whose context is the
globals' reference coordinates ``x_g = T_g^-1(z_g)`` (the globals' values in a well-scaled
coordinate system) and a learned group embedding ``e_i`` (``EMBEDDING_DIM`` numbers per group:
the groups' conditionals differ in shape, e.g. with their data's noise level, which a shared
map scaled per group cannot follow), and a per-group affine head ``(b_i, A_i, L_i)``, ``L_i``
lower-triangular, pooled as a shared part plus a per-group deviation (:class:`LocalMap`),
and a per-group log-scale slope ``C_i`` (``d_l x d_g``, pooled the same way, zero at
initialization): a group's conditional spread follows the globals with its own slope (in a
centered hierarchy ``sd(theta_i | tau, y_i) = tau s_i / sqrt(tau^2 + s_i^2)``, whose slope in
``log tau`` runs from 1 to 0 with the group's noise ``s_i``). The shared ``S`` follows that
only approximately, and over ``N`` groups the small per-group misfits add up to a tilt of the
globals' fit (at ``N = 1000`` a ``log tau`` about 8 % too narrow after convergence); the
slopes remove it (:data:`SCALE_SLOPE`).
For a Gaussian posterior the head alone is the exact (sparse) Cholesky factor, so the affine
map is exact there. The Jacobian is block lower-triangular with the zero pattern
``dz_i/dx_j = 0`` for ``j != i`` and ``dz_g/dx_i = 0``, so

    log |det DT(x)| = log |det DT_g(x_g)|
                      + sum_i [log |det DS(x_i; x_g, e_i)| + sum log diag L_i + sum C_i x_g]

is exact, the inverse is ``x_g = T_g^-1(z_g)`` then one conditional inverse per group, and the
globals lead the order (exact :meth:`~pyro_kr.AutoKR.marginal`,
:meth:`~pyro_kr.AutoKR.conditional` given the globals). Cost per draw: ``O(N d_l (d_g + d_l))``
plus the shared network per group, instead of ``O((d_g + N d_l)^2)``.

Nested plates: the group plate is the plate that holds every local site; further plates only
shape a group's block (a school-level site ``(N,)`` and a class-level site ``(C, N)`` give
groups of ``1 + C`` coordinates, dense within the group).

:class:`SparseKRMap` acts on the packed vector of :class:`~pyro.infer.autoguide.AutoContinuous`
(globals first, then each local site flattened in its own shape); it gathers each group's
coordinates (:func:`~pyro_kr.guides.structure.group_positions`) and scatters them back. Its KR
order is the packed order, in which the map is lower-triangular too (within a group the
coordinates keep their packed order, across groups nothing depends on anything). Under plate
subsampling :func:`subsampled_forward` evaluates only the subsampled groups.
"""

from __future__ import annotations

import logging
import math
from contextlib import ExitStack

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_transform import ComposeTransformModule, TransformModule
from pyro.distributions.transforms import biject_to
from pyro.distributions.util import sum_rightmost
from pyro.ops.tensor_utils import periodic_repeat
from torch import nn
from torch.distributions import Transform
from torch.nn import functional as F

from pyro_kr.guides.structure import PlatePlan, group_positions
from pyro_kr.transforms import (
    ConditionalMonotoneTriangular,
    ConditionalTriangularAffine,
    MonotoneTriangular,
    ParameterAwareCache,
    TriangularAffine,
)
from pyro_kr.transforms.score import block_triangular_score, conditional_block_score

__all__ = [
    "LocalMap",
    "LocalTransform",
    "SparseKRMap",
    "build_sparse_map",
    "globals_first",
    "needs_globals_first",
    "subsampled_forward",
    "usable_plan",
]

logger = logging.getLogger(__name__)

_MIN_DIAG = 1e-6
EMBEDDING_DIM = 2  # learned per-group context of the shared conditional map
SCALE_SLOPE = True
"""Whether :class:`LocalMap` gives each group a log-scale slope ``C_i`` on the globals (the
default since 2026-12-06; ``False`` builds the map without it, as before, for ablations)."""


def _softplus_inverse(value: float) -> float:
    return value + math.log(-math.expm1(-value))


class LocalMap(nn.Module):
    """``z_i = b_i + A_i x_g + L_i diag(exp(C_i x_g)) S(x_i; x_g, e_i)``: heads and one ``S``.

    Each head is pooled: ``b_i = b + db_i``, ``A_i = A + dA_i``, ``C_i = C + dC_i``, ``L_i``
    from ``u + du_i`` (diagonal, through softplus) and ``O + dO_i`` (strictly lower part), with
    the shared ``(b, A, C, u, O)`` and the per-group deviations as parameters. The family is
    the same as with free heads; the shared part gives the optimizer a direction that moves
    every group at once, with the gradient summed over the groups (in a centered hierarchy the
    groups' locations follow the global location; free heads drift there one group at a time).

    Args:
        num_groups: ``N``.
        global_dim: ``d_g`` (the context of ``S``).
        local_dim: ``d_l``.
        loc: initial ``b_i``, shape ``(N, d_l)``.
        init_scale: initial diagonal of every ``L_i``.
        map_kind: ``"affine"`` (``S`` conditional affine) or ``"monotone"``.
        depth: conditional monotone layers for ``"monotone"``.
        pooled: ``False`` keeps only the per-group parameters (free heads).
        embedding_dim: numbers per group embedding ``e_i`` (``None``: :data:`EMBEDDING_DIM`).
        scale_slope: give each group the log-scale slope ``C_i`` (``None``:
            :data:`SCALE_SLOPE`); ``False`` fixes ``C_i = 0``.
        **map_options: passed to :class:`~pyro_kr.ConditionalMonotoneTriangular`.

    Example:
        >>> import torch
        >>> m = LocalMap(5, 2, 1, loc=torch.zeros(5, 1), init_scale=0.1, map_kind="affine",
        ...              depth=1)
        >>> [t.shape for t in m.heads(torch.tensor([0, 3]))]
        [torch.Size([2, 1]), torch.Size([2, 1, 2]), torch.Size([2, 1]), torch.Size([2, 1, 1])]
        >>> m.log_scale(torch.randn(7, 1, 2), None).shape  # 7 draws of the globals, 5 groups
        torch.Size([7, 5, 1])
    """

    def __init__(
        self, num_groups: int, global_dim: int, local_dim: int, *, loc: torch.Tensor,
        init_scale: float, map_kind: str, depth: int, pooled: bool = True,
        embedding_dim: int | None = None, scale_slope: bool | None = None, **map_options,
    ) -> None:
        super().__init__()
        n, dl, dg = num_groups, local_dim, global_dim
        loc = loc.detach().reshape(n, dl)
        center = loc.mean(0) if pooled else torch.zeros_like(loc[0])
        self.pooled = pooled
        self.loc = nn.Parameter((loc - center).clone())
        self.coupling = nn.Parameter(torch.zeros(n, dl, dg).to(loc))
        raw = _softplus_inverse(init_scale)
        self.unconstrained_diag = nn.Parameter(torch.full((n, dl), 0.0 if pooled else raw).to(loc))
        self.off_diag = nn.Parameter(torch.zeros(n, dl, dl).to(loc))
        slope = SCALE_SLOPE if scale_slope is None else scale_slope
        self.scale_coupling = nn.Parameter(torch.zeros(n, dl, dg).to(loc)) if slope else None
        self.scale_coupling_shared = None
        if pooled and slope:
            self.scale_coupling_shared = nn.Parameter(torch.zeros(dl, dg).to(loc))
        if pooled:
            self.loc_shared = nn.Parameter(center.clone())
            self.coupling_shared = nn.Parameter(torch.zeros(dl, dg).to(loc))
            self.unconstrained_diag_shared = nn.Parameter(torch.full((dl,), raw).to(loc))
            self.off_diag_shared = nn.Parameter(torch.zeros(dl, dl).to(loc))
        self.register_buffer("_strict_lower", torch.ones(dl, dl).tril(-1).to(loc), False)
        k = EMBEDDING_DIM if embedding_dim is None else embedding_dim
        self.embedding = nn.Parameter(torch.randn(n, k).to(loc)) if k else None
        c = dg + k
        if map_kind == "affine":
            layers = [ConditionalTriangularAffine(dl, c)]
        else:
            layers = [ConditionalMonotoneTriangular(dl, c, **map_options) for _ in range(depth)]
        self.shared = nn.ModuleList(layers).to(loc)

    def log_scale(
        self, context: torch.Tensor, index: torch.Tensor | None
    ) -> torch.Tensor | None:
        """``C_i x_g``, shape ``(..., n, d_l)``, for globals ``context (..., 1, d_g)`` and the
        groups ``index`` (all groups for ``None``); ``None`` without slopes."""
        if self.scale_coupling is None:
            return None
        slope = self.scale_coupling
        if index is not None:
            slope = slope.index_select(0, index)
        if self.scale_coupling_shared is not None:
            slope = slope + self.scale_coupling_shared
        return (slope @ context.unsqueeze(-1)).squeeze(-1)

    def heads(self, index: torch.Tensor | None):
        """``(b, A, diag(L), L)`` of the groups ``index`` (all groups for ``None``)."""
        params = (self.loc, self.coupling, self.unconstrained_diag, self.off_diag)
        if index is not None:
            params = tuple(p.index_select(0, index) for p in params)
        loc, coupling, raw, off = params
        if self.pooled:
            loc = loc + self.loc_shared
            coupling = coupling + self.coupling_shared
            raw = raw + self.unconstrained_diag_shared
            off = off + self.off_diag_shared
        diag = F.softplus(raw) + _MIN_DIAG
        tril = off * self._strict_lower + torch.diag_embed(diag)
        return loc, coupling, diag, tril


class LocalTransform(ParameterAwareCache, Transform):
    """The local map of a batch of groups, for one value of the globals' reference coordinates.

    Acts on ``u (..., n, d_l)`` (one row per group); ``context`` ``(..., d_g)`` broadcasts
    against ``u``'s batch ``(..., n)``; ``index`` picks the groups' heads (``None``: all ``N``).
    ``log_abs_det_jacobian`` returns one value per group, ``(..., n)``.
    """

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True
    sign = +1

    def __init__(self, local: LocalMap, context: torch.Tensor, index: torch.Tensor | None):
        super().__init__(cache_size=1)
        self.local, self.context, self.index = local, context, index
        self._cached_log_det = None

    def _watched_tensors(self):
        return tuple(self.local.parameters())

    def _condition(self, layer: nn.Module, u: torch.Tensor) -> Transform:
        # Without group embeddings the context is the same for every group: an affine
        # layer's (loc, L) are computed once per draw and broadcast over the groups; a
        # monotone layer's network also reads the group's own coordinates, so it runs per
        # (draw, group). With embeddings the context is (globals, group embedding).
        emb = self.local.embedding
        if emb is None and isinstance(layer, ConditionalTriangularAffine):
            return layer.condition(self.context)
        batch = torch.broadcast_shapes(u.shape[:-1], self.context.shape[:-1])
        context = self.context.expand(batch + self.context.shape[-1:])
        if emb is not None:
            if self.index is not None:
                emb = emb.index_select(0, self.index)
            context = torch.cat([context, emb.expand(batch + emb.shape[-1:])], dim=-1)
        return layer.condition(context)

    def _shift(self, loc, coupling) -> torch.Tensor:
        return loc + (coupling @ self.context.unsqueeze(-1)).squeeze(-1)

    def _call(self, u: torch.Tensor) -> torch.Tensor:
        x = u
        log_det = 0.0
        for layer in self.local.shared:
            t = self._condition(layer, u)
            v = t(u)
            log_det = log_det + t.log_abs_det_jacobian(u, v)
            u = v
        loc, coupling, diag, tril = self.local.heads(self.index)
        log_det = log_det + diag.log().sum(-1)
        log_scale = self.local.log_scale(self.context, self.index)
        if log_scale is not None:
            u = u * log_scale.exp()
            log_det = log_det + log_scale.sum(-1)
        z = self._shift(loc, coupling) + (tril @ u.unsqueeze(-1)).squeeze(-1)
        self._cached_log_det = (x, log_det)
        return z

    def _inverse(self, z: torch.Tensor) -> torch.Tensor:
        loc, coupling, _, tril = self.local.heads(self.index)
        r = z - self._shift(loc, coupling)
        batch = torch.broadcast_shapes(r.shape[:-1], tril.shape[:-2])
        u = torch.linalg.solve_triangular(
            tril.expand(batch + tril.shape[-2:]), r.expand(batch + r.shape[-1:]).unsqueeze(-1),
            upper=False,
        ).squeeze(-1)
        log_scale = self.local.log_scale(self.context, self.index)
        if log_scale is not None:
            u = u * (-log_scale).exp()
        for layer in reversed(self.local.shared):
            u = self._condition(layer, u).inv(u)
        return u

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._refresh_cache()
        cached = self._cached_log_det
        if cached is None or cached[0] is not x:
            self._call(x)
            cached = self._cached_log_det
        return cached[1]

    def conditional_score(
        self, u: torch.Tensor, weight: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``z = T(u)``, the groups' scores and the globals' correction ``v`` of
        :func:`~pyro_kr.transforms.score.conditional_block_score` (the path gradient under
        plate subsampling).

        Args:
            u: ``(..., n, d_l)`` the groups' reference draws.
            weight: each group's weight in the guide's log-density (Pyro's scale ``N / B``
                times the mask), broadcastable to ``(..., n)``.

        Returns:
            ``(z, score, v)``: ``z`` ``(..., n, d_l)`` with the graph to the parameters,
            ``score`` ``(..., n, d_l)`` and ``v`` of the context's shape, detached.
        """
        with torch.enable_grad():
            context = self.context.detach().requires_grad_(True)
            leaf = u.detach().requires_grad_(True)
            local = LocalTransform(self.local, context, self.index)
            z = local(leaf)
            log_det = local.log_abs_det_jacobian(leaf, z)
            score, v = conditional_block_score(context, leaf, z, log_det, weight)
        return z, score, v


class SparseKRMap(ParameterAwareCache, TransformModule):
    """The sparse KR map on the packed vector ``(z_g, site_1 (N, s_1), site_2 (N, s_2), ...)``.

    Args:
        plan: the :class:`~pyro_kr.guides.structure.PlatePlan`.
        global_map: the dense map of the ``d_g`` global coordinates.
        local: the :class:`LocalMap` of the groups.
        positions: ``(N, d_l)`` position of each group's coordinates among the packed locals
            (:func:`~pyro_kr.guides.structure.group_positions`).

    Indexing (``map[-1]``) returns the layers of the globals' map (its outermost affine
    layer holds the reference dtype and device, as in the dense ``AutoKR``).
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = +1
    sampling_cost = 8.0
    """Relative memory per mapped coordinate when sampling (``pyro_kr.guides.chunks``): the
    groups' conditioner runs per draw and group, 450 bytes (monotone) to 1.1 KB (affine with
    the group embedding) per coordinate, against about 80 for the dense map."""

    def __init__(
        self, plan: PlatePlan, global_map: ComposeTransformModule, local: LocalMap,
        positions: torch.Tensor,
    ):
        super().__init__(cache_size=1)
        self.plan = plan
        self.global_map = global_map
        self.local = local
        self.global_dim = global_map[-1].loc.numel()
        device = global_map[-1].loc.device
        gather = positions.reshape(-1).to(device)
        self.register_buffer("_gather", gather, persistent=False)
        self.register_buffer("_scatter", torch.argsort(gather), persistent=False)
        self.register_buffer("_positions", positions.to(device), persistent=False)
        self._cached_log_det = None

    def __getitem__(self, index):
        return self.global_map[index]

    def leading_map(self, width: int) -> tuple[int, Transform] | None:
        """The map of the leading coordinates, for the marginal of leading sites.

        Returns ``(d_g, global_map)`` when the first ``width`` coordinates are globals (the
        globals' map acts on the ``d_g`` leading coordinates alone, so it need not touch the
        groups), else ``None``.
        """
        if width > self.global_dim:
            return None
        return self.global_dim, self.global_map

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (..., d)`` -> globals ``(..., d_g)`` and groups ``(..., N, d_l)``."""
        x_g, rest = x[..., : self.global_dim], x[..., self.global_dim :]
        rows = rest.index_select(-1, self._gather)
        return x_g, rows.reshape(x.shape[:-1] + tuple(self._positions.shape))

    def _merge(self, z_g: torch.Tensor, z_loc: torch.Tensor) -> torch.Tensor:
        rest = z_loc.reshape(z_loc.shape[:-2] + (-1,)).index_select(-1, self._scatter)
        return torch.cat([z_g, rest], dim=-1)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        x_g, x_loc = self._split(x)
        z_g = self.global_map(x_g)
        local = LocalTransform(self.local, x_g.unsqueeze(-2), None)
        z_loc = local(x_loc)
        log_det = self.global_map.log_abs_det_jacobian(x_g, z_g)
        log_det = log_det + local.log_abs_det_jacobian(x_loc, z_loc).sum(-1)
        self._cached_log_det = (x, log_det)
        return self._merge(z_g, z_loc)

    def _inverse(self, z: torch.Tensor) -> torch.Tensor:
        z_g, z_loc = self._split(z)
        x_g = self.global_map.inv(z_g)
        x_loc = LocalTransform(self.local, x_g.unsqueeze(-2), None).inv(z_loc)
        return self._merge(x_g, x_loc)

    def log_density_score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z = T(x)`` and the score ``grad_z log q(z)`` of ``q = T#N(0, I)``, ``(..., d)``
        each (:func:`pyro_kr.transforms.score.log_density_score`), by the block solve of
        :func:`~pyro_kr.transforms.score.block_triangular_score`: one backward pass through the
        whole map (plus passes through the globals' map and the groups' own coordinates),
        whatever the number of groups."""
        with torch.enable_grad():
            x_g, x_loc = self._split(x.detach())
            x_g, x_loc = x_g.requires_grad_(True), x_loc.requires_grad_(True)
            z_g = self.global_map(x_g)
            local = LocalTransform(self.local, x_g.unsqueeze(-2), None)
            z_loc = local(x_loc)
            log_det = self.global_map.log_abs_det_jacobian(x_g, z_g)
            log_det = log_det + local.log_abs_det_jacobian(x_loc, z_loc).sum(-1)
            score_g, score_loc = block_triangular_score(x_g, z_g, log_det, x_loc, z_loc)
        return self._merge(z_g, z_loc), self._merge(score_g, score_loc)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._refresh_cache()
        cached = self._cached_log_det
        if cached is None or cached[0] is not x:
            self._call(x)
            cached = self._cached_log_det
        return cached[1]


def globals_first(prototype_trace, latent: list[str]) -> list[str]:
    """``latent`` reordered with the sites outside every vectorized plate first."""
    nodes = prototype_trace.nodes
    glob = [n for n in latent if not any(f.vectorized for f in nodes[n]["cond_indep_stack"])]
    return glob + [n for n in latent if n not in glob]


def needs_globals_first(plan: PlatePlan | str) -> bool:
    """Whether :func:`plate_plan` refused only because a local site comes before a global."""
    return isinstance(plan, str) and "before a global" in plan


def usable_plan(plan: PlatePlan | str, *, init_scale, owner: str) -> PlatePlan | None:
    """The plan if the sparse map can use it, else ``None`` after logging why (dense map).

    Args:
        plan: what :func:`~pyro_kr.guides.structure.plate_plan` returned (a plan or a reason).
        init_scale: the guide's ``init_scale`` (``"laplace"`` needs a dense factor).
        owner: the guide's class name, for the log line.
    """
    if isinstance(plan, PlatePlan) and plan.subsampled and plan.dim != -1:
        plan = (
            f"the subsampled plate {plan.plate!r} has dim {plan.dim}; subsampling with the "
            "sparse map needs the group plate at dim -1"
        )
    if isinstance(plan, PlatePlan) and init_scale == "laplace":
        plan = "init_scale='laplace' builds a dense d x d factor"
    if isinstance(plan, str):
        level = logging.INFO if plan.startswith("no latent site sits") else logging.WARNING
        logger.log(
            level, "%s: using the dense triangular map (structure='dense'): %s", owner, plan
        )
        return None
    return plan


def build_sparse_map(
    prototype_trace, shapes: dict, plan: PlatePlan, *, init_scale: float, map_kind: str,
    depth: int, map_options: dict,
) -> tuple[SparseKRMap, dict]:
    """Build the :class:`SparseKRMap` of a set-up guide and its full-size packing.

    Args:
        prototype_trace: the guide's prototype trace (a subsampled prototype's local values
            are widened in place to all ``N`` groups).
        shapes: site name -> unconstrained shape, in KR order.
        plan: the plate plan.
        init_scale, map_kind, depth, map_options: the guide's map settings.

    Returns:
        ``(map, shapes)``: the map and the unconstrained shapes of all ``N`` groups.
    """
    nodes = prototype_trace.nodes
    shapes = dict(shapes)
    n = plan.full_size
    glob, loc_parts = [], []
    for name in plan.globals:
        value = nodes[name]["value"].detach()
        glob.append(biject_to(nodes[name]["fn"].support).inv(value).reshape(-1))
    for name, axis in zip(plan.locals, plan.group_axes, strict=True):
        value = biject_to(nodes[name]["fn"].support).inv(nodes[name]["value"].detach())
        if value.shape[axis] != n:  # a subsampled prototype: the guide holds all N groups
            value = periodic_repeat(value, n, axis).contiguous()
            nodes[name]["value"] = biject_to(nodes[name]["fn"].support)(value)
        shapes[name] = value.shape
        loc_parts.append(value.movedim(axis, 0).reshape(n, -1))
    loc_g = torch.cat(glob)
    dg = loc_g.numel()
    affine = TriangularAffine(dg).to(loc_g)
    affine.set_loc(loc_g)
    affine.set_scale_tril(torch.eye(dg).to(loc_g) * init_scale)
    layers: list[nn.Module] = []
    if map_kind == "monotone":
        layers = [
            MonotoneTriangular(dg, **map_options).to(loc_g) for _ in range(depth)
        ]
    global_map = ComposeTransformModule([*layers, affine], cache_size=1)
    local = LocalMap(
        n, dg, plan.local_dim, loc=torch.cat(loc_parts, dim=-1), init_scale=init_scale,
        map_kind=map_kind, depth=depth, **map_options,
    )
    positions = group_positions(plan, shapes)
    return SparseKRMap(plan, global_map, local, positions), shapes


def _delta(site: dict, unconstrained: torch.Tensor) -> dist.Delta:
    transform = biject_to(site["fn"].support)
    value = transform(unconstrained)
    if pyro.poutine.get_mask() is False:
        log_density = 0.0
    else:
        log_density = transform.inv.log_abs_det_jacobian(value, unconstrained)
        log_density = sum_rightmost(
            log_density, log_density.dim() - value.dim() + site["fn"].event_dim
        )
    return dist.Delta(value, log_density=log_density, event_dim=site["fn"].event_dim)


def subsampled_forward(
    smap: SparseKRMap, prototype_trace, shapes: dict, prefix: str, plates: dict
) -> dict[str, torch.Tensor]:
    """The guide under plate subsampling: the globals, then the subsampled groups only.

    Samples ``z_g = T_g(x_g)`` (auxiliary site ``_{name}_latent``) and, inside the model's
    plate (same subsample as the model, scaled by Pyro as ``N / B``), the subsampled groups'
    local block (auxiliary site ``_{name}_local``, ``(B, d_l)``), then one ``Delta`` per site.
    The local auxiliary site records the KR position of each coordinate
    (``infer["kr_index"]``) so that :class:`~pyro_kr.TransportELBO` weights its transport
    cost in the KR order of the full vector, and the name of the globals' site it is
    conditioned on (``infer["kr_globals"]``), for the path gradient.

    Args:
        smap: the guide's sparse map; its plan is ``smap.plan``.
        prototype_trace: the guide's prototype trace.
        shapes: site name -> unconstrained shape (all ``N`` groups).
        prefix: the guide's Pyro name, for the auxiliary sites.
        plates: name -> ``pyro.plate`` of the model, with its subsample sizes.
    """
    plan: PlatePlan = smap.plan
    nodes = prototype_trace.nodes
    ref = smap.global_map[-1].loc
    dg, dl = ref.shape[-1], plan.local_dim
    base = dist.Normal(torch.zeros_like(ref), torch.ones_like(ref)).to_event(1)
    z_g = pyro.sample(
        f"_{prefix}_latent",
        dist.TransformedDistribution(base, smap.global_map),
        infer={"is_auxiliary": True},
    )
    x_g = smap.global_map.inv(z_g)
    result, pos = {}, 0
    for name in plan.globals:
        shape = shapes[name]
        size = math.prod(shape)
        event = nodes[name]["fn"].event_dim + len(shape) - nodes[name]["value"].dim()
        shape = torch.broadcast_shapes(shape, z_g.shape[:-1] + (1,) * event)
        block = z_g[..., pos : pos + size].reshape(shape)
        result[name] = pyro.sample(name, _delta(nodes[name], block))
        pos += size
    with plates[plan.plate] as index:
        index = torch.as_tensor(index, device=ref.device)
        zeros = ref.new_zeros(index.shape + (dl,))
        local = LocalTransform(smap.local, x_g, index)
        kr_index = (dg + smap._positions.index_select(0, index)).to(ref.dtype)
        z_loc = pyro.sample(
            f"_{prefix}_local",
            dist.TransformedDistribution(dist.Normal(zeros, 1.0).to_event(1), local),
            infer={"is_auxiliary": True, "kr_index": kr_index, "kr_globals": f"_{prefix}_latent"},
        )
        start, b = 0, index.shape[0]
        for name, size, axis, rank in zip(
            plan.locals, plan.local_sizes, plan.group_axes, plan.batch_ranks, strict=True
        ):
            # z_loc: (*lead, [1 ...], B, d_l) with the group dim at -2; the site's value
            # (*lead, *site shape) with the group axis at `axis` of the site shape
            site_shape = list(shapes[name])
            rest = site_shape[:axis] + site_shape[axis + 1 :]
            lead = z_loc.shape[: max(z_loc.dim() - 1 - rank, 0)]
            block = z_loc[..., start : start + size].reshape(lead + (b, *rest))
            block = block.movedim(len(lead), len(lead) + axis)
            with ExitStack() as stack:
                for frame in _plates_of(nodes[name]):
                    if frame.name != plan.plate:
                        stack.enter_context(plates[frame.name])
                result[name] = pyro.sample(name, _delta(nodes[name], block))
            start += size
    return result


def _plates_of(site: dict) -> list:
    return [f for f in site["cond_indep_stack"] if f.vectorized]
