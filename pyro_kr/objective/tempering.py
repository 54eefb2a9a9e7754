"""Likelihood tempering: scale the log density of every observed site by ``beta``.

``tempered(model, beta)`` is ``model`` with each observed site's log probability multiplied
by ``beta`` (latent sites untouched): the joint density becomes ``p(z) p(data | z)^beta``,
the prior at ``beta -> 0`` and the model at ``beta = 1``. :class:`~pyro_kr.TransportELBO`
applies it with the ``beta`` ramp of its :class:`~pyro_kr.Annealing`.
"""

from __future__ import annotations

from collections.abc import Callable

from pyro.poutine.messenger import Messenger

__all__ = ["TemperMessenger", "tempered"]


class TemperMessenger(Messenger):
    """Multiply the ``scale`` of every observed sample site by ``beta`` (``0 < beta <= 1``).

    Observed sites include ``pyro.factor`` statements (they are observed sites in Pyro), so
    a factor that encodes a prior term is tempered too: write prior terms as latent sample
    statements to keep them untempered.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model():
        ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...     pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(0.5))
        >>> tr = pyro.poutine.trace(TemperMessenger(0.25)(model)).get_trace()
        >>> tr.nodes["x"]["scale"], tr.nodes["z"]["scale"]
        (0.25, 1.0)
    """

    def __init__(self, beta: float) -> None:
        if not 0 < beta <= 1:
            raise ValueError(f"beta must lie in (0, 1], got {beta}")
        super().__init__()
        self.beta = float(beta)

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.beta


def tempered(model: Callable, beta: float) -> Callable:
    """``model`` with its observed sites' log densities scaled by ``beta``; ``model`` at 1."""
    if beta == 1:
        return model
    return TemperMessenger(beta)(model)
