"""COT couplings: cost matrix, exact plans via POT, seeded pair sampling."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("ot")

from pyro_kr.flow_matching.couplings import (  # noqa: E402
    PlanSampler,
    block_plan_sampler,
    cot_cost_matrix,
    cot_plan,
    match_pairs,
    sample_pairs,
)


def test_cost_matrix_by_hand():
    y0 = torch.tensor([[0.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    u0 = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    y1 = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]], dtype=torch.float64)
    u1 = torch.tensor([[0.0], [3.0], [-1.0]], dtype=torch.float64)
    eps = 0.1
    # |y1_j - y0_i|^2 + eps |u1_j - u0_i|^2, written out entry by entry
    expected = torch.tensor(
        [
            [1.0 + 0.1 * 1.0, 1.0 + 0.1 * 4.0, 5.0 + 0.1 * 4.0],
            [4.0 + 0.1 * 1.0, 2.0 + 0.1 * 16.0, 4.0 + 0.1 * 0.0],
        ],
        dtype=torch.float64,
    )
    cost = cot_cost_matrix(y0, u0, y1, u1, eps=eps)
    assert cost.shape == (2, 3)
    assert torch.allclose(cost, expected, atol=1e-12)


def test_plan_matches_identical_y_as_eps_vanishes():
    gen = torch.Generator().manual_seed(0)
    n = 60
    y1 = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    perm = torch.randperm(n, generator=gen)
    y0 = y1[perm]  # the same (distinct) y values, in another order
    u0 = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    u1 = 5 * torch.randn(n, 3, generator=gen, dtype=torch.float64)
    plan = cot_plan(y0, u0, y1, u1, eps=1e-8)
    rows, cols = torch.nonzero(plan > 1e-12, as_tuple=True)
    assert rows.numel() == n
    assert torch.equal(cols[torch.argsort(rows)], perm)  # row i -> the column with equal y
    assert torch.allclose(plan.sum(0), torch.full((n,), 1.0 / n, dtype=torch.float64))
    assert torch.allclose(plan.sum(1), torch.full((n,), 1.0 / n, dtype=torch.float64))


def test_plan_with_equal_y_is_monotone_in_u():
    # one shared y: the COT plan is the 1-d OT plan in u, i.e. the sorted (monotone) matching
    gen = torch.Generator().manual_seed(1)
    n = 40
    y = torch.zeros(n, 1, dtype=torch.float64)
    u0 = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    u1 = torch.randn(n, 1, generator=gen, dtype=torch.float64) * 2 + 1
    rows, cols = match_pairs(cot_plan(y, u0, y, u1, eps=1e-2))
    order = torch.argsort(u0[rows, 0])
    assert bool((torch.diff(u1[cols, 0][order]) > 0).all())


def test_seeded_pair_sampling_is_reproducible():
    gen = torch.Generator().manual_seed(2)
    plan = torch.rand(7, 9, generator=gen, dtype=torch.float64)
    plan[plan < 0.5] = 0.0
    i1, j1 = sample_pairs(plan, 200, generator=torch.Generator().manual_seed(5))
    i2, j2 = sample_pairs(plan, 200, generator=torch.Generator().manual_seed(5))
    i3, _ = sample_pairs(plan, 200, generator=torch.Generator().manual_seed(6))
    assert torch.equal(i1, i2) and torch.equal(j1, j2)
    assert not torch.equal(i1, i3)
    assert bool((plan[i1, j1] > 0).all())  # only pairs in the support


def test_plan_sampler_frequencies_follow_the_plan():
    plan = torch.tensor([[0.5, 0.0], [0.1, 0.4]], dtype=torch.float64)
    sampler = PlanSampler(plan)
    assert not sampler.is_permutation
    i, j = sampler.sample(20_000, generator=torch.Generator().manual_seed(0))
    freq = torch.zeros(2, 2, dtype=torch.float64)
    freq.index_put_((i, j), torch.ones_like(i, dtype=torch.float64), accumulate=True)
    assert torch.allclose(freq / 20_000, plan, atol=0.015)


def test_match_pairs_returns_each_row_once_for_a_permutation():
    plan = torch.eye(5, dtype=torch.float64)[[3, 0, 4, 1, 2]] / 5
    rows, cols = match_pairs(plan)
    assert torch.equal(rows, torch.arange(5))
    assert torch.equal(cols, torch.tensor([3, 0, 4, 1, 2]))


@pytest.mark.parametrize("eps", [0.0, -1.0])
def test_nonpositive_eps_raises(eps):
    x = torch.zeros(3, 1)
    with pytest.raises(ValueError, match="eps must be > 0"):
        cot_cost_matrix(x, x, x, x, eps=eps)


def test_bad_inputs_raise():
    x = torch.zeros(3, 1)
    bad = x.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        cot_plan(bad, x, x, x, eps=0.1)
    with pytest.raises(ValueError, match="same number of rows"):
        cot_plan(x, torch.zeros(4, 1), x, x, eps=0.1)
    with pytest.raises(ValueError, match="equal dims"):
        cot_plan(x, x, torch.zeros(3, 2), x, eps=0.1)
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        cot_plan(torch.zeros(3), x, x, x, eps=0.1)
    with pytest.raises(TypeError, match="eps must be a float"):
        cot_cost_matrix(x, x, x, x, eps="0.1")


def test_plan_that_hits_the_iteration_cap_raises_instead_of_returning():
    gen = torch.Generator().manual_seed(0)
    y, u0, u1 = (torch.randn(40, 1, generator=gen, dtype=torch.float64) for _ in range(3))
    with pytest.raises(RuntimeError, match="did not find the optimal plan for 40 x 40"):
        cot_plan(y, u0, y.flip(0), u1, eps=0.1, num_iter_max=3)
    assert cot_plan(y, u0, y.flip(0), u1, eps=0.1).sum() == pytest.approx(1.0)


def test_cost_matrix_keeps_gradients_when_inputs_require_them():
    gen = torch.Generator().manual_seed(0)
    y0, u0, y1, u1 = (torch.randn(5, 2, generator=gen, dtype=torch.float64) for _ in range(4))
    y0.requires_grad_(True)
    no_grad = cot_cost_matrix(y0.detach(), u0, y1, u1, eps=0.3)  # the in-place path
    cost = cot_cost_matrix(y0, u0, y1, u1, eps=0.3)
    assert torch.allclose(cost, no_grad, atol=1e-12)
    (grad,) = torch.autograd.grad(cost.sum(), y0)
    assert torch.allclose(grad, 2 * (5 * y0 - y1.sum(0)).detach(), atol=1e-10)


def test_block_plans_keep_target_marginal_and_call_one_plan_per_block(monkeypatch):
    import pyro_kr.flow_matching.couplings as couplings

    sizes = []
    real_plan = couplings.cot_plan

    def counting_plan(y0, u0, y1, u1, **kwargs):
        sizes.append((y0.shape[0], y1.shape[0]))
        return real_plan(y0, u0, y1, u1, **kwargs)

    monkeypatch.setattr(couplings, "cot_plan", counting_plan)
    gen = torch.Generator().manual_seed(0)
    y0, u0 = torch.randn(50, 2, generator=gen), torch.randn(50, 1, generator=gen)
    y1, u1 = torch.randn(70, 2, generator=gen), torch.randn(70, 1, generator=gen)
    sampler = block_plan_sampler(y0, u0, y1, u1, eps=0.1, block_size=20,
                                 generator=torch.Generator().manual_seed(1))
    assert len(sizes) == 4 and all(max(a, b) <= 20 for a, b in sizes)
    assert sum(a for a, _ in sizes) == 50 and sum(b for _, b in sizes) == 70
    assert sampler.shape == (50, 70)
    col_mass = torch.zeros(70, dtype=torch.float64).index_add_(0, sampler.cols, sampler.weights)
    assert torch.allclose(col_mass, torch.full((70,), 1 / 70, dtype=torch.float64))
    row_mass = torch.zeros(50, dtype=torch.float64).index_add_(0, sampler.rows, sampler.weights)
    assert bool((row_mass > 0).all())  # every source pair is used


def test_block_plans_on_identical_sets_pair_every_point_with_itself():
    gen = torch.Generator().manual_seed(0)
    y, u0, u1 = torch.randn(40, 1, generator=gen), torch.randn(40, 1), torch.randn(40, 1)
    sampler = block_plan_sampler(y, u0, y, u1, eps=1e-6, block_size=16,
                                 generator=torch.Generator().manual_seed(2))
    assert sampler.is_permutation
    assert torch.equal(sampler.rows, sampler.cols)
