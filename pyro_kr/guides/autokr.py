"""``AutoKR``: a Pyro autoguide whose posterior is a monotone triangular map of N(0, I)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.torch_transform import ComposeTransformModule
from pyro.infer.autoguide.initialization import init_to_median

from pyro_kr._validation import check_dim
from pyro_kr.guides import chunks
from pyro_kr.guides.chunks import map_in_chunks
from pyro_kr.guides.laplace import (
    LaplaceError,
    ModeSurvey,
    laplace_init,
    other_mode,
    survey_modes,
)
from pyro_kr.guides.packing import PackedKRGuide
from pyro_kr.guides.queries import KRQueries
from pyro_kr.guides.sparse import (
    build_sparse_map,
    globals_first,
    needs_globals_first,
    subsampled_forward,
    usable_plan,
)
from pyro_kr.guides.structure import plate_plan
from pyro_kr.traces import guide_plates
from pyro_kr.transforms import MonotoneTriangular, TriangularAffine

__all__ = ["AutoKR", "LAPLACE_SCALE_MAX_DIM", "LAPLACE_SCALE_STARTS", "PLAIN_INIT_SCALE"]

logger = logging.getLogger(__name__)

_MAPS = ("monotone", "affine")
_NAMED_SCALES = ("laplace", "laplace_scale")

PLAIN_INIT_SCALE = 0.1
"""The numeric initial scale ``init_scale="laplace_scale"`` falls back to (the default
``init_scale``)."""

LAPLACE_SCALE_MAX_DIM = 200
"""``init_scale="laplace_scale"`` runs the Laplace fit only up to this many packed latents (its
Hessian costs one backward pass per latent); above it the plain scale is used and the reason
logged. The same limit as ``fit``'s comparison with the Laplace Gaussian."""

LAPLACE_SCALE_STARTS = 4
"""``init_scale="laplace_scale"`` reruns the mode search from this many prior draws (fixed
seed) and uses the Laplace scale only when every search ends at the first mode
(:func:`pyro_kr.guides.laplace.other_mode`): a posterior with several modes keeps the plain
scale."""


