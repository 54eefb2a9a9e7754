"""``AmortizedKR``: one conditional KR map answers posterior queries for any observation.

The block-triangular map ``T(y, x) = (y, T_U(y, x))`` of docs/amortized.md (Kerrigan et al. 2024,
Prop. 1): for every observation ``y`` the map ``x -> T_U(e(y), x)`` is monotone
lower-triangular in ``x`` and pushes ``N(0, I)`` to ``q(u | y)``. ``e`` is an embedding of the
observed sites; ``T_U = A(e) o M_depth(e) o ... o M_1(e)`` with conditional monotone layers
:class:`~pyro_kr.ConditionalMonotoneTriangular` and a conditional affine layer
:class:`~pyro_kr.ConditionalTriangularAffine`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import init_to_median
from torch import nn
from torch.distributions import ComposeTransform, Transform

from pyro_kr.amortized.embedding import StandardizedMLP
from pyro_kr.amortized.log_density import conditioned_log_prob
from pyro_kr.amortized.observations import ObservedLayout, SiteUnconstrain, accepts_keyword
from pyro_kr.amortized.sampler import PosteriorSampler
from pyro_kr.guides.packing import PackedKRGuide
from pyro_kr.traces import plate_depth, simulate_pairs, site_names
from pyro_kr.transforms import ConditionalMonotoneTriangular, ConditionalTriangularAffine

__all__ = ["AmortizedKR"]

_MAPS = ("monotone", "affine")
Data = torch.Tensor | dict[str, torch.Tensor]


class AmortizedKR(PackedKRGuide):
    """Amortized Knothe-Rosenblatt guide ``q(u | y) = T_U(e(y), .) # N(0, I)``.

    Latent sites are found by tracing the model and packed (in the KR ``order``) into one
    unconstrained vector, as in :class:`~pyro_kr.AutoKR`; ``biject_to`` maps each block to its
    site's support, so constrained latents work. The model receives the data of each observed
    site as the keyword argument named after the site (``model(y=y_obs)``); calling the guide
    with the same arguments gives a draw from ``q(u | y_obs)``, so it works in ``SVI``,
    ``Predictive`` and :func:`pyro_kr.diagnostics.to_inference_data`.

    The default embedding (:class:`~pyro_kr.amortized.StandardizedMLP`) unconstrains each
    observation with its site's support, standardizes it with ``num_standardize``
    prior-predictive simulations and appends an MLP of it. Any ``nn.Module`` taking the
    observation ``(*batch, *y_shape)`` (the flattened concatenation ``(*batch, n)`` when there
    are several observed sites) to ``(*batch, c)`` can replace it.

    Args:
        model: a Pyro model with continuous latent sites and observed sites whose data it takes
            as keyword arguments of the same name.
        observed: name (or names) of the observed sites the posterior is amortized over.
        embedding: ``None`` (default embedding) or an ``nn.Module``.
        map: ``"monotone"`` (default) or ``"affine"`` (Gaussian ``q(u | y)``).
        order: KR order of the latent sites (see :class:`~pyro_kr.AutoKR`).
        init_loc_fn: initial location of the affine layer (the same for every ``y``).
        init_scale: initial scale of the affine layer.
        depth: number of conditional monotone layers for ``map="monotone"``.
        embedding_dim: MLP width of the default embedding (default ``clip(2 n, 8, 64)``).
        embedding_hidden: hidden widths of the default embedding's MLP.
        num_standardize: prior-predictive simulations for the default standardization.
        **map_options: passed to every conditional layer of the chosen family
            (``hidden_dims``, ``num_bumps``, ``min_slope``, ...).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(y=None):
        ...     z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        ...     return pyro.sample("y", dist.Normal(z, 0.5).to_event(1), obs=y)
        >>> pyro.clear_param_store()  # parameters live in the global param store
        >>> guide = AmortizedKR(model, observed="y", map="affine")
        >>> post = guide.posterior(torch.randn(5, 2))  # 5 observations at once
        >>> post.batch_shape, post.event_shape
        (torch.Size([5]), torch.Size([2]))
        >>> guide.sample(torch.zeros(2), 100)["z"].shape
        torch.Size([100, 2])
    """

    def __init__(
        self,
        model: Callable,
        *,
        observed: str | Sequence[str],
        embedding: nn.Module | None = None,
        map: str = "monotone",
        order: Sequence[str] | None = None,
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 0.1,
        depth: int = 2,
        embedding_dim: int | None = None,
        embedding_hidden: Sequence[int] = (64, 64),
        num_standardize: int = 1000,
        **map_options,
    ) -> None:
        if map not in _MAPS:
            raise ValueError(f"map must be one of {_MAPS}, got {map!r}")
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        if embedding is not None and not isinstance(embedding, nn.Module):
            raise TypeError(
                f"embedding must be a torch.nn.Module or None, got {type(embedding).__name__}"
            )
        self.observed = site_names(observed)
        self._map_kind, self._init_scale, self._depth = map, float(init_scale), depth
        self._embedding_dim, self._embedding_hidden = embedding_dim, tuple(embedding_hidden)
        self._num_standardize, self._map_options = num_standardize, map_options
        super().__init__(model, order=order, init_loc_fn=init_loc_fn)
        self._user_embedding = (embedding,)  # a tuple: registered only inside self.nets
        self._user_model = (model,)  # self.model is wrapped by AutoContinuous' InitMessenger

    # -- setup -------------------------------------------------------------------------------
    def _setup_prototype(self, *args, **kwargs) -> None:
        owner = type(self).__name__
        with torch.no_grad(), poutine.block():
            probe = poutine.trace(self.model).get_trace(*args, **kwargs)
        self.layout = ObservedLayout.from_trace(probe, self.observed, owner)
        self._setup_packing(*args, **kwargs)
        self.plate_depth = plate_depth(probe)  # the prototype trace hides observed sites
        loc = self._init_loc()
        embedding, features = self._build_embedding(loc, args, kwargs, probe)
        parts: list[nn.Module] = []
        d = self.latent_dim
        if self._map_kind == "monotone":
            parts = [
                ConditionalMonotoneTriangular(d, features, **self._map_options)
                for _ in range(self._depth)
            ]
            affine = ConditionalTriangularAffine(d, features, init_scale=self._init_scale)
        else:
            affine = ConditionalTriangularAffine(
                d, features, init_scale=self._init_scale, **self._map_options
            )
        with torch.no_grad():
            affine.net[-1].bias[:d].copy_(loc.detach())
        maps = nn.ModuleList([*parts, affine]).to(dtype=loc.dtype, device=loc.device)
        self.nets = nn.ModuleDict({"embedding": embedding, "maps": maps})
        # Plain references: attribute access through PyroModule.__getattr__ is slow per step.
        self._parts = (self.nets, embedding, maps, affine.net[-1].bias)

    def _build_embedding(self, loc, args, kwargs, probe) -> tuple[nn.Module, int]:
        owner = type(self).__name__
        user = self._user_embedding[0]
        if user is not None:
            data = {n: probe.nodes[n]["value"].detach() for n in self.observed}
            with torch.no_grad():
                out = self._embed(user, data, torch.Size())
            if out.dim() != 1:
                raise ValueError(
                    f"{owner}: the embedding must map one observation to a vector (c,), "
                    f"got shape {tuple(out.shape)}"
                )
            return user, int(out.shape[-1])
        model_kwargs = {k: v for k, v in kwargs.items() if k not in self.observed}
        sims = simulate_pairs(  # the user's model: self.model sets latents to init values
            self._user_model[0], args, model_kwargs, self.layout.shapes, self._num_standardize,
            depth=self.plate_depth, seed=0,
        )
        unconstrain = SiteUnconstrain(self.layout)
        flat = unconstrain(self.layout.flatten(sims, torch.Size([self._num_standardize])))
        flat = flat.to(loc)
        mean, std = flat.mean(0), flat.std(0)
        std = torch.where(std > 1e-8 * (1 + mean.abs()), std, torch.ones_like(std))
        n = self.layout.size
        width = self._embedding_dim or min(64, max(8, 2 * n))
        embedding = StandardizedMLP(
            n, width, hidden_dims=self._embedding_hidden, loc=mean, scale=std,
            unconstrain=unconstrain,
        ).to(dtype=loc.dtype, device=loc.device)
        return embedding, embedding.features

    def _ensure_setup(self, *args, **kwargs) -> None:
        """Set up the guide; without data, simulate one observation from the prior predictive."""
        if self.prototype_trace is not None:
            return
        missing = [n for n in self.observed if kwargs.get(n) is None]
        if missing:
            owner = type(self).__name__
            with torch.no_grad(), poutine.block():
                free = poutine.uncondition(self._user_model[0])
                trace = poutine.trace(free).get_trace(*args, **kwargs)
            sites = sorted(n for n, s in trace.nodes.items() if s["type"] == "sample")
            for name in missing:
                if name not in sites:
                    raise ValueError(
                        f"{owner}: observed site {name!r} is not a sample site of the model; "
                        f"its sample sites are {sites}"
                    )
                if not accepts_keyword(self._user_model[0], name):
                    raise ValueError(
                        f"{owner}: observed site {name!r} is a latent site of the model, or the "
                        f"model does not take its data as the keyword argument {name}=<data> "
                        "(observed must name the sites the model observes, e.g. "
                        "pyro.sample('y', ..., obs=y) in model(y=None))"
                    )
            kwargs = {**kwargs, **{n: trace.nodes[n]["value"] for n in missing}}
        self._setup_prototype(*args, **kwargs)

    # -- the pieces other modules use (sampler, training, simulation streams) -----------------
    def setup(self, *args, **kwargs) -> None:
        """Build the guide's structure and networks from one trace of the model (idempotent).

        ``*args, **kwargs`` are the model's arguments; observed sites given no data are
        simulated once from the prior predictive.
        """
        self._ensure_setup(*args, **kwargs)

    def reference_like(self) -> torch.Tensor:
        """A parameter tensor of the guide: its dtype and device are the guide's."""
        return self._reference_like()

    def networks(self) -> nn.ModuleDict:
        """The embedding and maps (``{"embedding", "maps"}``) holding the param store's values."""
        self._register()
        return self._parts[0]

    def as_data(self, y: Data) -> dict[str, torch.Tensor]:
        """Observations as ``name -> tensor`` (a tensor is the single observed site's data)."""
        return self._as_data(y)

    def embed(self, embedding: nn.Module, data: dict[str, torch.Tensor], batch: torch.Size):
        """Apply ``embedding`` (this guide's or a copy) to data of batch shape ``batch``."""
        return self._embed(embedding, data, batch)

    # -- data and context --------------------------------------------------------------------
    def _reference_like(self) -> torch.Tensor:
        return self._parts[3]

    def _data(self, args: tuple, kwargs: dict) -> tuple[dict[str, torch.Tensor], torch.Size]:
        owner = type(self).__name__
        if all(kwargs.get(n) is not None for n in self.observed):
            data = {n: kwargs[n] for n in self.observed}
        else:
            data = self.layout.from_model(self.model, args, kwargs, owner)
        return self.layout.check(owner, data, self._reference_like())

    def _as_data(self, y: Data) -> dict[str, torch.Tensor]:
        if isinstance(y, dict):
            unknown = sorted(set(y) - set(self.observed))
            if unknown:
                raise ValueError(f"unknown observed sites {unknown}; observed={self.observed}")
            return dict(y)
        if len(self.observed) != 1:
            raise ValueError(
                f"the guide observes {self.observed}: pass a dict name -> tensor, got a tensor"
            )
        return {self.observed[0]: y}

    def _embed(self, embedding, data, batch: torch.Size):
        if isinstance(embedding, StandardizedMLP) or len(self.observed) > 1:
            inputs = self.layout.flatten(data, batch)
        else:
            inputs = data[self.observed[0]]
        return embedding(inputs)

    def _context(self, data: dict[str, torch.Tensor], batch: torch.Size) -> torch.Tensor:
        ref = self._reference_like()
        _, emb, maps, _ = self._parts
        features = maps[-1].context_dim
        first = next(emb.parameters(), None)
        if first is not None:
            data = {k: v.to(dtype=first.dtype, device=first.device) for k, v in data.items()}
        context = self._embed(emb, data, batch).to(dtype=ref.dtype, device=ref.device)
        if context.shape != batch + (features,):
            raise ValueError(
                f"{type(self).__name__}: the embedding returned shape {tuple(context.shape)} "
                f"for observations of batch shape {tuple(batch)}; expected "
                f"{tuple(batch + (features,))}"
            )
        return context

    def _register(self) -> None:
        # Point the networks at the param store's tensors (as AutoKR.get_transform does).
        with self._pyro_context:  # makes the full name available outside forward()
            name = self._pyro_get_fullname("nets")
        pyro.module(name, self._parts[0], update_module_params=True)

    def conditioned_map(self, context: torch.Tensor) -> Transform:
        """The map ``x -> T_U(context, x)`` batched over contexts ``(..., c)``."""
        layers = [m.condition(context) for m in self._parts[2]]
        return ComposeTransform(layers, cache_size=1)

    def _posterior(self, data, batch: torch.Size, *, pad: bool) -> dist.Distribution:
        self._register()
        context = self._context(data, batch)
        if pad and len(batch):  # data batch dims sit left of the model's plates
            context = context.reshape(batch + (1,) * self.plate_depth + context.shape[-1:])
        base = self.get_base_dist().expand(context.shape[:-1])
        return dist.TransformedDistribution(base, self.conditioned_map(context))

    # -- AutoContinuous hooks ----------------------------------------------------------------
    def get_base_dist(self) -> dist.Distribution:
        ref = self._reference_like()
        zeros = torch.zeros(self.latent_dim, dtype=ref.dtype, device=ref.device)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def get_transform(self, *args, **kwargs) -> Transform:
        data, batch = self._data(args, kwargs)
        self._register()
        return self.conditioned_map(self._context(data, batch))

    def get_posterior(self, *args, **kwargs) -> dist.Distribution:
        data, batch = self._data(args, kwargs)
        return self._posterior(data, batch, pad=True)

    # -- public queries ----------------------------------------------------------------------
    def posterior(self, y: Data, *args, **kwargs) -> dist.Distribution:
        """``q(u | y)`` over the packed unconstrained latents, batched over observations.

        Args:
            y: one observation ``y_shape`` or a batch ``(m, *y_shape)`` (a dict name -> tensor
                for several observed sites).
            *args, **kwargs: the model's other arguments (used only to set the guide up).

        Returns:
            A ``TransformedDistribution`` with batch shape ``(m,)`` (or ``()``) and event
            shape ``(d,)``; unpack values with :meth:`site_slices` or :meth:`sample`.
        """
        data = self._as_data(y)
        self._ensure_setup(*args, **kwargs)
        data, batch = self.layout.check(type(self).__name__, data, self._reference_like())
        return self._posterior(data, batch, pad=False)

    @torch.no_grad()
    def sample(self, y: Data, num_samples: int, *args, **kwargs) -> dict[str, torch.Tensor]:
        """Draw ``num_samples`` posterior draws per observation, as constrained site values.

        Returns:
            dict name -> ``(num_samples, *batch, *site_shape)``.
        """
        post = self.posterior(y, *args, **kwargs)
        return self._constrain(post.sample((num_samples,)))

    def sampler(
        self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> PosteriorSampler:
        """A detached snapshot of the networks in ``dtype`` for fast serving of draws.

        ``guide.sampler().sample(y, n)`` draws like :meth:`sample`, in float32 by default
        (about 2x faster on a CPU); later training does not change the snapshot.
        """
        return PosteriorSampler(self, dtype=dtype, device=device)

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """``T_U(e(y), 0)`` in each site's support, for the data in the model's arguments.

        The vector of conditional medians in KR order (for a Gaussian ``q``: the mean).
        """
        self._ensure_setup(*args, **kwargs)
        data, batch = self._data(args, kwargs)
        post = self._posterior(data, batch, pad=False)
        return self._constrain(post.transforms[0](post.base_dist.mean))

    @torch.no_grad()
    def quantiles(self, quantiles, *args, num_samples: int = 4000, **kwargs):
        """Marginal quantiles from ``num_samples`` draws: name -> ``(len(q), *batch, *shape)``."""
        self._ensure_setup(*args, **kwargs)
        data, batch = self._data(args, kwargs)
        q = torch.as_tensor(quantiles, dtype=self._reference_like().dtype)
        if q.dim() != 1 or not bool(((q >= 0) & (q <= 1)).all()):
            raise ValueError(f"quantiles must be a list of numbers in [0, 1], got {quantiles}")
        draws = self._constrain(self._posterior(data, batch, pad=False).sample((num_samples,)))
        return {name: torch.quantile(v, q.to(v), dim=0) for name, v in draws.items()}

    def log_prob(self, latent: torch.Tensor, y: Data) -> torch.Tensor:
        """Differentiable ``log q(latent | y)`` of packed unconstrained latents ``(..., d)``.

        Unlike ``posterior(y).log_prob``, gradients reach the map's parameters through the
        monotone layers' inverse (what maximum-likelihood training needs).
        """
        post = self.posterior(y)
        return conditioned_log_prob(post.transforms[0], latent)

    def pack(self, values: dict[str, torch.Tensor], batch_ndim: int = 1) -> torch.Tensor:
        """Pack constrained site values ``name -> (*batch, *site_shape)`` into ``(*batch, d)``."""
        if self.prototype_trace is None:
            raise RuntimeError("pack needs the guide's structure: call posterior(y) first")
        return self._pack(values, batch_ndim)

    def unpack(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """Packed unconstrained latents ``(*batch, d)`` -> ``name -> (*batch, *site_shape)``."""
        if self.prototype_trace is None:
            raise RuntimeError("unpack needs the guide's structure: call posterior(y) first")
        return self._constrain(latent)
