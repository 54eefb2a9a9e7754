"""Calibration checks of amortized posteriors: simulation-based calibration and coverage.

Both draw ``(u*, y)`` pairs from the model's prior predictive and ask the amortized guide
for ``q(u | y)`` of every simulated ``y`` in one batched call.

* :func:`sbc` (Talts et al., 2018): the rank of ``u*_j`` among ``L`` posterior draws of
  coordinate ``j`` is uniform on ``{0, ..., L}`` for every ``j`` if ``q(u | y) = p(u | y)``.
  A chi-square test per coordinate gives a p-value. Ranks are taken in the packed
  unconstrained coordinates (any function of ``u`` is a valid SBC statistic; for elementwise
  supports such as positive or interval sites they equal the ranks of the constrained values).
* :func:`coverage`: the share of datasets whose ``u*`` falls inside the central credible
  interval of each coordinate at levels ``0.05 .. 0.95`` (from the same ranks), and the joint
  coverage of highest-density regions of ``q`` (``u*`` is in the level-``a`` region when fewer
  than a fraction ``a`` of the draws have a higher density). A calibrated posterior lies on
  the diagonal; below it means overconfident, above it underconfident.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pyro import poutine

from pyro_kr._validation import check_dim
from pyro_kr.posterior_protocol import AmortizedPosterior
from pyro_kr.traces import plate_depth, sample_sites, simulate_pairs

__all__ = ["CoverageResult", "SBCResult", "coverage", "sbc"]

DEFAULT_LEVELS = tuple(round(0.05 * k, 2) for k in range(1, 20))


@dataclass(frozen=True, eq=False)
class SBCResult:
    """Ranks of simulated true values among posterior draws, with a uniformity test.

    Attributes:
        ranks: ``(num_datasets, d)`` integer ranks in ``0 .. num_draws``.
        names: ``d`` coordinate names (``"site"`` or ``"site[i]"``).
        num_draws: posterior draws per dataset ``L``.
        statistic: ``(d,)`` chi-square statistics of the binned ranks.
        p_values: ``(d,)`` p-values of uniformity.
        bins: number of rank bins of the test.
        level: the test level used by :attr:`uniform` and :attr:`rejected`.
    """

    ranks: np.ndarray
    names: list[str]
    num_draws: int
    statistic: np.ndarray
    p_values: np.ndarray
    bins: int
    level: float

    @property
    def rejected(self) -> list[str]:
        """Coordinates whose ranks depart from uniformity at :attr:`level`."""
        return [n for n, p in zip(self.names, self.p_values, strict=True) if p < self.level]

    @property
    def uniform(self) -> bool:
        """``True`` when no coordinate is rejected at :attr:`level`."""
        return not self.rejected


@dataclass(frozen=True, eq=False)
class CoverageResult:
    """Empirical coverage of credible regions at nominal ``levels``.

    Attributes:
        levels: ``(k,)`` nominal credibility levels.
        marginal: ``(k, d)`` share of datasets whose ``u*_j`` is in the central interval.
        joint: ``(k,)`` share of datasets whose ``u*`` is in the highest-density region.
        names: ``d`` coordinate names.
        num_datasets: number of simulated datasets.
    """

    levels: np.ndarray
    marginal: np.ndarray
    joint: np.ndarray
    names: list[str]
    num_datasets: int


def _coordinate_names(guide, shapes: dict[str, torch.Size]) -> list[str]:
    names = []
    for name, sl in guide.site_slices().items():
        size = sl.stop - sl.start
        scalar = size == 1 and len(shapes[name]) == 0
        names += [name] if scalar else [f"{name}[{i}]" for i in range(size)]
    return names


def _check_guide(owner: str, guide) -> None:
    if not isinstance(guide, AmortizedPosterior):
        raise TypeError(
            f"{owner} needs an amortized guide implementing pyro_kr.AmortizedPosterior "
            "(AmortizedKR, COTFlowMatching built from a model, or FixedObservation(AutoKR)), got "
            f"{type(guide).__name__}"
        )


def _simulate(guide, model, args, kwargs, n: int, seed: int):
    """``n`` prior-predictive pairs: latent values ``name -> (n, *shape)``, data, site shapes."""
    observed = list(guide.observed)
    kwargs = {k: v for k, v in kwargs.items() if k not in observed}
    with torch.random.fork_rng(devices=[]), torch.no_grad(), poutine.block():
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    sites = {site["name"]: site for site in sample_sites(trace, subsample=False)}
    missing = [name for name in observed if name not in sites]
    if missing:
        raise ValueError(f"observed sites {missing} are not sample sites of the model")
    latent = [name for name, s in sites.items() if not s["is_observed"] and name not in observed]
    shapes = {name: sites[name]["value"].shape for name in latent + observed}
    sims = simulate_pairs(model, args, kwargs, shapes, n, depth=plate_depth(trace), seed=seed)
    return {k: sims[k] for k in latent}, {k: sims[k] for k in observed}, shapes


def _truth(guide, values: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    return guide.pack({k: v.to(like) for k, v in values.items()}).to(like)


@torch.no_grad()
def _draws(guide, data, num_draws: int, seed: int, *, chunk: int, log_q: bool = False):
    """Posterior draws ``(L, n, d)`` (and, if asked, their log densities ``(L, n)``)."""
    n = len(next(iter(data.values())))
    out, logs = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, n, chunk):
            part = {k: v[start : start + chunk] for k, v in data.items()}
            post = guide.posterior(part)
            z = post.sample((num_draws,))
            out.append(z)
            if log_q:
                logs.append(post.log_prob(z))
    draws = torch.cat(out, dim=1)
    return (draws, torch.cat(logs, dim=1)) if log_q else draws


def _chi2_sf(statistic: np.ndarray, dof: int) -> np.ndarray:
    """Chi-square survival function via the regularized upper incomplete gamma."""
    x = torch.as_tensor(statistic, dtype=torch.float64)
    return torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), x / 2).numpy()


def rank_uniformity(ranks: np.ndarray, num_draws: int, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Chi-square statistics and p-values of ranks ``(n, d)`` in ``0 .. num_draws`` vs uniform.

    Ranks are grouped into ``bins`` bins; the expected count of each bin is exact (it counts
    the rank values the bin holds), so ``num_draws + 1`` need not be a multiple of ``bins``.
    """
    n = ranks.shape[0]
    edges = np.floor(np.arange(num_draws + 1) * bins / (num_draws + 1)).astype(int)
    expected = np.bincount(edges, minlength=bins) * n / (num_draws + 1)
    stats = []
    for j in range(ranks.shape[1]):
        observed = np.bincount(edges[ranks[:, j]], minlength=bins)
        stats.append(float(((observed - expected) ** 2 / expected).sum()))
    stats = np.asarray(stats)
    return stats, _chi2_sf(stats, bins - 1)


