"""Training pairs ``(u, y)`` from a Pyro model's prior predictive, latents found by tracing.

The latent sites are packed like Pyro's ``AutoContinuous`` does: each value is mapped to the
unconstrained space by ``biject_to(site.support).inv`` and flattened, and the pieces are
concatenated in trace order. The observed site is flattened into ``y``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.infer import Predictive
from pyro.poutine.util import site_is_subsample

__all__ = ["LatentSite", "ModelSimulator"]


@dataclass(frozen=True)
class LatentSite:
    """One latent sample site: its name, value shape, unconstrained shape and support."""

    name: str
    shape: torch.Size
    unconstrained_shape: torch.Size
    support: object

    @property
    def numel(self) -> int:
        """Number of unconstrained coordinates of the site."""
        return int(self.unconstrained_shape.numel())


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
        sample_sites = {
            name: site
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)
        }
        if observed not in sample_sites:
            raise ValueError(
                f"observed site {observed!r} is not a sample site of the model; "
                f"sample sites are {sorted(sample_sites)}"
            )
        self.y_shape = sample_sites[observed]["value"].shape
        self.dim_y = int(self.y_shape.numel())
        self.sites: list[LatentSite] = []
        for name, site in sample_sites.items():
            if name == observed:
                continue
            support = site["fn"].support
            value = site["value"]
            unconstrained = biject_to(support).inv(value)
            self.sites.append(LatentSite(name, value.shape, unconstrained.shape, support))
        if not self.sites:
            raise ValueError("the model has no latent sample sites besides the observed one")
        self.dim_u = sum(site.numel for site in self.sites)

    def simulate(self, num: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``num`` prior-predictive pairs, vectorised over an outer plate when possible.

        Returns:
            ``(u, y)``: packed unconstrained latents ``(num, dim_u)`` and flattened data
            ``(num, dim_y)``.
        """
        names = [site.name for site in self.sites] + [self.observed]
        model = poutine.uncondition(self.model)
        try:
            draws = Predictive(model, num_samples=num, parallel=True, return_sites=names)(
                *self.model_args, **self.model_kwargs
            )
        except Exception as error:  # noqa: BLE001 - any vectorisation failure falls back
            warnings.warn(
                f"vectorised simulation failed ({type(error).__name__}: {error}); "
                "simulating one draw at a time",
                RuntimeWarning,
            )
            draws = Predictive(model, num_samples=num, parallel=False, return_sites=names)(
                *self.model_args, **self.model_kwargs
            )
        pieces = []
        for site in self.sites:
            value = draws[site.name].reshape((num,) + tuple(site.shape))
            unconstrained = biject_to(site.support).inv(value)
            pieces.append(unconstrained.reshape(num, site.numel))
        y = draws[self.observed].reshape(num, self.dim_y)
        return torch.cat(pieces, dim=-1).detach(), y.detach()

    def unpack(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        """Map packed unconstrained latents ``(..., dim_u)`` to constrained site values.

        Returns:
            ``{name: value}`` with values of shape ``(..., *site_shape)``.
        """
        if u.shape[-1] != self.dim_u:
            raise ValueError(f"unpack expected shape (..., {self.dim_u}), got {tuple(u.shape)}")
        out, start = {}, 0
        batch = u.shape[:-1]
        for site in self.sites:
            piece = u[..., start : start + site.numel].reshape(batch + site.unconstrained_shape)
            out[site.name] = biject_to(site.support)(piece)
            start += site.numel
        return out

    def flatten_y(self, y: torch.Tensor) -> torch.Tensor:
        """Flatten observations of shape ``(..., *y_shape)`` to ``(..., dim_y)``."""
        n = len(self.y_shape)
        if tuple(y.shape[y.dim() - n :]) != tuple(self.y_shape):
            raise ValueError(
                f"expected observations of shape (..., {tuple(self.y_shape)}) for site "
                f"{self.observed!r}, got {tuple(y.shape)}"
            )
        return y.reshape(y.shape[: y.dim() - n] + (self.dim_y,))
