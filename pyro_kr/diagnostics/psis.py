"""Pareto-smoothed importance sampling (PSIS) of a guide against its model."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pyro_kr._validation import check_dim
from pyro_kr.diagnostics import _arviz
from pyro_kr.diagnostics._draws import draw_guide

#: k-hat thresholds of Vehtari et al. (2024): below GOOD the importance-sampling estimates are
#: reliable, up to OK they are usable with more draws, above OK they are not to be trusted.
KHAT_GOOD = 0.5
KHAT_OK = 0.7
_CONSTANT = 1e-8  # log weights spread below this (nats) are constant: k-hat = -inf


@dataclass(frozen=True, eq=False)
class PSISResult:
    """The outcome of PSIS: how far a guide is from its posterior, and corrected draws.

    Attributes:
        khat: Pareto tail shape of the importance ratios ``p(x, z) / q(z)``. ``< 0.5`` good: the
            guide is close and the reweighted draws are reliable; ``0.5 - 0.7`` ok: usable,
            with slower convergence; ``> 0.7`` unreliable: the guide misses posterior mass
            (typically too narrow tails) and neither the guide nor the reweighting should be
            trusted (Vehtari, Simpson, Gelman, Yao, Gabry 2024, JMLR 25(72)). ``-inf`` when
            the log weights are constant (spread below 1e-8 nats): the guide is exact.
        ess: importance-sampling effective sample size ``1 / sum(w_s^2)`` of the smoothed
            normalized weights (at most ``N``; ``ess / N`` is the sampling efficiency).
        weights: ``(N,)`` smoothed self-normalized weights (sum to 1), numpy.
        log_weights: ``(N,)`` raw log weights ``log p(x, z_s) - log q(z_s)``, numpy.
        draws: ``name -> (N, ...)`` the guide's draws the weights refer to (torch tensors).
    """

    khat: float
    ess: float
    weights: np.ndarray
    log_weights: np.ndarray
    draws: dict[str, torch.Tensor]

    @classmethod
    def from_log_weights(
        cls, log_weights: np.ndarray | torch.Tensor, draws: Mapping[str, Any] | None = None
    ) -> PSISResult:
        """Run PSIS on given log weights ``(N,)`` (and their draws ``name -> (N, ...)``).

        Example:
            >>> lw = np.random.default_rng(0).normal(scale=0.1, size=2000)
            >>> PSISResult.from_log_weights(lw).khat < 0.5
            True
        """
        lw = np.asarray(
            log_weights.detach().cpu() if isinstance(log_weights, torch.Tensor) else log_weights,
            dtype=np.float64,
        )
        if lw.ndim != 1 or lw.shape[0] < 2:
            raise ValueError(f"expected log weights of shape (N,) with N >= 2, got {lw.shape}")
        if not np.isfinite(lw).all():
            raise ValueError(
                f"log weights hold {int((~np.isfinite(lw)).sum())} non-finite entries: the "
                "guide puts mass where the model has none (or the model produced NaN)"
            )
        if np.ptp(lw) <= _CONSTANT:  # q = p up to round-off: no tail to fit, weights uniform
            smoothed, khat = np.full_like(lw, -math.log(lw.shape[0])), -math.inf
        else:
            smoothed, khat = _arviz.psislw(lw)
        weights = np.exp(smoothed - np.max(smoothed))
        weights = weights / weights.sum()
        draws = {k: torch.as_tensor(v) for k, v in (draws or {}).items()}
        for name, value in draws.items():
            if value.shape[0] != lw.shape[0]:
                raise ValueError(
                    f"draws[{name!r}] has {value.shape[0]} draws, log weights have {lw.shape[0]}"
                )
        return cls(
            khat=khat, ess=float(1.0 / np.sum(weights**2)), weights=weights,
            log_weights=lw, draws=draws,
        )

    @property
    def diagnosis(self) -> str:
        """``"good"`` (k-hat < 0.5), ``"ok"`` (< 0.7) or ``"unreliable"``."""
        if self.khat < KHAT_GOOD:
            return "good"
        return "ok" if self.khat < KHAT_OK else "unreliable"

    @property
    def elbo(self) -> float:
        """The ELBO estimate ``mean(log w)``."""
        return float(np.mean(self.log_weights))

    @property
    def log_evidence(self) -> float:
        """The importance-sampling estimate ``log mean(exp(log w))`` of ``log p(x)``."""
        m = float(np.max(self.log_weights))
        return m + math.log(float(np.mean(np.exp(self.log_weights - m))))

    def mean(self) -> dict[str, torch.Tensor]:
        """Self-normalized importance-weighted posterior means ``name -> site shape``."""
        w = torch.as_tensor(self.weights)
        return {
            k: torch.tensordot(w.to(v), v, dims=([0], [0])) for k, v in self.draws.items()
        }

    def resample(
        self, num_samples: int | None = None, *, seed: int = 0
    ) -> dict[str, torch.Tensor]:
        """Return draws resampled with replacement in proportion to the smoothed weights.

        The result approximates the posterior better than the guide when ``khat`` is small
        (sampling-importance-resampling); duplicates are expected, about ``N / ess`` copies per
        distinct draw.

        Args:
            num_samples: number of draws (default ``N``).
            seed: seed of the resampling.

        Returns:
            ``name -> (num_samples, ...)`` tensors.
        """
        n = len(self.weights) if num_samples is None else check_dim("num_samples", num_samples)
        gen = torch.Generator().manual_seed(seed)
        idx = torch.multinomial(torch.as_tensor(self.weights), n, replacement=True, generator=gen)
        return {k: v[idx.to(v.device)] for k, v in self.draws.items()}


def psis(
    guide: Callable,
    model: Callable,
    *args: Any,
    num_samples: int = 4000,
    seed: int = 0,
    vectorize: bool | None = None,
    **kwargs: Any,
) -> PSISResult:
    """Run Pareto-smoothed importance sampling of ``guide`` against ``model``.

    Draws ``z_s ~ q`` (see :func:`pyro_kr.diagnostics.to_inference_data` for how), forms the
    log weights ``log p(x, z_s) - log q(z_s)`` and smooths their upper tail with a generalized
    Pareto fit (``az.psislw``, ``reff = 1``). The fitted shape ``k-hat`` measures how far the
    guide is from the posterior: ``< 0.5`` good, ``0.5 - 0.7`` ok, ``> 0.7`` unreliable
    (Vehtari et al. 2024). With small ``k-hat`` the reweighted (or resampled) draws correct
    the guide toward the exact posterior.

    Args:
        guide: the fitted guide.
        model: the Pyro model.
        *args: the model's positional arguments.
        num_samples: number of draws ``N`` (k-hat needs a few thousand to be stable).
        seed: seed of the draws.
        vectorize: as in :func:`pyro_kr.diagnostics.to_inference_data`.
        **kwargs: the model's keyword arguments.

    Returns:
        A :class:`PSISResult`.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> from pyro.infer.autoguide import AutoNormal
        >>> def model():
        ...     pyro.sample("z", dist.Normal(0.0, 1.0))
        >>> pyro.clear_param_store()
        >>> guide = AutoNormal(model, init_scale=1.0)  # q = N(0, 1) = p: weights are constant
        >>> result = psis(guide, model, num_samples=1000)
        >>> result.diagnosis
        'good'
    """
    check_dim("num_samples", num_samples, minimum=2)
    draws = draw_guide(
        guide, model, args, kwargs, num_samples=num_samples, seed=seed, vectorize=vectorize
    )
    return PSISResult.from_log_weights(draws.log_weight, draws.latent)
