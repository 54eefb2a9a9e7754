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
