"""Conditional optimal-transport couplings between source and target pairs (Kerrigan et al. 2024,
sec. 6).

The source keeps the data ``y`` of each pair and replaces the parameters ``u`` by noise; the
coupling is an exact OT plan (POT's ``ot.emd``, called on torch tensors) for the cost

    c((y0, u0), (y1, u1)) = |y1 - y0|^2 + eps |u1 - u0|^2,    0 < eps << 1

(docs/flow_matching.md). As ``eps -> 0`` the plan moves mass only between (nearly) equal ``y`` and,
among those, solves the OT problem in ``u``: its limit is the Knothe-Rosenblatt coupling.
"""

from __future__ import annotations

import warnings

import torch

__all__ = [
    "PlanSampler",
    "block_plan_sampler",
    "cot_cost_matrix",
    "cot_plan",
    "match_pairs",
    "sample_pairs",
]


def _check_pair_set(name: str, y: torch.Tensor, u: torch.Tensor) -> None:
    for what, x in ((f"{name} y", y), (f"{name} u", u)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"cot_plan expected a torch.Tensor for {what}, got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(f"cot_plan expected {what} of shape (n, d), got {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"cot_plan received {what} with non-finite entries (NaN or inf)")
    if y.shape[0] != u.shape[0]:
        raise ValueError(
            f"cot_plan expected {name} y and u with the same number of rows, "
            f"got {y.shape[0]} and {u.shape[0]}"
        )


def cot_cost_matrix(
    y0: torch.Tensor, u0: torch.Tensor, y1: torch.Tensor, u1: torch.Tensor, *, eps: float
) -> torch.Tensor:
    """Return the COT cost ``C[i, j] = |y1_j - y0_i|^2 + eps |u1_j - u0_i|^2``.

    Args:
        y0: source data, shape ``(n, dim_y)``.
        u0: source parameters (noise), shape ``(n, dim_u)``.
        y1: target data, shape ``(m, dim_y)``.
        u1: target parameters, shape ``(m, dim_u)``.
        eps: weight of the ``u`` cost, ``> 0``.

    Returns:
        Cost matrix of shape ``(n, m)``, dtype and device of the inputs.

    Example:
        >>> y = torch.tensor([[0.0], [1.0]])
        >>> u = torch.tensor([[0.0], [2.0]])
        >>> cot_cost_matrix(y, u, y, u, eps=0.5)
        tensor([[0., 3.],
                [3., 0.]])
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    _check_pair_set("source", y0, u0)
    _check_pair_set("target", y1, u1)
    if y0.shape[1] != y1.shape[1] or u0.shape[1] != u1.shape[1]:
        raise ValueError(
            "cot_cost_matrix expected source and target with equal dims, got y "
            f"{y0.shape[1]} vs {y1.shape[1]} and u {u0.shape[1]} vs {u1.shape[1]}"
        )
    if torch.is_grad_enabled() and any(x.requires_grad for x in (y0, u0, y1, u1)):
        return torch.cdist(y0, y1).square() + eps * torch.cdist(u0, u1).square()
    # no autograd: build the cost in place, so a full plan's n x n matrices are not held
    # three times at once (20k pairs: 3.2 GB each in float64)
    cost = torch.cdist(y0, y1).square_()
    cost_u = torch.cdist(u0, u1).square_()
    cost.add_(cost_u, alpha=eps)
    del cost_u
    return cost


def cot_plan(
    y0: torch.Tensor,
    u0: torch.Tensor,
    y1: torch.Tensor,
    u1: torch.Tensor,
    *,
    eps: float,
    num_iter_max: int = 100_000_000,
) -> torch.Tensor:
    """Return the exact OT plan (uniform weights) for the COT cost, computed by ``ot.emd``.

    POT keeps the torch backend: the plan comes back as a torch tensor of the inputs' dtype
    (float64 is used inside for the network simplex, whatever the input dtype).

    Args:
        y0: source data, shape ``(n, dim_y)``.
        u0: source parameters (noise), shape ``(n, dim_u)``.
        y1: target data, shape ``(m, dim_y)``.
        u1: target parameters, shape ``(m, dim_u)``.
        eps: weight of the ``u`` cost, ``> 0``.
        num_iter_max: iteration cap of the network simplex. Reaching it raises: the plan
            would not be optimal (20,000 pairs in 20 dimensions need more than a million).

    Returns:
        Plan of shape ``(n, m)`` with row sums ``1/n`` and column sums ``1/m``; for ``n == m``
        it is (generically) ``1/n`` times a permutation matrix.

    Example:
        >>> y = torch.tensor([[0.0], [5.0]])
        >>> u0 = torch.tensor([[1.0], [-1.0]])
        >>> u1 = torch.tensor([[-1.0], [1.0]])
        >>> (cot_plan(y, u0, y, u1, eps=1e-3) * 2).round()
        tensor([[1., 0.],
                [0., 1.]])
    """
    import ot

    with torch.no_grad():
        cost = cot_cost_matrix(y0, u0, y1, u1, eps=eps).to(torch.float64)
    n, m = cost.shape
    a = torch.full((n,), 1.0 / n, dtype=torch.float64, device=cost.device)
    b = torch.full((m,), 1.0 / m, dtype=torch.float64, device=cost.device)
    with warnings.catch_warnings():  # the cap is reported below as an error, not twice
        warnings.filterwarnings("ignore", message="numItermax reached", category=UserWarning)
        plan, log = ot.emd(a, b, cost, numItermax=num_iter_max, log=True)
    if log["warning"] is not None:  # POT only warns; a suboptimal plan is not the COT coupling
        raise RuntimeError(
            f"ot.emd did not find the optimal plan for {n} x {m} pairs: {log['warning']} "
            f"(num_iter_max={num_iter_max}); raise num_iter_max, or use fewer pairs "
            "(plan_block_size= in COTFlowMatching.fit)"
        )
    if not bool(torch.isfinite(plan).all()) or float(plan.sum()) < 0.5:
        raise RuntimeError(
            "ot.emd returned an invalid plan (non-finite or empty); the cost range is "
            f"[{float(cost.min()):.3g}, {float(cost.max()):.3g}]: rescale the data or raise "
            "num_iter_max"
        )
    return plan.to(y0.dtype)


class PlanSampler:
    """Store the support of an OT plan once and draw index pairs from it.

    A full plan for ``n`` pairs is ``n x n`` but has (generically) only ``n`` nonzero entries;
    keeping just those makes each draw ``O(num)``.

    Args:
        plan: nonnegative matrix of shape ``(n, m)``.

    Example:
        >>> sampler = PlanSampler(torch.eye(3) / 3)
        >>> i, j = sampler.sample(5, generator=torch.Generator().manual_seed(0))
        >>> bool((i == j).all())
        True
    """

    def __init__(self, plan: torch.Tensor) -> None:
        if not isinstance(plan, torch.Tensor) or plan.dim() != 2:
            raise ValueError(f"PlanSampler expected a 2-d plan tensor, got {plan!r:.60}")
        if bool((plan < 0).any()) or not float(plan.sum()) > 0:
            raise ValueError("PlanSampler expected a nonnegative plan with positive mass")
        self.rows, self.cols = torch.nonzero(plan > 1e-9 * plan.max(), as_tuple=True)
        self.weights = plan[self.rows, self.cols].to(torch.float64)
        self.shape = tuple(plan.shape)

    @classmethod
    def from_support(
        cls, rows: torch.Tensor, cols: torch.Tensor, weights: torch.Tensor, shape: tuple
    ) -> PlanSampler:
        """Rebuild a sampler from stored support ``(rows, cols, weights)`` (e.g. a checkpoint)."""
        sampler = cls.__new__(cls)
        sampler.rows, sampler.cols, sampler.weights = rows, cols, weights.to(torch.float64)
        sampler.shape = tuple(shape)
        return sampler

    @property
    def is_permutation(self) -> bool:
        """Whether the plan is a scaled permutation matrix (one entry in every row/column)."""
        n, m = self.shape
        return (
            n == m
            and self.rows.numel() == n
            and bool((torch.bincount(self.rows, minlength=n) == 1).all())
            and bool((torch.bincount(self.cols, minlength=m) == 1).all())
        )

    def sample(
        self, num: int, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``num`` pairs ``(i, j)`` (with replacement) with probability ``plan[i, j]``.

        Returns:
            ``(i, j)``: long tensors of shape ``(num,)``.
        """
        pick = torch.multinomial(self.weights, num, replacement=True, generator=generator)
        return self.rows[pick], self.cols[pick]


def block_plan_sampler(
    y0: torch.Tensor,
    u0: torch.Tensor,
    y1: torch.Tensor,
    u1: torch.Tensor,
    *,
    eps: float,
    block_size: int,
    generator: torch.Generator | None = None,
) -> PlanSampler:
    """Exact COT plans on random blocks of at most ``block_size`` pairs, as one sampler.

    A full plan on ``n`` pairs needs ``O(n^2)`` memory (about 16 GB at ``n = 20,000``). Here the
    target pairs are split at random into ``k = ceil(max(n, m) / block_size)`` blocks, the source
    pairs likewise (by the same permutation when ``n == m``), and each block gets its exact
    :func:`cot_plan`: minibatch OT with very large, fixed minibatches (Kerrigan et al. 2024 used
    minibatch
    plans where a full plan did not fit). Block ``b`` carries mass ``|T_b| / m``, so every target
    pair keeps weight ``1 / m``. POT has no such blocked solver, hence this function.

    Args:
        y0, u0: source data and noise, shapes ``(n, dim_y)``, ``(n, dim_u)``.
        y1, u1: target data and parameters, shapes ``(m, dim_y)``, ``(m, dim_u)``.
        eps: weight of the ``u`` cost, ``> 0``.
        block_size: largest block, ``>= 1``.
        generator: seeded generator for the random split.

    Returns:
        A :class:`PlanSampler` over index pairs of the whole sets (shape ``(n, m)``).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y, u = torch.randn(8, 1, generator=g), torch.randn(8, 1, generator=g)
        >>> sampler = block_plan_sampler(y, u, y, u, eps=1e-3, block_size=4, generator=g)
        >>> sampler.rows.numel(), round(float(sampler.weights.sum()), 6)
        (8, 1.0)
    """
    n, m = y0.shape[0], y1.shape[0]
    blocks = -(-max(n, m) // block_size)
    target_perm = torch.randperm(m, generator=generator)
    source_perm = target_perm if n == m else torch.randperm(n, generator=generator)
    rows, cols, weights = [], [], []
    for src, tgt in zip(
        source_perm.tensor_split(blocks), target_perm.tensor_split(blocks), strict=True
    ):
        part = PlanSampler(cot_plan(y0[src], u0[src], y1[tgt], u1[tgt], eps=eps))
        rows.append(src[part.rows])
        cols.append(tgt[part.cols])
        weights.append(part.weights / part.weights.sum() * (tgt.numel() / m))
    return PlanSampler.from_support(
        torch.cat(rows), torch.cat(cols), torch.cat(weights), (n, m)
    )


def sample_pairs(
    plan: torch.Tensor, num: int, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``num`` index pairs ``(i, j)`` with probability ``plan[i, j] / plan.sum()``.

    For repeated draws from one plan build a :class:`PlanSampler` once instead.

    Args:
        plan: nonnegative matrix of shape ``(n, m)``.
        num: number of pairs (with replacement).
        generator: optional seeded generator; the same seed gives the same pairs.

    Returns:
        ``(i, j)``: long tensors of shape ``(num,)`` (source rows, target columns).

    Example:
        >>> plan = torch.eye(3) / 3
        >>> i, j = sample_pairs(plan, 5, generator=torch.Generator().manual_seed(0))
        >>> bool((i == j).all())
        True
    """
    return PlanSampler(plan).sample(num, generator=generator)


def match_pairs(
    plan: torch.Tensor, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return every pair of a square OT plan once, or ``n`` draws if it is not a permutation.

    Used for minibatch couplings: a ``1/n``-permutation plan of a batch gives exactly ``n``
    pairs, in source order; a plan with split mass (ties) falls back to :func:`sample_pairs`.

    Args:
        plan: nonnegative matrix of shape ``(n, n)``.
        generator: optional seeded generator for the fallback.

    Returns:
        ``(i, j)``: long tensors of shape ``(n,)``.

    Example:
        >>> plan = torch.tensor([[0.0, 0.5], [0.5, 0.0]])
        >>> match_pairs(plan)
        (tensor([0, 1]), tensor([1, 0]))
    """
    sampler = PlanSampler(plan)
    if sampler.is_permutation:
        return sampler.rows, sampler.cols
    return sampler.sample(plan.shape[0], generator=generator)
