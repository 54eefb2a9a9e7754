"""A forward-KL warm-up for reverse-mode amortized training, on fresh simulations.

Reverse mode draws a fresh batch of prior-predictive pairs ``(u*, y)`` every step (it needs
the ``y``; the ``u*`` come free). Before the reverse objective takes over, the same stream of
pairs can train the network by maximum likelihood, the forward NLL

    -1/B sum_i log q(u*_i | y_i),    (u*_i, y_i) ~ p(u) p(y | u), fresh every step,

which is forward KL over the prior predictive, ``E_y KL(p(.|y) || q(.|y))`` up to a constant.
It evaluates no model log density (only ``log q`` through the inverse map), needs no bank
and never sees a pair twice, so it cannot overfit. It is mass-covering and, at a large batch
and learning rate, moves the amortized network much faster than the reverse objective
(docs/amortized.md, "Reverse mode with a warm-up"); the reverse objective then refines with
the likelihood. ``fit_amortized(mode="reverse", warmup_steps=...)`` runs it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pyro_kr.amortized.guide import AmortizedKR
from pyro_kr.traces import simulate_pairs

__all__ = ["SimulatedForwardLoss"]


class SimulatedForwardLoss:
    """``-mean log q(u* | y)`` over ``batch_size`` fresh prior-predictive pairs per call.

    Args:
        model: the Pyro model (its observed sites are unconditioned to simulate ``y``).
        guide: the :class:`~pyro_kr.AmortizedKR` being trained (set up).
        args, kwargs: the model's arguments other than the data.
        batch_size: pairs ``(u*, y)`` simulated per call, from the global RNG (so a seeded run
            is reproducible).

    Used as the ``loss`` of :func:`pyro_kr.fit` (a callable ``(model, guide, *args) ->
    tensor``, the ``model``/``guide`` passed to it are ignored); :attr:`last` holds ``loss``
    and ``forward_nll`` (both the batch mean) and ``elbo`` (NaN: no ELBO is computed).
    :attr:`simulations` counts the pairs drawn so far.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro_kr import AmortizedKR
        >>> def model(y=None):
        ...     z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        ...     return pyro.sample("y", dist.Normal(z, 0.5).to_event(1), obs=y)
        >>> pyro.clear_param_store()
        >>> guide = AmortizedKR(model, observed="y", map="affine")
        >>> guide.setup()
        >>> loss = SimulatedForwardLoss(model, guide, (), {}, batch_size=16)
        >>> value = loss(None, None)
        >>> value.shape, loss.simulations
        (torch.Size([]), 16)
    """

    def __init__(self, model: Callable, guide: AmortizedKR, args: tuple, kwargs: dict,
                 batch_size: int) -> None:
        if not isinstance(guide, AmortizedKR):
            raise TypeError(f"guide must be a pyro_kr.AmortizedKR, got {type(guide).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.model, self.guide, self.args, self.kwargs = model, guide, tuple(args), dict(kwargs)
        self.batch_size = batch_size
        self.simulations = 0
        self.last: dict[str, float] = {}

    def __call__(self, model, guide, *args, **kwargs) -> torch.Tensor:
        g = self.guide
        shapes = {n: g.prototype_trace.nodes[n]["value"].shape for n in g.order}
        sims = simulate_pairs(self.model, self.args, self.kwargs, {**shapes, **g.layout.shapes},
                              self.batch_size, depth=g.plate_depth)
        self.simulations += self.batch_size
        ref = g.reference_like()
        with torch.no_grad():
            latent = g.pack({n: sims[n].to(ref) for n in g.order}).detach()
        data = {n: sims[n].to(ref) for n in g.observed}
        loss = -g.log_prob(latent, data).mean()
        value = float(loss.detach())
        self.last = {"loss": value, "forward_nll": value, "elbo": math.nan}
        return loss