class AutoKR(KRQueries, PackedKRGuide):
    """Knothe-Rosenblatt autoguide: ``q = T#N(0, I)`` with ``T`` monotone lower-triangular.

    All latent sites are packed (in the KR ``order``) into one unconstrained vector, as in
    :class:`~pyro.infer.autoguide.AutoMultivariateNormal`; the packed vector is ``T(x)`` with
    ``x ~ N(0, I)``, and Pyro's ``biject_to`` maps each block to its site's support.

    ``map="affine"``: ``T(x) = b + L x`` (the exact KR map of a Gaussian posterior).
    ``map="monotone"``: ``T = A o M_depth o ... o M_1`` with monotone triangular ``M_i``
    (:class:`~pyro_kr.MonotoneTriangular`, near the identity at initialization) and a
    triangular affine ``A`` initialized at ``init_loc_fn``'s point with scale ``init_scale``.

    The ordering matters: each ordering of the variables gives a different KR map. The first
    sites of the order in use (``guide.order`` after setup) are the ones whose marginals are
    exact and cheap (:meth:`marginal`), and :meth:`conditional` samples the later sites given
    fixed values of the leading ones. By default (``order="auto"``) the order is chosen from
    the model, so the leading sites need not be the model's first ones: read ``guide.order``,
    or pass ``order=[...]`` with the sites you want to condition on (hyperparameters, global
    scales) first, or ``order="model"`` for the model's order.

    Args:
        model: a Pyro model with continuous latent sites.
        map: ``"monotone"`` (default) or ``"affine"``.
        order: ``"auto"`` (default): chosen from the model at setup, before training
            (parents, e.g. scales, before the sites they parameterize; then non-Gaussian
            conditionals before Gaussian ones, the model's order breaking ties; deterministic;
            see :func:`pyro_kr.guides.order.auto_order`). Where it cannot decide (a prior
            that cannot be sampled, dependencies Pyro cannot trace, more than
            :data:`~pyro_kr.guides.order.MAX_SITES` latent sites) the reason is logged and the
            model's order is used; ``guide.order_choice`` records which. ``"model"`` (or
            ``None``): the order in which the model samples its sites. A list of site names:
            listed sites come first (in that order), unlisted ones follow in the model's
            order.
        init_loc_fn: per-site initialization (Pyro's ``init_to_*`` strategies).
        init_scale: the affine part's initial scale: a number (default 0.1) times the
            identity, or ``"laplace"``: start the affine part at the Laplace approximation in
            the packed unconstrained space (``loc`` at the posterior mode found by L-BFGS from
            ``init_loc_fn``'s point, ``scale_tril`` the Cholesky factor of the inverse Hessian
            there; see :mod:`pyro_kr.guides.laplace`). For a Gaussian posterior that is already
            the KR map; for ill-conditioned posteriors it saves thousands of steps. It needs a
            posterior with a strict mode (not a centered funnel) and a model without data
            subsampling, and raises :class:`~pyro_kr.guides.laplace.LaplaceError` otherwise;
            it starts a multimodal posterior on one mode. ``"laplace_scale"``: the Laplace
            fit's ``scale_tril`` only, with ``loc`` left at ``init_loc_fn``'s point, and only
            where the posterior shows one mode: the mode search is rerun from
            :data:`LAPLACE_SCALE_STARTS` prior draws (fixed seed; the caller's random stream is
            untouched) and each must end within one Laplace sd of the first mode. Where there
            is no usable Laplace fit (no strict mode, e.g. a funnel; several modes, or
            searches that do not settle; data subsampling; a model the Hessian cannot be
            taken of) the reason is logged (logger ``pyro_kr.guides.autokr``, WARNING; INFO
            above :data:`LAPLACE_SCALE_MAX_DIM` latents and for ``structure="plates"``'s
            sparse map) and :data:`PLAIN_INIT_SCALE` used; ``guide.init_scale_choice`` records
            which (``"laplace_scale"``, or ``"0.1 (laplace_scale unusable: <reason>)"``). It
            costs up to five mode searches and one ``d x d`` Hessian at the first guide call.
            Measured with the default recipe (tempered ``Annealing.over(steps)``, ``fit``'s lr
            decay after the ramp; docs/hard_posteriors.md); with an optimizer whose lr decays
            during a tempering ramp it can end too wide (the docs give the numbers).
        depth: number of monotone layers for ``map="monotone"``.
        structure: ``"dense"`` (default): one triangular map over all latents.
            ``"plates"``: the sparse map of a hierarchical model read off its plates (globals
            dense, one shared conditional map for the groups of a ``pyro.plate``, plate
            subsampling supported; see :mod:`pyro_kr.guides.sparse` and
            docs/hierarchical.md); a model whose plates cannot be used gets the dense map and
            a logged warning saying why.
        **map_options: passed to :class:`~pyro_kr.MonotoneTriangular` (``hidden_dims``,
            ``num_bumps``, ``min_slope``, ...).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(data):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        ...     tau = pyro.sample("tau", dist.HalfCauchy(1.0))
        ...     with pyro.plate("data", len(data)):
        ...         pyro.sample("obs", dist.Normal(mu, tau), obs=data)
        >>> guide = AutoKR(model, order=["tau", "mu"])
        >>> draws = guide.sample_posterior(100, torch.randn(20))
        >>> draws["tau"].shape, bool((draws["tau"] > 0).all())
        (torch.Size([100]), True)
    """

    def __init__(
        self,
        model: Callable,
        *,
        map: str = "monotone",
        order: Sequence[str] | str | None = "auto",
        init_loc_fn: Callable = init_to_median,
        init_scale: float | str = 0.1,
        depth: int = 2,
        structure: str = "dense",
        **map_options,
    ) -> None:
        if structure not in ("dense", "plates"):
            raise ValueError(f"structure must be 'dense' or 'plates', got {structure!r}")
        self._structure = structure
        self._plate_plan = None
        if map not in _MAPS:
            raise ValueError(f"map must be one of {_MAPS}, got {map!r}")
        if isinstance(init_scale, str):
            if init_scale not in _NAMED_SCALES:
                raise ValueError(
                    "init_scale must be a positive number, 'laplace' or 'laplace_scale', got "
                    f"{init_scale!r}"
                )
        elif not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        if map == "affine" and map_options:
            raise ValueError(
                f"map='affine' takes no map options, got {sorted(map_options)}; "
                "they configure map='monotone'"
            )
        self._map_kind = map
        self._init_scale = init_scale if isinstance(init_scale, str) else float(init_scale)
        #: How the affine part's initial scale was chosen, after setup (see ``init_scale``).
        self.init_scale_choice: str | None = None
        self._depth = depth
        self._map_options = map_options
        super().__init__(model, order=order, init_loc_fn=init_loc_fn)

    def _setup_prototype(self, *args, **kwargs) -> None:
        self._setup_packing(*args, **kwargs)
        if self._structure == "plates":
            self._plate_plan = self._choose_plate_plan()
            if self._plate_plan is not None:
                self.transform, shapes = build_sparse_map(
                    self.prototype_trace, self._unconstrained_shapes, self._plate_plan,
                    init_scale=self._sparse_init_scale(), map_kind=self._map_kind,
                    depth=self._depth,
                    map_options=self._map_options,
                )
                self._unconstrained_shapes = shapes
                self.latent_dim = sum(math.prod(s) for s in shapes.values())
                return
        loc = self._init_loc()
        eye = torch.eye(self.latent_dim, dtype=loc.dtype, device=loc.device)
        if self._init_scale == "laplace":
            loc, scale_tril = laplace_init(self, loc.detach(), *args, **kwargs)
            self.init_scale_choice = "laplace"
        elif self._init_scale == "laplace_scale":
            scale_tril = self._laplace_scale(loc, *args, **kwargs)
            if scale_tril is None:
                scale_tril = eye * PLAIN_INIT_SCALE
        else:
            scale_tril = eye * self._init_scale
            self.init_scale_choice = str(self._init_scale)
        self.transform = self._build_map(loc, scale_tril)

    def _laplace_scale(self, loc: torch.Tensor, *args, **kwargs) -> torch.Tensor | None:
        """The Laplace fit's ``scale_tril`` for ``init_scale="laplace_scale"``, or ``None``
        after logging why there is none (``init_scale_choice`` records it)."""
        level, reason = logging.WARNING, None
        if self.latent_dim > LAPLACE_SCALE_MAX_DIM:
            level = logging.INFO
            reason = (f"{self.latent_dim} latents, more than LAPLACE_SCALE_MAX_DIM = "
                      f"{LAPLACE_SCALE_MAX_DIM}")
        else:
            devices = [loc.device.index or 0] if loc.device.type == "cuda" else []
            try:
                # the L-BFGS search draws nothing, but keep the caller's RNG untouched anyway
                with torch.random.fork_rng(devices=devices):
                    mode, scale_tril = laplace_init(self, loc.detach(), *args, **kwargs)
                    reason = other_mode(self, mode, scale_tril, *args,
                                        num_starts=LAPLACE_SCALE_STARTS, **kwargs)
            except LaplaceError as exc:
                reason = str(exc).splitlines()[0]
            except Exception as exc:  # noqa: BLE001 - any failure: logged, the plain scale
                reason = f"the Laplace fit failed ({type(exc).__name__}: {exc})".splitlines()[0]
            if reason is None:
                self.init_scale_choice = "laplace_scale"
                return scale_tril
        self.init_scale_choice = f"{PLAIN_INIT_SCALE} (laplace_scale unusable: {reason[:300]})"
        logger.log(level, "AutoKR: init_scale=%s instead of the Laplace scale: %s",
                   PLAIN_INIT_SCALE, reason)
        return None

    @property
    def map_kind(self) -> str:
        """The map family: ``"monotone"`` or ``"affine"`` (the ``map`` argument)."""
        return self._map_kind

    def survey_modes(self, *args, **kwargs) -> ModeSurvey:
        """Search the posterior for several modes (what ``fit(..., restarts="auto")`` reads).

        Runs :func:`pyro_kr.guides.laplace.survey_modes` from ``init_loc_fn``'s point and
        :data:`LAPLACE_SCALE_STARTS` prior draws (fixed seed), everything inside
        :func:`torch.random.fork_rng`: the caller's random stream is left as it was, and a
        guide that is not set up yet stays so (the survey uses an affine ``AutoKR`` of the
        same model and ``init_loc_fn``, in the order given or else the model's: the modes
        do not depend on the order; the guide's own start and training are exactly what they
        would be without the survey). Costs up to five L-BFGS searches and
        one ``d x d`` Hessian per search end. Not run (``survey.skipped`` says why) with
        ``structure="plates"`` and above :data:`LAPLACE_SCALE_MAX_DIM` latents; a survey that
        raises is reported the same way.

        Args:
            *args, **kwargs: the model's arguments.

        Returns:
            A :class:`~pyro_kr.guides.laplace.ModeSurvey` (``survey.several``: more than one
            mode holds mass).

        Example:
            >>> import pyro, pyro.distributions as dist, torch
            >>> def model():
            ...     z = pyro.sample("z", dist.Normal(0.0, 3.0))
            ...     pyro.sample("y", dist.Normal(z ** 2, 0.1), obs=torch.tensor(4.0))
            >>> AutoKR(model).survey_modes().several  # z near +2 and near -2
            True
        """
        if self._structure == "plates":
            return ModeSurvey(skipped="structure='plates' (a hierarchy's sparse map)")
        devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
        try:
            with torch.random.fork_rng(devices=devices):
                probe = self
                if self.prototype_trace is None:
                    order = list(self._order) if self._order_given else "model"
                    # self.model already carries this guide's init_loc_fn (Pyro wraps it in
                    # an InitMessenger), which sets every value before the probe's own would
                    probe = AutoKR(self.model, map="affine", order=order,
                                   init_scale=PLAIN_INIT_SCALE)
                    probe._setup_prototype(*args, **kwargs)
                if probe.latent_dim > LAPLACE_SCALE_MAX_DIM:
                    return ModeSurvey(skipped=f"{probe.latent_dim} latents, more than "
                                              f"LAPLACE_SCALE_MAX_DIM = {LAPLACE_SCALE_MAX_DIM}")
                loc = probe._init_loc().detach()
                return survey_modes(probe, loc, *args, num_starts=LAPLACE_SCALE_STARTS,
                                    **kwargs)
        except Exception as exc:  # noqa: BLE001 - reported, never fatal: the survey advises
            reason = f"the mode survey failed ({type(exc).__name__}: {exc})".splitlines()[0]
            return ModeSurvey(skipped=reason[:300])

    def _sparse_init_scale(self) -> float:
        """The numeric scale of the sparse map (``"laplace_scale"`` needs a dense factor:
        the plain scale, logged)."""
        if self._init_scale != "laplace_scale":
            self.init_scale_choice = str(self._init_scale)
            return self._init_scale
        reason = "structure='plates' builds a sparse map, and the Laplace scale is dense"
        self.init_scale_choice = f"{PLAIN_INIT_SCALE} (laplace_scale unusable: {reason})"
        logger.info("AutoKR: init_scale=%s instead of the Laplace scale: %s",
                    PLAIN_INIT_SCALE, reason)
        return PLAIN_INIT_SCALE

    def _choose_plate_plan(self):
        """The plate plan of the prototype (globals put first if no order was given), or
        ``None`` after logging why the dense map is used."""
        plan = plate_plan(self.prototype_trace, self._unconstrained_shapes, list(self.order))
        if needs_globals_first(plan) and not self._order_given:
            self._order = globals_first(self.prototype_trace, list(self.order))
            self._apply_order()
            self.order_choice += ", then the global sites first (structure='plates')"
            plan = plate_plan(self.prototype_trace, self._unconstrained_shapes, list(self.order))
        return usable_plan(plan, init_scale=self._init_scale, owner=type(self).__name__)

    def _build_map(self, loc: torch.Tensor, scale_tril: torch.Tensor) -> ComposeTransformModule:
        d = self.latent_dim
        affine = TriangularAffine(d).to(dtype=loc.dtype, device=loc.device)
        affine.set_loc(loc.detach())
        affine.set_scale_tril(scale_tril)
        parts: list[torch.nn.Module] = []
        if self._map_kind == "monotone":
            parts = [
                MonotoneTriangular(d, **self._map_options).to(dtype=loc.dtype, device=loc.device)
                for _ in range(self._depth)
            ]
        return ComposeTransformModule([*parts, affine], cache_size=1)

    def forward(self, *args, **kwargs):
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        if self._plate_plan is not None and self._plate_plan.subsampled:
            return subsampled_forward(
                self.get_transform(*args, **kwargs), self.prototype_trace,
                self._unconstrained_shapes, self._pyro_name, guide_plates(self, *args, **kwargs),
            )
        return super().forward(*args, **kwargs)

    @property
    def sampling_cost(self) -> float:
        """Relative memory per sampled coordinate of the map in use (8 for the sparse map of
        ``structure="plates"``, 1 for a dense map or before setup); the chunked sampling of
        :mod:`pyro_kr.guides.chunks` (and of ``psis`` / ``to_inference_data``) divides its
        coordinate budget by it."""
        if self.prototype_trace is None:
            return 1.0
        return chunks.sampling_cost(self._map())

    @property
    def structure_plan(self):
        """The plate plan of ``structure="plates"`` in use, or ``None`` (a dense map)."""
        return self._plate_plan

    def _map(self) -> ComposeTransformModule:
        # Read the submodule without PyroModule.__getattr__, which inside forward() issues a
        # pyro.module statement (a walk over every parameter) on each access; get_transform
        # registers the map once per call instead.
        return self._modules["transform"]

    def _reference_like(self) -> torch.Tensor:
        return self._map()[-1].loc

    def get_base_dist(self) -> dist.Distribution:
        ref = self._reference_like()
        zeros = torch.zeros(self.latent_dim, dtype=ref.dtype, device=ref.device)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def get_transform(self, *args, **kwargs) -> ComposeTransformModule:
        transform = self._map()
        # Point the map at the param store's tensors when they differ, so that
        # pyro.get_param_store().load(...) / set_state(...) take effect, as for AutoNormal.
        with self._pyro_context:  # the full name is defined outside forward() too
            name = self._pyro_get_fullname("transform")
        pyro.module(name, transform, update_module_params=True)
        return transform

    @torch.no_grad()
    def sample_posterior(self, num_samples: int, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Draw ``num_samples`` joint posterior draws: dict name -> ``(num_samples, *shape)``.

        The reference draws are mapped in chunks of at most
        :data:`~pyro_kr.guides.chunks.SAMPLE_CHUNK_COORDINATES` coordinates, so the memory
        beyond the draws themselves stays bounded (the same draws as one call).
        """
        check_dim("num_samples", num_samples)
        self._ensure_setup(*args, **kwargs)
        x = self.get_base_dist().sample((num_samples,))
        return self._constrain(map_in_chunks(self.get_transform(), x))

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """``T(0)`` mapped to each site's support: the vector of conditional medians.

        Its first coordinate is the exact marginal median of the leading variable; coordinate
        ``k`` is the median of variable ``k`` given the previous ones at their conditional
        medians (for a Gaussian posterior: the mean).
        """
        self._ensure_setup(*args, **kwargs)
        zero = self.get_base_dist().mean
        return self._constrain(self.get_transform()(zero))

    @torch.no_grad()
    def quantiles(
        self, quantiles: Sequence[float], *args, num_samples: int = 4000, **kwargs
    ) -> dict[str, torch.Tensor]:
        """Elementwise marginal quantiles estimated from ``num_samples`` posterior draws.

        Returns dict name -> tensor ``(len(quantiles), *site_shape)``, as Pyro's autoguides.
        """
        q = torch.as_tensor(quantiles, dtype=self._reference_like().dtype)
        if q.dim() != 1 or not bool(((q >= 0) & (q <= 1)).all()):
            raise ValueError(f"quantiles must be a list of numbers in [0, 1], got {quantiles}")
        draws = self.sample_posterior(num_samples, *args, **kwargs)
        return {name: torch.quantile(v, q.to(v), dim=0) for name, v in draws.items()}

    def _ensure_setup(self, *args, **kwargs) -> None:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        else:
            self._check_latent_shapes(*args, **kwargs)
