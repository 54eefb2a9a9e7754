"""Posterior queries of a fitted :class:`COTFlowMatching`: the :mod:`pyro_kr.posterior_protocol`.

``sample``, ``log_prob``, ``pack`` / ``unpack``, ``site_slices`` and ``sampler`` with the
meanings of :class:`pyro_kr.posterior_protocol.AmortizedPosterior`. In sample-based mode there
is one latent "site" ``"u"`` of shape ``(dim_u,)`` and one observed "site" ``"y"``.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from pyro.distributions.transforms import biject_to

from pyro_kr.flow_matching.posterior import FlowPosterior

__all__ = ["FlowQueries", "FlowSampler"]

SAMPLE_MODE_LATENT = "u"


class FlowQueries:
    """Mixin of :class:`COTFlowMatching`: the protocol's queries on top of ``posterior(y)``."""

    @torch.no_grad()
    def sample(self, y, num_samples: int, *, ode_steps: int = 50) -> dict[str, torch.Tensor]:
        """``num_samples`` draws per observation: ``name -> (num_samples, *batch, *shape)``."""
        return self.unpack(self.posterior(y, ode_steps=ode_steps).sample((num_samples,)))

    def log_prob(self, latent: torch.Tensor, y, *, ode_steps: int = 50) -> torch.Tensor:
        """``log q(latent | y)`` of packed latents ``(..., *batch, dim_u)`` (an ODE solve)."""
        return self.posterior(y, ode_steps=ode_steps).log_prob(latent)

    def site_slices(self) -> OrderedDict[str, slice]:
        """Each latent site's block of the packed vector (``{"u": ...}`` in sample mode)."""
        if self.simulator is None:
            return OrderedDict([(SAMPLE_MODE_LATENT, slice(0, self.dim_u))])
        out, pos = OrderedDict(), 0
        for site in self.simulator.sites:
            out[site.name] = slice(pos, pos + site.numel)
            pos += site.numel
        return out

    def unpack(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """Packed latents ``(..., dim_u)`` -> constrained site values ``name -> (..., *shape)``.

        Sample-based mode: ``{"u": latent}``.
        """
        if latent.shape[-1:] != (self.dim_u,):
            raise ValueError(
                f"unpack expected shape (..., {self.dim_u}), got {tuple(latent.shape)}"
            )
        if self.simulator is None:
            return {SAMPLE_MODE_LATENT: latent}
        return self.simulator.unpack(latent)

    def pack(self, values: dict[str, torch.Tensor], batch_ndim: int = 1) -> torch.Tensor:
        """Constrained values ``name -> (*batch, *shape)`` -> packed ``(*batch, dim_u)``."""
        if self.simulator is None:
            return values[SAMPLE_MODE_LATENT]
        parts = []
        for site in self.simulator.sites:
            value = biject_to(site.support).inv(values[site.name])
            parts.append(value.reshape(value.shape[:batch_ndim] + (site.numel,)))
        return torch.cat(parts, dim=-1)

    def sampler(
        self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> FlowSampler:
        """A frozen copy of the fitted field in ``dtype`` for serving draws."""
        return FlowSampler(self, dtype=dtype, device=device)


class FlowSampler:
    """Detached snapshot of a fitted :class:`COTFlowMatching` in a chosen dtype.

    Args:
        flow: a fitted ``COTFlowMatching``.
        dtype: floating dtype of the copy (default ``torch.float32``).
        device: device of the copy (default: the flow's).

    Example:
        >>> from pyro_kr.flow_matching import COTFlowMatching
        >>> cot = COTFlowMatching(dim_u=1, dim_y=1, width=8, depth=1)
        >>> _ = cot.fit(u=torch.randn(50, 1), y=torch.randn(50, 1), steps=2, progress=False)
        >>> cot.sampler().sample(torch.zeros(1), 5)["u"].shape
        torch.Size([5, 1])
    """

    def __init__(self, flow, dtype: torch.dtype = torch.float32, device=None) -> None:
        if not bool(flow.fitted):
            raise RuntimeError("COTFlowMatching.sampler() needs a fitted flow: call fit() first")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        device = flow.u_loc.device if device is None else torch.device(device)
        self._flow = flow
        self.velocity = copy.deepcopy(flow.velocity).to(dtype=dtype, device=device).eval()
        self.velocity.requires_grad_(False)
        self._stats = [
            getattr(flow, k).detach().to(dtype=dtype, device=device).clone()
            for k in ("y_loc", "y_scale", "u_loc", "u_scale")
        ]
        self.dtype, self.device = dtype, device

    @torch.no_grad()
    def posterior(self, y, *, ode_steps: int = 50) -> FlowPosterior:
        """``q(u | y)`` as ``COTFlowMatching.posterior`` (packed unconstrained latents)."""
        y = self._flow.query_y(y).to(dtype=self.dtype, device=self.device)
        return FlowPosterior(self.velocity, y, *self._stats, ode_steps=ode_steps)

    @torch.no_grad()
    def sample(self, y, num_samples: int, *, ode_steps: int = 50) -> dict[str, torch.Tensor]:
        """``num_samples`` draws per observation: ``name -> (num_samples, *batch, *shape)``."""
        post = self.posterior(y, ode_steps=ode_steps)
        return self._flow.unpack(post.sample((num_samples,)))
