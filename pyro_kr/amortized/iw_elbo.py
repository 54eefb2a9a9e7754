"""Per-dataset importance-weighted bound for reverse-mode amortized training.

The amortized ELBO ``sum_i E_q[log p(u, y_i) - log q(u | y_i)]`` is indifferent to how well the
amortized network places ``q(. | y_i)``: for a Gaussian family the optimal width does not grow
with the error of the predicted location, so every error of the conditioner becomes
overconfidence. The importance-weighted bound of Burda, Grosse and Salakhutdinov (2016),

    L_K(y_i) = E[ log (1/K) sum_k p(u_k, y_i) / q(u_k | y_i) ],   u_k ~ q(. | y_i),

is computed **per dataset** (the logsumexp runs over the ``K`` particles of one ``y_i``, never
across datasets) and summed over the batch. As ``K`` grows it approaches ``log p(y_i)`` and
its optimum moves from the mode-seeking ``KL(q || p)`` towards the mass-covering
``chi^2(p || q)`` (Domke and Sheldon, 2018), which penalizes a ``q`` narrower than its error.
``K = 1`` is the amortized ELBO. The transport cost ``c_eps / lam`` is added as in
:class:`~pyro_kr.TransportELBO` (mean over particles).
"""

from __future__ import annotations

import math

import torch
from pyro.infer.util import torch_item
from pyro.util import warn_if_nan

from pyro_kr.objective import TransportELBO
from pyro_kr.objective.cost import reference_pairs, weighted_cost

__all__ = ["ImportanceWeightedELBO"]


class ImportanceWeightedELBO(TransportELBO):
    """``-sum_i L_K(y_i) + cost / lam`` over a batch of datasets in a plate at ``batch_dim``.

    Args:
        schedule: an :class:`~pyro_kr.Annealing` or ``None`` (no transport cost).
        num_particles: ``K`` draws per dataset.
        batch_dim: the (negative) dim of the datasets' plate.
        **kwargs: passed to :class:`~pyro_kr.TransportELBO` (``max_plate_nesting``).

    After each call :attr:`last` holds ``loss``, ``elbo`` (the bound, summed over the batch),
    ``cost``, ``eps`` and ``lam``. ``fit_amortized(..., objective="iwae")`` builds it.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro_kr import AmortizedKR, fit_amortized
        >>> def model(y=None):
        ...     z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        ...     return pyro.sample("y", dist.Normal(z, 0.5).to_event(1), obs=y)
        >>> pyro.clear_param_store()
        >>> guide = AmortizedKR(model, observed="y", map="affine")
        >>> h = fit_amortized(model, guide, mode="reverse", objective="iwae", num_particles=4,
        ...                   batch_size=8, steps=3, progress=False)
        >>> h.model_evaluations  # 3 steps x 8 datasets x 4 particles
        96
    """

    def __init__(self, schedule=None, *, num_particles: int, batch_dim: int, **kwargs) -> None:
        super().__init__(schedule, num_particles=num_particles, **kwargs)
        self.batch_dim = batch_dim

    def _per_dataset(self, trace) -> torch.Tensor:
        """Sum of the sample sites' log densities per (particle, dataset): ``(K or 1, B)``."""
        trace.compute_log_prob()
        nesting = int(self.max_plate_nesting)
        keep = nesting + self.batch_dim  # the datasets' dim once log_prob has `nesting` dims
        total = None
        for site in trace.nodes.values():
            if site["type"] != "sample":
                continue
            lp = site["log_prob"]
            lp = lp.reshape((1,) * (nesting - lp.dim()) + lp.shape)
            if keep + 1 < nesting:  # sum the model's own plates, right of the datasets' plate
                lp = lp.sum(tuple(range(keep + 1, nesting)))
            lp = lp.unsqueeze(0) if keep == 0 else lp.reshape(lp.shape[-2:])
            total = lp if total is None else total + lp
        return total

    def _objective(self, model, guide, args, kwargs) -> tuple[float, torch.Tensor]:
        eps, lam = self.current()
        log_w, cost = [], 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            lw = self._per_dataset(model_trace) - self._per_dataset(guide_trace)
            log_w.append(lw)
            if math.isfinite(lam):
                for _, x, z in reference_pairs(guide_trace):
                    cost = cost + weighted_cost(x, z, eps).sum() / self.num_particles
        shape = torch.broadcast_shapes(*(w.shape for w in log_w))
        stacked = torch.cat([w.expand(shape) for w in log_w], 0)  # (K, B)
        k = stacked.shape[0]
        bound = (torch.logsumexp(stacked, 0) - math.log(k)).sum()
        objective = -bound + cost / lam if math.isfinite(lam) else -bound
        value = torch_item(objective)
        warn_if_nan(value, "loss")
        self.last = {"loss": value, "elbo": torch_item(bound), "cost": torch_item(cost),
                     "eps": eps, "lam": lam}
        return value, objective


