"""Conditional optimal-transport couplings between source and target pairs (paper 004, sec. 6).

The source keeps the data ``y`` of each pair and replaces the parameters ``u`` by noise; the
coupling is an exact OT plan (POT's ``ot.emd``, called on torch tensors) for the cost

    c((y0, u0), (y1, u1)) = |y1 - y0|^2 + eps |u1 - u0|^2,    0 < eps << 1

(MATH.md section 4). As ``eps -> 0`` the plan moves mass only between (nearly) equal ``y`` and,
among those, solves the OT problem in ``u``: its limit is the Knothe-Rosenblatt coupling.
"""

from __future__ import annotations

import torch

__all__ = ["PlanSampler", "cot_cost_matrix", "cot_plan", "match_pairs", "sample_pairs"]


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
    cost_y = torch.cdist(y0, y1).square()
    cost_u = torch.cdist(u0, u1).square()
    return cost_y + eps * cost_u


def cot_plan(
    y0: torch.Tensor,
    u0: torch.Tensor,
    y1: torch.Tensor,
    u1: torch.Tensor,
    *,
    eps: float,
    num_iter_max: int = 1_000_000,
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
        num_iter_max: iteration cap of the network simplex.

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

    cost = cot_cost_matrix(y0, u0, y1, u1, eps=eps).detach().to(torch.float64)
    n, m = cost.shape
    a = torch.full((n,), 1.0 / n, dtype=torch.float64, device=cost.device)
    b = torch.full((m,), 1.0 / m, dtype=torch.float64, device=cost.device)
    plan = ot.emd(a, b, cost, numItermax=num_iter_max)
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
