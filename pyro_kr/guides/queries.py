"""KR-only posterior queries: exact marginals of leading sites, conditionals of the rest.

For a lower-triangular ``T``, the first ``m`` output coordinates depend only on the first
``m`` reference coordinates (docs/maps.md), so

* ``T_{1:m}(x_{1:m})`` with ``x_{1:m} ~ N(0, I_m)`` is an exact draw of the marginal of the
  leading sites, and
* fixing the leading values ``z_{1:m}``, inverting the leading components to ``x_{1:m}`` and
  drawing ``x_{m+1:d} ~ N(0, I)`` gives an exact draw of ``q(z_{m+1:d} | z_{1:m})``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to

from pyro_kr._validation import check_dim
from pyro_kr.guides.chunks import map_in_chunks

__all__ = ["ConditionalPosterior", "KRQueries"]


class ConditionalPosterior:
    """``q(later sites | leading sites = fixed)`` of a KR guide; use :meth:`sample`.

    Created by :meth:`KRQueries.conditional`; holds the inverted leading reference coordinates.
    """

    def __init__(self, guide, x_lead: torch.Tensor, z_lead: torch.Tensor) -> None:
        self._guide, self._x_lead, self._z_lead = guide, x_lead, z_lead

    @torch.no_grad()
    def sample(self, num_samples: int) -> dict[str, torch.Tensor]:
        """Draw ``num_samples`` values of every site; the fixed sites repeat their values.

        Returns dict name -> ``(num_samples, *site_shape)``.
        """
        check_dim("num_samples", num_samples)
        guide, m = self._guide, self._x_lead.shape[-1]
        rest = guide.get_base_dist().sample((num_samples,))[..., m:]
        x = torch.cat([self._x_lead.expand(num_samples, m), rest], dim=-1)
        z = map_in_chunks(guide.get_transform(), x).clone()
        z[..., :m] = self._z_lead
        return guide.unpack(z)


class KRQueries:
    """Mixin for packed-latent KR guides with ``transform``, ``order`` and ``site_slices()``."""

    def _check_latent_shapes(self, *args, **kwargs) -> None:
        """Refuse model arguments under which a latent site has another shape than at setup.

        The map's dimension is fixed when the guide is built; a latent whose shape follows
        the data (a local latent in a plate over the data) cannot be answered for new data.
        """
        if self.prototype_trace is None or not (args or kwargs):
            return
        devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices), torch.no_grad(), poutine.block():
            trace = poutine.trace(self.model).get_trace(*args, **kwargs)
        for name in self.site_slices():
            old = tuple(self.prototype_trace.nodes[name]["value"].shape)
            site = trace.nodes.get(name)
            new = None if site is None else tuple(site["value"].shape)
            if new != old:
                got = "is absent" if new is None else f"has shape {new}"
                raise ValueError(
                    f"with these model arguments the latent site {name!r} {got}, but the "
                    f"guide was built for shape {old} (its map has a fixed dimension "
                    f"{self.latent_dim}); build and fit a new guide for these arguments "
                    "(a latent whose shape follows the data cannot be queried for new data)"
                )

    def _leading_width(self, names: Sequence[str], what: str) -> int:
        if self.prototype_trace is None:
            raise RuntimeError(
                f"{what} needs the guide's structure: run the guide (or SVI) once with the "
                "model's arguments first"
            )
        names = [names] if isinstance(names, str) else list(names)
        slices = self.site_slices()
        unknown = [n for n in names if n not in slices]
        if unknown:
            raise ValueError(f"{what}: unknown sites {unknown}; latent sites are {list(slices)}")
        leading = self.order[: len(names)]
        if set(names) != set(leading):
            suggested = names + [n for n in self.order if n not in names]
            raise ValueError(
                f"{what} needs sites that lead the KR order: requested {names}, but the order "
                f"is {self.order}. Build the guide with order={suggested} to make them lead."
            )
        return slices[leading[-1]].stop

    @torch.no_grad()
    def marginal(self, names: Sequence[str] | str, num_samples: int) -> dict[str, torch.Tensor]:
        """Exact draws from the marginal of the sites that lead the KR order ``self.order``.

        ``self.order`` is the order in use, known after setup: with ``AutoKR``'s default
        ``order="auto"`` it is chosen from the model (``self.order_choice`` says how), so the
        leading sites need not be the model's first ones; build the guide with ``order=[...]``
        (or ``order="model"``) to fix which sites lead.

        Only the leading reference coordinates matter: the trailing ones are set to zero and,
        by triangularity, cannot change the leading outputs. Where the leading sites are
        globals of ``structure="plates"``, only the globals' map is evaluated (draws of
        ``d_g`` coordinates, whatever the number of groups).

        The draws are mapped in chunks of at most
        :data:`~pyro_kr.guides.chunks.SAMPLE_CHUNK_COORDINATES` coordinates (bounded memory,
        the same draws as one call); so are :meth:`ConditionalPosterior.sample`'s.

        Returns dict name -> ``(num_samples, *site_shape)`` for the requested sites.
        """
        check_dim("num_samples", num_samples)
        m = self._leading_width(names, "marginal")
        names = [names] if isinstance(names, str) else list(names)
        transform = self.get_transform()
        leading = getattr(transform, "leading_map", None)
        leading = None if leading is None else leading(m)
        if leading is not None:
            # a map whose leading coordinates have a map of their own (the globals of the
            # sparse map): draw and map only those
            width, transform = leading
            ref = self.transform[-1].loc
            x = torch.randn(num_samples, width, dtype=ref.dtype, device=ref.device)
        else:
            x = self.get_base_dist().sample((num_samples,))
        x[..., m:] = 0.0
        return self._constrain(map_in_chunks(transform, x), names)

    @torch.no_grad()
    def conditional(self, fixed: dict[str, torch.Tensor | float]) -> ConditionalPosterior:
        """Condition the guide on values of its leading sites; ``.sample(n)`` draws the rest.

        The leading sites are the first ones of ``self.order``, the KR order in use (see
        :meth:`marginal`).

        Args:
            fixed: dict site name -> constrained value (site shape) for the leading sites.

        Example:
            ``guide.conditional(fixed={"tau": 2.0}).sample(1000)["theta"]``
        """
        names = list(fixed)
        m = self._leading_width(names, "conditional")
        ref = self.transform[-1].loc
        d = self.latent_dim
        z_lead = []
        for name in self.order[: len(names)]:
            site = self.prototype_trace.nodes[name]
            value = torch.as_tensor(fixed[name], dtype=ref.dtype, device=ref.device)
            if value.shape != site["value"].shape:
                raise ValueError(
                    f"conditional: value for {name!r} must have shape "
                    f"{tuple(site['value'].shape)}, got {tuple(value.shape)}"
                )
            if not bool(site["fn"].support.check(value).all()):
                raise ValueError(f"conditional: value for {name!r} is outside its support")
            z_lead.append(biject_to(site["fn"].support).inv(value).reshape(-1))
        z_lead = torch.cat(z_lead)
        padded = torch.cat([z_lead, torch.zeros(d - m, dtype=ref.dtype, device=ref.device)])
        x_lead = self.get_transform().inv(padded)[:m]
        return ConditionalPosterior(self, x_lead, z_lead)
