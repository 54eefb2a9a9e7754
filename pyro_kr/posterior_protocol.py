"""One interface for posteriors that answer queries for an observation ``y``.

:class:`AmortizedPosterior` is the protocol shared by :class:`~pyro_kr.AmortizedKR`,
:class:`~pyro_kr.COTFlowMatching` and (with the observation fixed, through
:class:`FixedObservation`) :class:`~pyro_kr.AutoKR`. Diagnostics such as
:func:`pyro_kr.diagnostics.sbc` and :func:`pyro_kr.diagnostics.coverage` use these names only.

Names and meanings (``d`` is the number of packed unconstrained latent coordinates):

* ``observed``: the names of the observed sites the posterior is conditioned on.
* ``posterior(y)``: ``q(u | y)`` as a ``torch.distributions.Distribution`` over the packed
  unconstrained latents; ``y`` is one observation or a batch ``(m, *y_shape)`` (a dict
  ``name -> tensor`` for several observed sites); batch shape ``(m,)`` or ``()``, event ``(d,)``.
* ``sample(y, n)``: ``n`` draws per observation as constrained site values,
  ``name -> (n, *batch, *site_shape)``.
* ``log_prob(latent, y)``: ``log q(latent | y)`` of packed latents ``(..., *batch, d)``.
* ``pack(values, batch_ndim=1)`` / ``unpack(latent)``: constrained site values ``<->`` packed
  unconstrained latents.
* ``site_slices()``: each latent site's block of the packed vector.
* ``sampler()``: a frozen object with ``posterior(y)`` and ``sample(y, n)`` for serving draws.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from torch.distributions import Distribution

__all__ = ["AmortizedPosterior", "FixedObservation"]

Data = torch.Tensor | dict[str, torch.Tensor]


@runtime_checkable
class AmortizedPosterior(Protocol):
    """A posterior ``q(u | y)`` that answers queries for an observation (see the module doc)."""

    observed: Sequence[str]

    def posterior(self, y: Data) -> Distribution: ...

    def sample(self, y: Data, num_samples: int) -> dict[str, torch.Tensor]: ...

    def log_prob(self, latent: torch.Tensor, y: Data) -> torch.Tensor: ...

    def pack(self, values: dict[str, torch.Tensor], batch_ndim: int = 1) -> torch.Tensor: ...

    def unpack(self, latent: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def site_slices(self) -> OrderedDict[str, slice]: ...

    def sampler(self) -> Any: ...


class FixedObservation:
    """A fitted non-amortized guide (e.g. :class:`~pyro_kr.AutoKR`) as an
    :class:`AmortizedPosterior` for the one observation it was fitted to.

    ``y`` may be omitted (``None``) or equal to the fitted data; any other observation raises
    a ``ValueError`` (fit an :class:`~pyro_kr.AmortizedKR` to answer for many observations).

    Args:
        guide: a fitted ``AutoContinuous`` guide with ``site_slices()`` (``AutoKR``).
        *args, **kwargs: the model arguments the guide was fitted with (they hold the data).

    Example:
        >>> import pyro, pyro.distributions as dist, torch, pyro_kr
        >>> pyro.clear_param_store()
        >>> def model(x):
        ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...     pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        >>> fixed = FixedObservation(pyro_kr.AutoKR(model, map="affine"), torch.tensor(0.5))
        >>> fixed.observed, fixed.sample(None, 10)["z"].shape
        (['x'], torch.Size([10]))
    """

    def __init__(self, guide: Callable, *args, **kwargs) -> None:
        if not all(hasattr(guide, a) for a in ("get_posterior", "site_slices", "median")):
            raise TypeError(
                "FixedObservation needs an AutoContinuous guide with site_slices() "
                f"(pyro_kr.AutoKR), got {type(guide).__name__}"
            )
        self.guide, self.args, self.kwargs = guide, args, kwargs
        guide.median(*args, **kwargs)  # sets the guide up without drawing random numbers
        with torch.no_grad(), poutine.block():
            nodes = poutine.trace(guide.model).get_trace(*args, **kwargs).nodes
        self.data = {
            name: site["value"]
            for name, site in nodes.items()
            if site["type"] == "sample" and site["is_observed"]
        }
        self.observed = list(self.data)

    def _check(self, y: Data | None) -> None:
        if y is None:
            return
        given = y if isinstance(y, dict) else dict(zip(self.observed, [y], strict=False))
        if len(self.observed) != 1 and not isinstance(y, dict):
            raise ValueError(f"the guide observes {self.observed}: pass a dict or None")
        for name, value in given.items():
            fitted = self.data.get(name)
            if fitted is None or not torch.equal(torch.as_tensor(value).to(fitted), fitted):
                raise ValueError(
                    f"{type(self.guide).__name__} answers only for the observation it was fitted "
                    f"to; got another value for {name!r}. Pass y=None, or fit "
                    "pyro_kr.AmortizedKR to answer for any observation"
                )

    def posterior(self, y: Data | None = None) -> Distribution:
        """``q(u)`` over the packed unconstrained latents (event shape ``(d,)``)."""
        self._check(y)
        return self.guide.get_posterior(*self.args, **self.kwargs)

    @torch.no_grad()
    def sample(self, y: Data | None, num_samples: int) -> dict[str, torch.Tensor]:
        """``num_samples`` draws: ``name -> (num_samples, *site_shape)``."""
        return self.unpack(self.posterior(y).sample((num_samples,)))

    def log_prob(self, latent: torch.Tensor, y: Data | None = None) -> torch.Tensor:
        """``log q(latent)`` of packed latents ``(..., d)``."""
        return self.posterior(y).log_prob(latent)

    def site_slices(self) -> OrderedDict[str, slice]:
        return self.guide.site_slices()

    def _support(self, name: str):
        return self.guide.prototype_trace.nodes[name]["fn"].support

    def unpack(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """Packed latents ``(*batch, d)`` -> constrained values ``name -> (*batch, *shape)``."""
        batch, out = latent.shape[:-1], {}
        for name, block in self.site_slices().items():
            support = self._support(name)
            value = self.guide.prototype_trace.nodes[name]["value"]
            shape = biject_to(support).inv(value).shape
            out[name] = biject_to(support)(latent[..., block].reshape(batch + shape))
        return out

    def pack(self, values: dict[str, torch.Tensor], batch_ndim: int = 1) -> torch.Tensor:
        """Constrained values ``name -> (*batch, *shape)`` -> packed latents ``(*batch, d)``."""
        parts = []
        for name in self.site_slices():
            value = biject_to(self._support(name)).inv(values[name])
            parts.append(value.reshape(value.shape[:batch_ndim] + (-1,)))
        return torch.cat(parts, dim=-1)

    def sampler(self) -> FixedObservation:
        """The guide's draws need no snapshot: returns ``self``."""
        return self
