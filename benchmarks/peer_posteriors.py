"""Peers' posteriors as :class:`pyro_kr.AmortizedPosterior`, for SBC and coverage.

:func:`pyro_kr.diagnostics.sbc` and :func:`pyro_kr.diagnostics.coverage` accept any posterior
that implements the :class:`~pyro_kr.AmortizedPosterior` protocol. ``amortized_peers.py``
trains two estimators outside pyro_kr's Pyro-model interface, both on ``theta = log u`` given
the flattened observation:

* :class:`SbiPosterior` wraps sbi's trained ``DirectPosterior`` (``x = log y``);
* :class:`CotPosterior` wraps a sample-mode :class:`pyro_kr.COTFlowMatching` (latent ``"u"``
  = ``log u``, fitted with ``transform_y=torch.log``),

so that their rows are calibrated by the same code, on the same simulated datasets and with the
same draws per dataset as the Pyro-model guides.

For a model whose latent sites are positive scalars (``LogNormal`` priors, Lotka-Volterra's
``alpha, beta, gamma, delta``) the packed unconstrained latent vector of pyro_kr *is*
``theta = log u`` in site order, so draws and densities pass through unchanged
(:class:`LogUPosterior` holds that packing and the checks of ``y``).

Example (needs the ``peers`` extra)::

    posterior = inference.build_posterior(estimator)      # sbi NPE, theta = log u, x = log y
    wrapped = SbiPosterior(posterior, ["alpha", "beta", "gamma", "delta"], "y", y.shape)
    sbc(wrapped, problem.model, num_datasets=200, num_draws=100)
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch.distributions import Distribution, constraints


class _Batched(Distribution):
    """``q(theta | x_j)`` for a batch of ``m`` observations: batch ``(m,)``, event ``(d,)``."""

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, posterior, x: torch.Tensor, dim: int, dtype: torch.dtype) -> None:
        self.posterior, self.x, self.dtype = posterior, x, dtype
        super().__init__(torch.Size([x.shape[0]]), torch.Size([dim]), validate_args=False)

    def sample(self, sample_shape=()) -> torch.Tensor:
        """Draws ``(*sample_shape, m, d)`` (sbi's batched sampler, no progress bar)."""
        shape = torch.Size(sample_shape)
        n = max(1, shape.numel())
        draws = self.posterior.sample_batched((n,), x=self.x, show_progress_bars=False)
        return draws.to(self.dtype).reshape(shape + self.batch_shape + self.event_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``log q(theta | x_j)`` of ``value`` ``(..., m, d)``: shape ``(..., m)``."""
        m, d = self.batch_shape[0], self.event_shape[0]
        if value.shape[-2:] != (m, d):
            raise ValueError(f"value must end in (m, d) = ({m}, {d}), got {tuple(value.shape)}")
        batch = value.shape[:-2]
        flat = value.reshape(-1, m, d).to(self.x.dtype)
        out = self.posterior.log_prob_batched(flat, x=self.x)
        return out.to(self.dtype).reshape(batch + (m,))


class LogUPosterior:
    """Base of the adapters: ``q(log u | y)`` over positive scalar sites as an
    ``AmortizedPosterior``; subclasses implement :meth:`posterior` on :meth:`flat_y`.

    Args:
        names: the model's latent scalar sites, each with a positive support, in the column
            order of ``theta = log u``.
        obs_name: the model's observed site.
        y_shape: the shape of one observation (a batch is ``(m, *y_shape)``).
        dtype: dtype of the draws and densities returned.

    Shapes: ``posterior(y)`` with ``y`` ``(m, *y_shape)`` (or one ``y_shape``) is a
    distribution with batch ``(m,)`` (or ``()``) and event ``(d,)``, ``d = len(names)``.
    """

    def __init__(self, names, obs_name: str, y_shape, dtype=torch.float64) -> None:
        self.names, self.dtype = list(names), dtype
        self.observed, self.y_shape = [obs_name], torch.Size(y_shape)

    def flat_y(self, y) -> tuple[torch.Tensor, bool]:
        """``y`` (a tensor or ``{obs_name: tensor}``) -> ``((m, n_y)`` positive, one or not)."""
        if isinstance(y, dict):
            y = y[self.observed[0]]
        y = torch.as_tensor(y)
        single = y.shape == self.y_shape
        if not single and y.shape[1:] != self.y_shape:
            raise ValueError(f"y must have shape {tuple(self.y_shape)} or (m, "
                             f"*{tuple(self.y_shape)}), got {tuple(y.shape)}")
        y = y.reshape(1 if single else y.shape[0], -1)
        if not bool((y > 0).all()):
            raise ValueError(f"{type(self).__name__} conditions on log y: every observation "
                             "must be > 0")
        return y, single

    def posterior(self, y) -> Distribution:
        raise NotImplementedError

    def sample(self, y, num_samples: int) -> dict[str, torch.Tensor]:
        """``num_samples`` draws per observation: ``name -> (num_samples, *batch)`` (``u``)."""
        return self.unpack(self.posterior(y).sample((num_samples,)))

    def log_prob(self, latent: torch.Tensor, y) -> torch.Tensor:
        """``log q(latent | y)`` of packed latents ``latent = log u``."""
        return self.posterior(y).log_prob(latent)

    def pack(self, values: dict[str, torch.Tensor], batch_ndim: int = 1) -> torch.Tensor:
        """``name -> (*batch,)`` positive values -> ``log u`` ``(*batch, d)``."""
        return torch.stack([values[k].log() for k in self.names], -1).to(self.dtype)

    def unpack(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """``log u`` ``(*batch, d)`` -> ``name -> (*batch,)`` positive values."""
        return {k: latent[..., i].exp() for i, k in enumerate(self.names)}

    def site_slices(self) -> OrderedDict[str, slice]:
        return OrderedDict((k, slice(i, i + 1)) for i, k in enumerate(self.names))

    def sampler(self) -> LogUPosterior:
        """The wrapped posteriors need no snapshot here: returns ``self``."""
        return self


class SbiPosterior(LogUPosterior):
    """A trained sbi posterior over ``log u`` given ``log y`` as an ``AmortizedPosterior``.

    Args:
        posterior: sbi's ``DirectPosterior`` (``build_posterior`` of ``NPE``), trained on
            ``theta = log u`` (columns in the order of ``names``) and ``x = log y`` flattened.
        names, obs_name, y_shape, dtype: as :class:`LogUPosterior` (sbi works in float32;
            draws and densities are returned in ``dtype``).
    """

    def __init__(self, posterior, names, obs_name: str, y_shape,
                 dtype=torch.float64) -> None:
        super().__init__(names, obs_name, y_shape, dtype)
        self.sbi_posterior = posterior

    def posterior(self, y) -> Distribution:
        """``q(log u | y)``: batch ``(m,)`` for ``m`` observations, ``()`` for one."""
        y, single = self.flat_y(y)
        batched = _Batched(self.sbi_posterior, y.log().float(), len(self.names), self.dtype)
        if single:
            return _Single(batched)
        return batched


class CotPosterior(LogUPosterior):
    """A sample-mode :class:`pyro_kr.COTFlowMatching` over ``log u`` given ``y`` as an
    ``AmortizedPosterior`` whose sites are the model's.

    Args:
        cot: a fitted ``COTFlowMatching`` in sample mode, trained on ``log u`` (columns in the
            order of ``names``) and the flattened ``y`` with ``transform_y=torch.log``.
        names, obs_name, y_shape, dtype: as :class:`LogUPosterior`.
        ode_steps: RK4 steps of its sampling and densities (COT-FM's default, 50).
    """

    def __init__(self, cot, names, obs_name: str, y_shape, dtype=torch.float64,
                 ode_steps: int = 50) -> None:
        super().__init__(names, obs_name, y_shape, dtype)
        if cot.dim_u != len(self.names):
            raise ValueError(f"the COT-FM posterior has dim_u = {cot.dim_u}, but "
                             f"{len(self.names)} names were given")
        self.cot, self.ode_steps = cot, ode_steps

    def posterior(self, y) -> Distribution:
        """``q(log u | y)``: batch ``(m,)`` for ``m`` observations, ``()`` for one."""
        y, single = self.flat_y(y)
        return self.cot.posterior(y[0] if single else y, ode_steps=self.ode_steps)


class _Single(Distribution):
    """One observation's posterior: batch ``()``, event ``(d,)``."""

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, batched: _Batched) -> None:
        self.batched = batched
        super().__init__(torch.Size(), batched.event_shape, validate_args=False)

    def sample(self, sample_shape=()) -> torch.Tensor:
        return self.batched.sample(sample_shape).squeeze(-2)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.batched.log_prob(value.unsqueeze(-2)).squeeze(-1)
