"""The :class:`Problem` base class shared by every benchmark problem.

A problem is a Bayesian model written twice (Pyro and PyMC, same parameterization and site
names) plus a batched, seeded prior-predictive simulator, fixed benchmark observations and
reference posterior draws. Subclasses are frozen dataclasses: their fields are the problem's
configuration (keyword-only, with defaults), everything else is derived from them.

Subclasses implement :meth:`Problem.prior` (one torch distribution per latent site, in the
order of :attr:`Problem.param_names`) or, for hierarchical priors, :meth:`Problem.latents`;
then :meth:`Problem.likelihood` (the distribution of the data
given batched latents), :meth:`Problem.observation_values` and :meth:`Problem.pymc_model`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyro
import torch
from torch.distributions import Distribution

__all__ = ["Problem", "Site"]

#: ``site(name, distribution) -> value``: how :meth:`Problem.latents` draws each latent.
Site = Callable[[str, Distribution], torch.Tensor]


@dataclass(frozen=True)
class Problem(abc.ABC):
    """A benchmark posterior: Pyro model, PyMC twin, simulator, observations and references.

    Example:
        >>> import pyro_kr.bench.problems as problems
        >>> p = problems.get("linear_gaussian")
        >>> u, y = p.simulate(4, seed=0)
        >>> tuple(u["theta"].shape), tuple(y.shape)
        ((4, 10), (4, 15))
    """

    name: ClassVar[str] = "problem"
    #: ``False`` for likelihood-free (joint-sample) tasks: no :meth:`model` density, no twin.
    has_likelihood: ClassVar[bool] = True
    #: Name of the observed site in :meth:`model` and :meth:`pymc_model`.
    obs_name: ClassVar[str] = "y"
    #: A KR order chosen from the problem's structure (``AutoKR(order=...)``), or ``None``
    #: when the model's order is already the natural one. Used by the ``autokr_*_ordered``
    #: benchmark methods; see docs/guide.md, "The KR ordering".
    kr_order: ClassVar[tuple[str, ...] | None] = None

    # -- what subclasses provide -------------------------------------------------------------
    def prior(self) -> dict[str, Distribution]:
        """Return independent priors of the latent sites (float64), in ``param_names`` order.

        Problems whose latents depend on each other (hierarchical models) override
        :meth:`latents` instead.
        """
        raise NotImplementedError(f"{type(self).__name__} must define prior() or latents()")

    def latents(self, site: Site) -> dict[str, torch.Tensor]:
        """Run the prior generatively, calling ``site(name, distribution)`` for every latent.

        ``site`` returns the site's value: ``pyro.sample`` in :meth:`model`, a batched draw in
        :meth:`simulate`, a stored value in :meth:`log_joint`. Distributions are float64 with
        batch shapes following the values already returned.
        """
        return {k: site(k, d) for k, d in self.prior().items()}

    @abc.abstractmethod
    def likelihood(self, u: dict[str, torch.Tensor]) -> Distribution:
        """Return ``p(y | u)`` for latents of batch shape ``B``: batch ``B``, event ``y_shape``."""

    @property
    @abc.abstractmethod
    def y_shape(self) -> tuple[int, ...]:
        """Shape of one observation."""

    @abc.abstractmethod
    def observation_values(self) -> list[torch.Tensor]:
        """Return the fixed benchmark observations (float64), each of shape ``y_shape``."""

    @abc.abstractmethod
    def pymc_model(self, y: Any) -> Any:
        """Return the PyMC twin (a ``pm.Model``) conditioned on ``y``, same site names."""

    # -- derived -----------------------------------------------------------------------------
    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Event shape of every latent site, e.g. ``{"alpha": (), "theta": (10,)}``."""
        shapes: dict[str, tuple[int, ...]] = {}

        def site(k: str, d: Distribution) -> torch.Tensor:
            shapes[k] = tuple(d.event_shape)
            return d.sample()

        with torch.random.fork_rng(devices=[]):
            self.latents(site)
        return shapes

    @property
    def param_names(self) -> list[str]:
        """Latent site names, in the order the model samples them."""
        return list(self.param_shapes)

    @property
    def dim(self) -> int:
        """Total number of scalar latent parameters."""
        return int(sum(int(np.prod(s)) for s in self.param_shapes.values()))

    @property
    def num_observations(self) -> int:
        """How many fixed benchmark observations :meth:`observation` serves."""
        return len(self.observation_values())

    def model(self, y: torch.Tensor | None = None) -> torch.Tensor:
        """The Pyro model: latents from :meth:`prior`, then ``y ~ likelihood``.

        Args:
            y: an observation of shape ``y_shape``, or ``None`` to simulate one.

        Returns:
            The observed (or simulated) ``y``.

        Example:
            >>> import pyro, pyro_kr.bench.problems as problems
            >>> p = problems.get("banana")
            >>> tr = pyro.poutine.trace(p.model).get_trace(p.observation(0))
            >>> sorted(tr.stochastic_nodes)
            ['theta1', 'theta2']
        """
        if y is not None:
            y = self._check_y(y)
        u = self.latents(pyro.sample)
        return pyro.sample(self.obs_name, self.likelihood(u), obs=y)

    def observation(self, index: int = 0) -> torch.Tensor:
        """Return fixed benchmark observation ``index`` (float64, shape ``y_shape``).

        Example:
            >>> import pyro_kr.bench.problems as problems
            >>> problems.get("lotka_volterra").observation(0).shape
            torch.Size([22])
        """
        values = self.observation_values()
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"observation index must be an int, got {type(index).__name__}")
        if not 0 <= index < len(values):
            raise ValueError(
                f"{self.name} has observations 0..{len(values) - 1}, got index {index}"
            )
        return values[index].clone()

    def simulate(self, n: int, *, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Draw ``n`` pairs ``(u, y)`` from the prior predictive, vectorized and seeded.

        The global torch RNG state is restored afterwards; the same seed gives the same draws.

        Args:
            n: number of pairs.
            seed: random seed.

        Returns:
            ``(u, y)``: a dict name -> tensor ``(n, *site_shape)`` and a tensor ``(n, *y_shape)``.

        Example:
            >>> import pyro_kr.bench.problems as problems
            >>> u, y = problems.get("eight_schools").simulate(3, seed=1)
            >>> tuple(u["theta"].shape), tuple(y.shape)
            ((3, 8), (3, 8))
        """
        from pyro_kr._validation import check_dim

        check_dim("n", n)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            u = self.latents(lambda k, d: d.sample() if d.batch_shape else d.sample((n,)))
            y = self.likelihood(u).sample()
        return u, y

    def log_joint(self, u: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """``log p(u) + log p(y | u)`` for batched constrained latents ``u``; shape ``B``.

        Example:
            >>> import pyro_kr.bench.problems as problems
            >>> p = problems.get("funnel")
            >>> u, y = p.simulate(5, seed=0)
            >>> p.log_joint(u, p.observation(0)).shape
            torch.Size([5])
        """
        terms: list[torch.Tensor] = []

        def site(k: str, d: Distribution) -> torch.Tensor:
            terms.append(d.log_prob(u[k]))
            return u[k]

        self.latents(site)
        return sum(terms) + self.likelihood(u).log_prob(self._check_y(y))

    def reference(
        self, index: int = 0, *, num_samples: int | None = None
    ) -> dict[str, np.ndarray]:
        """Reference posterior draws for observation ``index``: dict name -> ``(n, *shape)``.

        The default loads the draws shipped in ``pyro_kr/bench/data/references/`` (made by
        ``python -m pyro_kr.bench.problems.references``); ``num_samples`` keeps the first draws.

        Example:
            >>> import pyro_kr.bench.problems as problems
            >>> ref = problems.get("eight_schools").reference(0, num_samples=100)
            >>> ref["theta"].shape
            (100, 8)
        """
        from pyro_kr.bench.problems.references import load_reference

        self.observation(index)  # validates the index
        draws = load_reference(self.name, index)
        if num_samples is not None:
            n = len(next(iter(draws.values())))
            if num_samples > n:
                raise ValueError(
                    f"{self.name} ships {n} reference draws, asked for num_samples={num_samples}"
                )
            draws = {k: v[:num_samples] for k, v in draws.items()}
        return draws

    def exact_posterior(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Closed-form posterior ``(mean, cov)``; only problems with a Gaussian posterior."""
        raise NotImplementedError(f"{self.name} has no closed-form posterior")

    # -- helpers -----------------------------------------------------------------------------
    def _check_y(self, y: Any) -> torch.Tensor:
        if not isinstance(y, torch.Tensor):
            y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
        shape = tuple(y.shape[y.dim() - len(self.y_shape) :]) if y.dim() else ()
        if y.dim() < len(self.y_shape) or shape != self.y_shape:
            raise ValueError(
                f"{self.name} expected y of shape (..., {', '.join(map(str, self.y_shape))}), "
                f"got shape {tuple(y.shape)}"
            )
        return y
