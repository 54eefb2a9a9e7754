"""``TransportELBO``: the soft-constrained KR objective as a Pyro ELBO.

Baptista et al. 2025, eq. 4 and 14.
"""

from __future__ import annotations

import math
import warnings

import torch
from pyro.infer import Trace_ELBO
from pyro.infer.util import torch_item
from pyro.util import warn_if_nan

from pyro_kr._batching import BATCH_SAFE_HINT, batch_problem, prototype, quiet_plate_guess
from pyro_kr._validation import check_dim, check_no_enumeration, check_observed
from pyro_kr.objective.cost import transport_cost
from pyro_kr.objective.path_gradient import use_path_gradient
from pyro_kr.objective.schedules import Annealing, ConstantSchedule
from pyro_kr.objective.tempering import tempered
from pyro_kr.traces import guess_plate_nesting

__all__ = ["TransportELBO"]


class TransportELBO(Trace_ELBO):
    """``-ELBO + E[c_eps(x, T(x))] / lam``: Trace_ELBO plus the weighted transport cost.

    Per reference draw ``x ~ N(0, I)`` the paper's loss is
    ``lam * [log q(T(x)) - log p(data, T(x))] + c_eps(x, T(x))``. We minimise the same
    objective divided by ``lam``, i.e. ``-ELBO + c_eps / lam``: the value stays on the scale of
    the ELBO for every ``lam`` (readable progress, stable Adam steps for ``lam`` up to 1e4 and
    beyond), and ``lam = inf`` is exactly :class:`~pyro.infer.Trace_ELBO` on the same draws.
    The cost is computed in the packed unconstrained space where the map acts, with weights
    ``eps^(i-1)`` in the guide's KR order.

    The schedule advances one step per call of :meth:`loss_and_grads` (what ``SVI.step``
    calls) and of :meth:`differentiable_loss` (for plain torch loops); :meth:`loss` only
    evaluates. After each call, :attr:`last` holds ``loss``, ``elbo``, ``cost``, ``eps``,
    ``lam`` and ``beta``.

    With a ``beta`` ramp in the schedule (``Annealing.over(steps)``'s default,
    ``beta=(1e-2, 1.0)``; ``Annealing(...)`` has none unless given one) the model's
    observed sites are tempered (:mod:`pyro_kr.objective.tempering`): the objective targets
    ``p(z) p(data | z)^beta``, and ``elbo`` is the tempered ELBO until ``beta`` reaches 1.

    Any model that works with :class:`~pyro.infer.Trace_ELBO` works unchanged. Particles are
    vectorized (one pass inside an outer ``pyro.plate``) when the model is batch-safe, which
    is checked once, on the first call, by comparing the vectorized log-probabilities of two
    particles with the model run on each alone. A model that is not (e.g. ``X @ w`` with
    ``w ~ Normal(...).to_event(1)``, as Pyro's tutorials write it) gets one ``UserWarning``
    naming the site and the fix, and its particles run one after another, as in
    ``Trace_ELBO``. The first call also refuses, with a ``ValueError``, observed data holding
    NaN/inf and discrete latent sites the guide does not sample (enumerated or not).

    Args:
        schedule: an :class:`~pyro_kr.Annealing`; ``None`` means ``lam = inf`` (plain ELBO).
        num_particles: draws per step (``>= 1``).
        vectorize_particles: draw the particles in one vectorized pass when the model is
            batch-safe (default); ``False`` always runs them one after another.
        gradient: ``"reparam"`` (default) is Pyro's reparameterized gradient, as in
            ``Trace_ELBO``. ``"path"`` drops the zero-mean score term of the guide's
            log-density from it ("sticking the landing", Roeder, Wu and Duvenaud 2017;
            :mod:`pyro_kr.objective.path_gradient`): still unbiased, and its variance vanishes
            as the guide approaches the (tempered) posterior, so SVI gets closer to the
            family's optimum at the same step budget. Each step costs one more forward and
            backward pass of the map (for a dense map of ``d`` coordinates, ``d + 1``
            backward passes); needs an ``AutoKR`` map, dense or ``structure="plates"`` (with
            plate subsampling too). The loss values are the same as with ``"reparam"``.
        **elbo_kwargs: passed to :class:`~pyro.infer.Trace_ELBO` (e.g. ``max_plate_nesting``).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> import pyro_kr
        >>> def model():
        ...     pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> guide = pyro_kr.AutoKR(model, map="affine")
        >>> loss = TransportELBO(pyro_kr.Annealing(steps=10), num_particles=4)
        >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), loss)
        >>> isinstance(svi.step(), float)
        True
    """

    def __init__(
        self,
        schedule: Annealing | None = None,
        *,
        num_particles: int = 1,
        vectorize_particles: bool = True,
        gradient: str = "reparam",
        **elbo_kwargs,
    ) -> None:
        if gradient not in ("reparam", "path"):
            raise ValueError(
                f"gradient must be 'reparam' (Pyro's reparameterized gradient) or 'path' (the "
                f"path derivative, sticking the landing), got {gradient!r}"
            )
        if schedule is not None and not isinstance(schedule, Annealing):
            raise TypeError(
                f"schedule must be a pyro_kr.Annealing or None, got {type(schedule).__name__}"
            )
        check_dim("num_particles", num_particles)
        super().__init__(
            num_particles=num_particles,
            vectorize_particles=vectorize_particles and num_particles > 1,
            **elbo_kwargs,
        )
        tempering = schedule is not None and schedule.beta_schedule != ConstantSchedule.of(1.0)
        if tempering and type(self)._objective is not TransportELBO._objective:
            raise ValueError(
                f"{type(self).__name__} computes its own objective and does not apply the "
                "schedule's likelihood tempering (beta); pass an Annealing without a beta "
                "ramp (Annealing.over(steps, beta=1.0): Annealing.over ramps beta by "
                "default), or use TransportELBO"
            )
        if gradient == "path" and type(self)._objective is not TransportELBO._objective:
            raise ValueError(
                f"{type(self).__name__} computes its own objective and does not support "
                "gradient='path'; leave gradient='reparam' (the default)"
            )
        self.schedule = schedule
        self.gradient = gradient
        self.last: dict[str, float] = {}
        self._checked = False

    def _first_call_checks(self, model, guide, args, kwargs) -> None:
        """Refuse bad data and enumerated sites; decide once whether to vectorize."""
        guide_tr, model_tr = prototype(model, guide, args, kwargs)
        check_observed("TransportELBO", model_tr)
        check_no_enumeration("TransportELBO", model_tr, guide_tr)
        if self.vectorize_particles:
            if self.max_plate_nesting == math.inf:
                with quiet_plate_guess():
                    guess_plate_nesting(self, model, guide, args, kwargs)
            reason = batch_problem(
                model, guide, args, kwargs,
                num_draws=self.num_particles, dim=-self.max_plate_nesting,
            )
            if reason is not None:
                warnings.warn(
                    f"TransportELBO: the model is not batch-safe, so its {self.num_particles} "
                    f"particles run one after another (slower): {reason}. For vectorized "
                    f"speed, {BATCH_SAFE_HINT}; or pass vectorize_particles=False to silence "
                    "this warning.",
                    UserWarning,
                    stacklevel=6,
                )
                self.vectorize_particles = False
                self.max_plate_nesting -= 1
        self._checked = True

    def _get_traces(self, model, guide, args, kwargs):
        if not self._checked:
            self._first_call_checks(model, guide, args, kwargs)
        with quiet_plate_guess():
            yield from super()._get_traces(model, guide, args, kwargs)

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        if self.gradient == "path" and torch.is_grad_enabled():
            use_path_gradient(guide_trace)
        return super()._differentiable_loss_particle(model_trace, guide_trace)

    def current(self) -> tuple[float, float]:
        """Current ``(eps, lam)``; ``(1.0, inf)`` without a schedule."""
        if self.schedule is None:
            return 1.0, math.inf
        return self.schedule.eps, self.schedule.lam

    def _objective(self, model, guide, args, kwargs) -> tuple[float, torch.Tensor]:
        eps, lam = self.current()
        beta = 1.0 if self.schedule is None else self.schedule.beta
        model = tempered(model, beta)
        loss = 0.0
        surrogate = 0.0
        cost = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss_p, surrogate_p = self._differentiable_loss_particle(model_trace, guide_trace)
            loss += loss_p / self.num_particles
            surrogate = surrogate + surrogate_p / self.num_particles
            if math.isfinite(lam):
                cost = cost + transport_cost(guide_trace, eps) / self.num_particles
        value = loss + torch_item(cost) / lam if math.isfinite(lam) else loss
        objective = surrogate + cost / lam if math.isfinite(lam) else surrogate
        warn_if_nan(value, "loss")
        self.last = {
            "loss": value, "elbo": -loss, "cost": torch_item(cost), "eps": eps, "lam": lam,
            "beta": beta,
        }
        return value, objective

    def _advance(self) -> None:
        if self.schedule is not None:
            self.schedule.step()

    def loss(self, model, guide, *args, **kwargs) -> float:
        """Evaluate ``-ELBO + cost / lam`` without gradients and without advancing the schedule."""
        with torch.no_grad():
            value, _ = self._objective(model, guide, args, kwargs)
        return value

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """A differentiable tensor whose value is the loss; advances the schedule."""
        value, objective = self._objective(model, guide, args, kwargs)
        self._advance()
        if not torch.is_tensor(objective):
            return torch.tensor(value)
        return objective + (value - torch_item(objective))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Backpropagate the loss (``SVI.step`` calls this); advances the schedule."""
        value, objective = self._objective(model, guide, args, kwargs)
        if torch.is_tensor(objective) and objective.requires_grad:
            objective.backward(retain_graph=self.retain_graph)
        self._advance()
        return value