def sbc(
    guide,
    model: Callable,
    *args,
    num_datasets: int = 200,
    num_draws: int = 100,
    bins: int | None = None,
    level: float = 0.01,
    seed: int = 0,
    chunk: int = 256,
    **kwargs,
) -> SBCResult:
    """Simulation-based calibration of an amortized guide.

    Args:
        guide: a fitted :class:`~pyro_kr.posterior_protocol.AmortizedPosterior`
            (:class:`~pyro_kr.AmortizedKR`, :class:`~pyro_kr.COTFlowMatching`).
        model: the Pyro model; ``*args, **kwargs`` are its arguments other than the data.
        num_datasets: simulated ``(u*, y)`` pairs.
        num_draws: posterior draws ``L`` per dataset (ranks lie in ``0 .. L``).
        bins: rank bins of the chi-square test (default ``min(20, max(2, num_datasets // 10))``,
            at most ``L + 1``).
        level: test level reported by :attr:`SBCResult.uniform` (no multiplicity correction).
        seed: seed of the simulations and draws (the global RNG state is restored).
        chunk: datasets per batched posterior call.

    Returns:
        An :class:`SBCResult`.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> import pyro_kr
        >>> def model(y=None):
        ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...     return pyro.sample("y", dist.Normal(z, 1.0), obs=y)
        >>> pyro.clear_param_store()  # parameters live in the global param store
        >>> guide = pyro_kr.AmortizedKR(model, observed="y", map="affine")
        >>> result = sbc(guide, model, num_datasets=50, num_draws=20)
        >>> result.ranks.shape
        (50, 1)
    """
    _check_guide("sbc", guide)
    check_dim("num_datasets", num_datasets, minimum=2)
    check_dim("num_draws", num_draws)
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if bins is None:
        bins = min(20, max(2, num_datasets // 10))
    bins = min(check_dim("bins", bins, minimum=2), num_draws + 1)
    values, data, shapes = _simulate(guide, model, args, kwargs, num_datasets, seed)
    draws = _draws(guide, data, num_draws, seed + 1, chunk=chunk)
    truth = _truth(guide, values, draws)
    ranks = (draws < truth).sum(0).cpu().numpy().astype(int)
    statistic, p_values = rank_uniformity(ranks, num_draws, bins)
    names = _coordinate_names(guide, shapes)
    return SBCResult(ranks, names, num_draws, statistic, p_values, bins, level)


def coverage(
    guide,
    model: Callable,
    *args,
    num_datasets: int = 200,
    num_draws: int = 500,
    levels: Sequence[float] = DEFAULT_LEVELS,
    seed: int = 0,
    chunk: int = 256,
    **kwargs,
) -> CoverageResult:
    """Expected coverage of central (marginal) and highest-density (joint) credible regions.

    Args:
        guide: a fitted :class:`~pyro_kr.posterior_protocol.AmortizedPosterior`
            (:class:`~pyro_kr.AmortizedKR`, :class:`~pyro_kr.COTFlowMatching`).
        model: the Pyro model; ``*args, **kwargs`` are its arguments other than the data.
        num_datasets: simulated ``(u*, y)`` pairs.
        num_draws: posterior draws per dataset.
        levels: nominal credibility levels in ``(0, 1)``.
        seed: seed of the simulations and draws.
        chunk: datasets per batched posterior call.

    Returns:
        A :class:`CoverageResult`; calibrated guides give ``marginal`` and ``joint`` close to
        ``levels`` (within about ``2 sqrt(a (1 - a) / num_datasets)``).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> import pyro_kr
        >>> def model(y=None):
        ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...     return pyro.sample("y", dist.Normal(z, 1.0), obs=y)
        >>> pyro.clear_param_store()  # parameters live in the global param store
        >>> guide = pyro_kr.AmortizedKR(model, observed="y", map="affine")
        >>> coverage(guide, model, num_datasets=50, num_draws=50).marginal.shape
        (19, 1)
    """
    _check_guide("coverage", guide)
    check_dim("num_datasets", num_datasets, minimum=2)
    check_dim("num_draws", num_draws)
    levels = np.asarray(levels, dtype=np.float64)
    if levels.ndim != 1 or not bool(((levels > 0) & (levels < 1)).all()):
        raise ValueError(f"levels must be a list of numbers in (0, 1), got {levels.tolist()}")
    values, data, shapes = _simulate(guide, model, args, kwargs, num_datasets, seed)
    draws, log_q = _draws(guide, data, num_draws, seed + 1, chunk=chunk, log_q=True)
    truth = _truth(guide, values, draws)
    fraction = ((draws < truth).sum(0).double() / num_draws).cpu().numpy()
    lo, hi = (1 - levels) / 2, (1 + levels) / 2
    marginal = ((fraction[None] >= lo[:, None, None]) & (fraction[None] <= hi[:, None, None]))
    with torch.no_grad():
        log_q_true = torch.cat(
            [
                guide.posterior({k: v[s : s + chunk] for k, v in data.items()}).log_prob(
                    truth[s : s + chunk]
                )
                for s in range(0, num_datasets, chunk)
            ]
        )
    above = (log_q > log_q_true).double().mean(0).cpu().numpy()
    joint = (above[None] < levels[:, None]).mean(1)
    return CoverageResult(
        levels, marginal.mean(1), joint, _coordinate_names(guide, shapes), num_datasets
    )
