"""A mass-covering anchor for reverse-mode amortized training (the sleep-phase term).

Reverse KL over the prior predictive, ``E_y KL(q(.|y) || p(.|y))``, does not penalize a ``q``
that is narrower than the error with which the amortized network places it: for a Gaussian
posterior of sd ``s`` and a conditioner whose mean misses by ``delta``, the optimal width of
``q`` stays ``s`` whatever ``delta`` is, so every error of the conditioner becomes
overconfidence. Forward KL on prior-predictive pairs ``(u*, y)``, ``E[-log q(u* | y)]``, is
minimized by the width ``sqrt(s^2 + delta^2)``: it stays calibrated where the network is
imprecise. Reverse mode simulates ``(u*, y)`` every step anyway (it needs the ``y``), so the
forward term costs no extra simulation and no model evaluation, only ``log q`` of the ``u*``
(the inverse map). The objective is

    -sum_i ELBO(y_i) [+ cost / lam] + weight * sum_i -log q(u*_i | y_i)

summed over the batch of datasets: the wake-phase reverse KL and the sleep-phase update of
the wake-sleep algorithm (Hinton et al. 1995; Bornschein and Bengio 2015) on the same batch.
With ``weight = w`` and the Gaussian picture above the optimal variance ``t^2`` solves
``t^4 / s^2 + (w - 1) t^2 = w (s^2 + delta^2)``: ``w = 0`` is reverse KL (``t = s``),
``w -> inf`` forward KL (``t^2 = s^2 + delta^2``), ``w = 1`` the symmetric (Jeffreys)
divergence (``t^2 = s sqrt(s^2 + delta^2)``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["ForwardAnchoredLoss"]


class ForwardAnchoredLoss:
    """``inner`` loss plus ``weight`` times the forward NLL of the step's simulated pairs.

    Args:
        inner: the reverse objective (a :class:`~pyro_kr.TransportELBO` or
            :class:`~pyro_kr.amortized.ImportanceWeightedELBO`); its ``differentiable_loss``
            is called once per step.
        guide: the :class:`~pyro_kr.AmortizedKR` being trained.
        pairs: called after ``inner`` has run, returns the step's simulated pairs: dict site
            name -> ``(B, *site_shape)`` constrained values of every latent and observed site.
        weight: ``w >= 0`` of the forward term (``0``: ``inner`` alone).

    Used as the ``loss`` of :func:`pyro_kr.fit` (a callable ``(model, guide, *args) ->
    tensor``); :attr:`last` holds ``loss``, ``elbo``, ``forward_nll`` (mean over the batch) and
    the schedule values of ``inner``. ``fit_amortized(..., forward_weight=w)`` builds it.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro_kr import AmortizedKR, fit_amortized
        >>> def model(y=None):
        ...     z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        ...     return pyro.sample("y", dist.Normal(z, 0.5).to_event(1), obs=y)
        >>> pyro.clear_param_store()
        >>> guide = AmortizedKR(model, observed="y", map="affine")
        >>> h = fit_amortized(model, guide, mode="reverse", forward_weight=1.0, steps=3,
        ...                   batch_size=8, progress=False)
        >>> h.model_evaluations  # the forward term evaluates no model density
        24
    """

    def __init__(self, inner, guide, pairs: Callable[[], dict], weight: float) -> None:
        if not weight >= 0:
            raise ValueError(f"forward_weight must be >= 0, got {weight}")
        self.inner, self.guide, self.pairs, self.weight = inner, guide, pairs, float(weight)
        self.num_particles = inner.num_particles
        self.schedule = getattr(inner, "schedule", None)
        self.max_plate_nesting = inner.max_plate_nesting
        self.last: dict[str, float] = {}

    def forward_nll(self) -> torch.Tensor:
        """``-sum_i log q(u*_i | y_i)`` over the pairs of the current step (differentiable)."""
        sims = self.pairs()
        g = self.guide
        ref = g.reference_like()
        with torch.no_grad():
            latent = g.pack({n: sims[n].to(ref) for n in g.order}).detach()
        data = {n: sims[n].to(ref) for n in g.observed}
        return -g.log_prob(latent, data).sum()

    def __call__(self, model, guide, *args, **kwargs) -> torch.Tensor:
        reverse = self.inner.differentiable_loss(model, guide, *args, **kwargs)
        record = dict(getattr(self.inner, "last", {}))
        if self.weight == 0:
            self.last = {**record, "loss": float(reverse.detach())}
            return reverse
        nll = self.forward_nll()
        batch = len(next(iter(self.pairs().values())))
        total = reverse + self.weight * nll
        self.last = {**record, "loss": float(total.detach()),
                     "forward_nll": float(nll.detach()) / batch}
        return total
