"""Training pairs ``(u, y)`` from a Pyro model's prior predictive, latents found by tracing.

The latent sites are packed like Pyro's ``AutoContinuous`` does: each value is mapped to the
unconstrained space by ``biject_to(site.support).inv`` and flattened, and the pieces are
concatenated in trace order. The observed site is flattened into ``y``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro import poutine

from pyro_kr.traces import (
    LatentSite,
    latent_sites,
    pack,
    plate_depth,
    sample_sites,
    simulate_pairs,
    unpack,
)

__all__ = ["LatentSite", "ModelSimulator"]


class ModelSimulator:
    """Simulate ``(u, y)`` pairs from ``model``'s prior predictive and pack the latents.

    Args:
        model: a Pyro model; the site named ``observed`` is the data ``y`` (it is sampled even if
            the model observes it: the model runs under ``poutine.uncondition``).
        observed: name of the observed site.
        model_args, model_kwargs: arguments passed to the model on every call.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     a = pyro.sample("a", dist.Normal(0.0, 1.0))
        ...     pyro.sample("y", dist.Normal(a, 1.0))
        >>> sim = ModelSimulator(model, observed="y")
        >>> u, y = sim.simulate(5)
        >>> u.shape, y.shape
        (torch.Size([5, 1]), torch.Size([5, 1]))
    """

    def __init__(
        self,
        model: Callable,
        *,
        observed: str,
        model_args: tuple = (),
        model_kwargs: dict | None = None,
    ) -> None:
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        if not isinstance(observed, str):
            raise TypeError(f"observed must be a site name (str), got {type(observed).__name__}")
        self.model = model
        self.observed = observed
        self.model_args = tuple(model_args)
        self.model_kwargs = dict(model_kwargs or {})
        trace = poutine.trace(poutine.uncondition(model)).get_trace(
            *self.model_args, **self.model_kwargs
        )
        names = [site["name"] for site in sample_sites(trace, subsample=False)]
        if observed not in names:
            raise ValueError(
                f"observed site {observed!r} is not a sample site of the model; "
                f"sample sites are {sorted(names)}"
            )
        self.y_shape = trace.nodes[observed]["value"].shape
        self.dim_y = int(self.y_shape.numel())
        self.depth = plate_depth(trace)
        self.sites: list[LatentSite] = latent_sites(trace, exclude=(observed,))
        if not self.sites:
            raise ValueError("the model has no latent sample sites besides the observed one")
        self.dim_u = sum(site.numel for site in self.sites)

    def simulate(self, num: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``num`` prior-predictive pairs, vectorised over an outer plate when possible.

        Returns:
            ``(u, y)``: packed unconstrained latents ``(num, dim_u)`` and flattened data
            ``(num, dim_y)``.
        """
        shapes = {site.name: site.shape for site in self.sites}
        shapes[self.observed] = self.y_shape
        draws = simulate_pairs(
            self.model, self.model_args, self.model_kwargs, shapes, num, depth=self.depth
        )
        u = pack(draws, self.sites, num)
        return u.detach(), draws[self.observed].reshape(num, self.dim_y).detach()

    def unpack(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """Map packed unconstrained latents ``(..., dim_u)`` to constrained site values.

        Returns:
            ``{name: value}`` with values of shape ``(..., *site_shape)``.
        """
        return unpack(u, self.sites)

    def flatten_y(self, y: torch.Tensor) -> torch.Tensor:
        """Flatten observations of shape ``(..., *y_shape)`` to ``(..., dim_y)``."""
        n = len(self.y_shape)
        if tuple(y.shape[y.dim() - n :]) != tuple(self.y_shape):
            raise ValueError(
                f"expected observations of shape (..., {tuple(self.y_shape)}) for site "
                f"{self.observed!r}, got {tuple(y.shape)}"
            )
        return y.reshape(y.shape[: y.dim() - n] + (self.dim_y,))