class ReweightedWakeLoss(ImportanceWeightedELBO):
    """Wake-phase ``q`` update of reweighted wake-sleep, per dataset (mass-covering, uses ``p``).

    For each dataset ``y_i`` of the batch, ``K`` draws ``u_k ~ q(. | y_i)`` get the
    self-normalized weights ``w_k ∝ p(u_k, y_i) / q(u_k | y_i)`` (held fixed), and the loss is

        -sum_i sum_k w_k log q(u_k | y_i)   [+ cost / lam],

    a self-normalized importance-sampling estimate of the forward KL ``KL(p(.|y_i) || q)`` of
    each dataset's own posterior (Bornschein and Bengio 2015; Le et al. 2019). Unlike the
    amortized ELBO it widens ``q`` where the network misplaces it; unlike forward KL on
    simulations it sees the whole posterior of each ``y_i`` through the likelihood, not one
    draw ``u*``. The estimate is biased when the weights degenerate (``q`` much narrower than
    the posterior), so start it from a wide ``q`` (``mode="hybrid"``) or combine it with the
    forward anchor (``forward_weight``). The gradient of ``log q`` at the fixed draws needs the
    inverse map (as forward mode). ``fit_amortized(..., objective="rws")`` builds it.

    Args:
        guide: the :class:`~pyro_kr.AmortizedKR` being trained.
        pairs: called after the traces are drawn, returns the step's observed data: dict site
            name -> ``(B, *site_shape)`` (at least the guide's observed sites).
        schedule, num_particles, batch_dim, **kwargs: as :class:`ImportanceWeightedELBO`
            (the particles must be vectorized, the default).

    After each call :attr:`last` holds ``loss``, ``elbo`` (the importance-weighted bound,
    summed over the batch), ``ess`` (mean effective sample size share of the weights),
    ``cost``, ``eps`` and ``lam``.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro_kr import AmortizedKR, fit_amortized
        >>> def model(y=None):
        ...     z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        ...     return pyro.sample("y", dist.Normal(z, 0.5).to_event(1), obs=y)
        >>> pyro.clear_param_store()
        >>> guide = AmortizedKR(model, observed="y", map="affine")
        >>> h = fit_amortized(model, guide, mode="reverse", objective="rws", num_particles=4,
        ...                   batch_size=8, steps=3, progress=False)
        >>> h.model_evaluations
        96
    """

    def __init__(self, guide, pairs, schedule=None, *, num_particles: int, batch_dim: int,
                 **kwargs) -> None:
        super().__init__(schedule, num_particles=num_particles, batch_dim=batch_dim, **kwargs)
        if not self.vectorize_particles:
            raise ValueError("ReweightedWakeLoss needs vectorized particles (num_particles "
                             ">= 2 and vectorize_particles=True)")
        self.guide, self.pairs = guide, pairs

    def _objective(self, model, guide, args, kwargs) -> tuple[float, torch.Tensor]:
        eps, lam = self.current()
        cost = 0.0
        (model_trace, guide_trace), = list(self._get_traces(model, guide, args, kwargs))
        log_w = (self._per_dataset(model_trace) - self._per_dataset(guide_trace)).detach()
        k, b = log_w.shape
        latent = next(s["value"] for s in guide_trace.nodes.values()
                      if s["type"] == "sample" and s["infer"].get("is_auxiliary"))
        latent = latent.detach().reshape(k * b, -1)
        sims = self.pairs()
        g = self.guide
        data = {n: sims[n].expand((k,) + sims[n].shape).reshape((k * b,) + sims[n].shape[1:])
                for n in g.observed}
        log_q = g.log_prob(latent, data).reshape(k, b)
        weights = torch.softmax(log_w, 0)
        if math.isfinite(lam):
            for _, x, z in reference_pairs(guide_trace):
                cost = cost + weighted_cost(x, z, eps).sum() / self.num_particles
        objective = -(weights * log_q).sum()
        objective = objective + cost / lam if math.isfinite(lam) else objective
        bound = float((torch.logsumexp(log_w, 0) - math.log(k)).sum())
        ess = float((1.0 / (weights**2).sum(0)).mean()) / k
        value = torch_item(objective)
        warn_if_nan(value, "loss")
        self.last = {"loss": value, "elbo": bound, "ess": ess, "cost": torch_item(cost),
                     "eps": eps, "lam": lam}
        return value, objective
