"""Packed-latent bookkeeping shared by the KR guides (``AutoKR``, ``AmortizedKR``).

Every KR guide packs the model's continuous latent sites, in a chosen KR order, into one
unconstrained vector (as :class:`~pyro.infer.autoguide.AutoContinuous` does) and maps each
block back to its site's support with ``biject_to``. This module holds that common part:
the continuity check, the reordering of the prototype trace, the site slices and the
(un)packing of constrained values.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median

__all__ = ["PackedKRGuide", "discrete_latents"]

logger = logging.getLogger(__name__)


def discrete_latents(trace) -> list[str]:
    """Names of the latent (unobserved, non-subsample) sites of ``trace`` with discrete support."""
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not site["infer"].get("_do_not_trace")
        and not getattr(site["fn"], "_subsample", False)
        and getattr(getattr(site["fn"], "support", None), "is_discrete", False)
    ]


class PackedKRGuide(AutoContinuous):
    """``AutoContinuous`` with a user-chosen site order and named (un)packing helpers.

    Subclasses call :meth:`_setup_packing` from their ``_setup_prototype`` and then build
    their map for ``self.latent_dim`` coordinates.

    Args:
        model: a Pyro model with continuous latent sites.
        order: site names in KR order; listed sites come first, the rest follow in model order.
            ``"model"`` or ``None``: the model's order. ``"auto"``:
            :func:`pyro_kr.guides.order.auto_order` chooses it from the model; where it cannot
            decide, the reason is logged (WARNING; INFO for the site-count limit) and the
            model's order is used.
        init_loc_fn: per-site initialization (Pyro's ``init_to_*`` strategies).

    After setup, ``order`` holds the KR order in use and ``order_choice`` how it was chosen:
    ``"auto"``, ``"model"``, ``"given"``, or ``"model (order='auto' could not decide: ...)"``
    (``AutoKR(structure="plates")`` appends when it then moves the global sites first).
    """

    def __init__(
        self,
        model: Callable,
        *,
        order: Sequence[str] | str | None = None,
        init_loc_fn: Callable = init_to_median,
    ) -> None:
        if isinstance(order, str) and order not in ("auto", "model"):
            raise ValueError(
                f"order must be a list of site names, 'auto' or 'model', got {order!r}"
            )
        self._order_auto = order == "auto"
        self._order_given = order is not None and not isinstance(order, str)
        self._order = list(order) if self._order_given else None
        self.order_choice: str | None = None
        super().__init__(model, init_loc_fn=init_loc_fn)

    def _check_continuous(self, *args, **kwargs) -> None:
        with poutine.block():
            probe = poutine.trace(self.model).get_trace(*args, **kwargs)
        discrete = discrete_latents(probe)
        if discrete:
            raise ValueError(
                f"{type(self).__name__} supports continuous latent sites only; {discrete} are "
                "discrete. Enumerate them out (decorate the model with "
                "@pyro.infer.config_enumerate, train with TraceEnum_ELBO and hide them from "
                "the guide with poutine.block(model, hide=[...])), or marginalize them in the "
                "model."
            )

    def _setup_packing(self, *args, **kwargs) -> None:
        """Check continuity, run ``AutoContinuous._setup_prototype`` and apply the order."""
        self._check_continuous(*args, **kwargs)
        AutoContinuous._setup_prototype(self, *args, **kwargs)
        self.order_choice = "given" if self._order_given else "model"
        if self._order_auto:
            self._order = self._auto_order(args, kwargs)
        self._apply_order()

    def _auto_order(self, args: tuple, kwargs: dict) -> list[str] | None:
        """``auto_order``'s order, or ``None`` (the model's) after logging why it had none."""
        from pyro_kr.guides.order import OrderUndecided, auto_order  # order.py imports us

        try:
            order = auto_order(self.model, args, kwargs)
        except OrderUndecided as exc:
            reason = str(exc)
            level = logging.INFO if "MAX_SITES" in reason else logging.WARNING
            logger.log(
                level, "%s: using the model's order (order='model'): %s", type(self).__name__,
                reason,
            )
            self.order_choice = f"model (order='auto' could not decide: {reason})"
            return None
        self.order_choice = "auto"
        return order

    def _apply_order(self) -> None:
        nodes = self.prototype_trace.nodes
        latent = [name for name, _ in self.prototype_trace.iter_stochastic_nodes()]
        if self._order is None:
            self.order = latent
            return
        unknown = [name for name in self._order if name not in latent]
        if unknown or len(set(self._order)) != len(self._order):
            raise ValueError(
                f"order must list distinct latent sites of the model; unknown or repeated: "
                f"{unknown or self._order}; latent sites are {latent}"
            )
        self.order = self._order + [name for name in latent if name not in self._order]
        reordered = OrderedDict((name, nodes[name]) for name in self.order)
        for name, site in nodes.items():
            if name not in reordered:
                reordered[name] = site
        self.prototype_trace.nodes = reordered
        self._unconstrained_shapes = {n: self._unconstrained_shapes[n] for n in self.order}

    def site_slices(self) -> OrderedDict[str, slice]:
        """Position of every site's unconstrained block in the packed (KR-ordered) vector."""
        out, pos = OrderedDict(), 0
        for name, shape in self._unconstrained_shapes.items():
            size = int(torch.Size(shape).numel())
            out[name] = slice(pos, pos + size)
            pos += size
        return out

    @property
    def unconstrained_shapes(self) -> OrderedDict[str, torch.Size]:
        """Shape of every site's unconstrained value, in the packing (KR) order."""
        if self.prototype_trace is None:
            raise RuntimeError(
                f"{type(self).__name__}.unconstrained_shapes needs the guide's structure: run "
                "the guide once (or train it) first"
            )
        return OrderedDict(self._unconstrained_shapes)

    def unpack(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """Packed unconstrained latents ``(*batch, d)`` -> ``name -> (*batch, *site_shape)``."""
        if self.prototype_trace is None:
            raise RuntimeError("unpack needs the guide's structure: run the guide once first")
        return self._constrain(latent)

    def _constrain(
        self, latent: torch.Tensor, names: list[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Unpack a batch of packed latents ``(*batch, d)`` into constrained site values.

        Returns dict name -> ``(*batch, *site_shape)``. Unlike ``_unpack_latent`` (which
        broadcasts the batch against the site's shape, as inside ``guide()`` where batch dims
        sit left of the model's plates), any leading batch works, also for latent sites inside
        plates. ``names``: only these sites (``latent`` may then hold only the leading
        coordinates that cover them); ``None``: every site.
        """
        batch = latent.shape[:-1]
        out = {}
        slices = self.site_slices()
        for name in slices if names is None else names:
            block = slices[name]
            site = self.prototype_trace.nodes[name]
            value = latent[..., block].reshape(batch + tuple(self._unconstrained_shapes[name]))
            out[name] = biject_to(site["fn"].support)(value)
        return out

    def _pack(self, values: dict[str, torch.Tensor], batch_ndim: int) -> torch.Tensor:
        """Pack constrained site values ``name -> (*batch, *site_shape)`` into ``(*batch, d)``."""
        parts = []
        for name in self.order:
            site = self.prototype_trace.nodes[name]
            value = biject_to(site["fn"].support).inv(values[name])
            batch = value.shape[:batch_ndim]
            parts.append(value.reshape(batch + (-1,)))
        return torch.cat(parts, dim=-1)
