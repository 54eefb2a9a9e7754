"""The weighted cost ``c_eps``, the reference draws it is evaluated on, and the theorem it
serves (docs/objective.md): annealing ``(eps, lam)`` turns a dense linear map into the KR map.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoIAFNormal, AutoNormal

from pyro_kr import Annealing, AutoKR
from pyro_kr.objective import reference_pairs, weighted_cost

DT = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- c_eps ------------------------------------------------------------------------------------
def test_weighted_cost_matches_the_formula():
    x = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]], dtype=DT)
    y = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=DT)
    eps = 0.3
    expected = torch.stack(
        [sum(eps**i * (x[n, i] - y[n, i]) ** 2 for i in range(3)) for n in range(2)]
    )
    out = weighted_cost(x, y, eps)
    assert out.shape == (2,)
    torch.testing.assert_close(out, expected)


def test_weighted_cost_at_eps_one_is_the_squared_distance():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 4, generator=gen, dtype=DT), torch.randn(5, 4, generator=gen, dtype=DT)
    torch.testing.assert_close(weighted_cost(x, y, 1.0), ((x - y) ** 2).sum(-1))


def test_weighted_cost_broadcasts_batch_shapes_and_keeps_gradients():
    x = torch.zeros(2, 3, 4, dtype=DT)
    y = torch.ones(4, dtype=DT, requires_grad=True)
    out = weighted_cost(x, y, 0.5)
    assert out.shape == (2, 3)
    out.sum().backward()
    torch.testing.assert_close(y.grad, 6 * 2 * 0.5 ** torch.arange(4, dtype=DT))


@pytest.mark.parametrize("eps", [0.0, -0.1, 1.5, math.nan])
def test_weighted_cost_rejects_eps_outside_unit_interval(eps):
    with pytest.raises(ValueError, match=r"eps must lie in \(0, 1\]"):
        weighted_cost(torch.zeros(2), torch.zeros(2), eps)


# -- reference_pairs ----------------------------------------------------------------------------
def _model():
    pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=DT), 1.0))
    pyro.sample("b", dist.Normal(torch.zeros(2, dtype=DT), 1.0).to_event(1))


def test_reference_pairs_recover_the_reference_draw_of_autokr():
    guide = AutoKR(_model)
    trace = poutine.trace(guide).get_trace()
    pairs = reference_pairs(trace)
    assert len(pairs) == 1
    name, x, z = pairs[0]
    assert x.shape == z.shape == (3,)
    assert not x.requires_grad and z.requires_grad
    torch.testing.assert_close(guide.get_transform()(x), z)
    packed = torch.cat([trace.nodes["a"]["value"].reshape(1), trace.nodes["b"]["value"]])
    torch.testing.assert_close(z.detach(), packed)


def test_reference_pairs_work_for_pyro_flows():
    guide = AutoIAFNormal(_model, num_transforms=1)
    trace = poutine.trace(guide).get_trace()
    ((_, x, z),) = reference_pairs(trace)
    assert x.shape == z.shape == (3,)
    assert not torch.equal(x, z.detach())


def test_reference_pairs_error_names_the_sites_and_the_fix():
    guide = AutoNormal(_model)
    trace = poutine.trace(guide).get_trace()
    with pytest.raises(ValueError, match="standard normal reference draw") as info:
        reference_pairs(trace)
    assert "'a'" in str(info.value) and "pyro_kr.AutoKR" in str(info.value)


# -- docs/objective.md, on a Gaussian target with a dense linear map ---------------------------
D = 4


def _target() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(D, D, generator=gen, dtype=DT)
    cov = a @ a.T / D + 0.5 * torch.eye(D, dtype=DT)
    return torch.randn(D, generator=gen, dtype=DT), cov


def _objective(M, b, mean, cov, eps, lam):
    """``lam * KL(T#N(0,I) || N(mean, cov)) + E[c_eps(x, T(x))]`` for ``T(x) = b + M x``.

    Both terms are quadratic in ``x`` plus constants, so the ``2d`` points ``+-sqrt(d) e_i``
    (equal weights; exact first and second moments of ``N(0, I)``) give the exact expectation:
    the paper's per-draw loss, averaged over an exact cubature instead of random draws.
    """
    x = math.sqrt(D) * torch.cat([torch.eye(D, dtype=DT), -torch.eye(D, dtype=DT)])
    y = b + x @ M.T
    log_ref = torch.distributions.Normal(torch.zeros(D, dtype=DT), 1.0).log_prob(x).sum(-1)
    log_target = torch.distributions.MultivariateNormal(mean, cov).log_prob(y)
    kl = (log_ref - torch.linalg.slogdet(M)[1] - log_target).mean()
    return lam * kl + weighted_cost(x, y, eps).mean()


def _continuation(schedule: Annealing, mean, cov) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve every ``(eps, lam)`` of the schedule in turn, warm-started from the last."""
    M = torch.eye(D, dtype=DT, requires_grad=True)  # dense: every entry is free
    b = torch.zeros(D, dtype=DT, requires_grad=True)
    for _ in range(schedule.steps + 1):
        eps, lam = schedule.eps, schedule.lam
        opt = torch.optim.LBFGS(
            [M, b], max_iter=200, history_size=20, line_search_fn="strong_wolfe",
            tolerance_grad=1e-14, tolerance_change=1e-16,
        )

        def closure(eps=eps, lam=lam, opt=opt):
            opt.zero_grad()
            loss = _objective(M, b, mean, cov, eps, lam)
            loss.backward()
            return loss

        opt.step(closure)
        schedule.step()
    return M.detach(), b.detach()


def test_cubature_objective_matches_monte_carlo():
    mean, cov = _target()
    gen = torch.Generator().manual_seed(1)
    M = torch.eye(D, dtype=DT) + 0.3 * torch.randn(D, D, generator=gen, dtype=DT)
    b = torch.randn(D, generator=gen, dtype=DT)
    x = torch.randn(200_000, D, generator=gen, dtype=DT)
    y = b + x @ M.T
    kl = (
        torch.distributions.Normal(torch.zeros(D, dtype=DT), 1.0).log_prob(x).sum(-1)
        - torch.linalg.slogdet(M)[1]
        - torch.distributions.MultivariateNormal(mean, cov).log_prob(y)
    )
    mc = (3.0 * kl + weighted_cost(x, y, 0.2)).mean()
    assert _objective(M, b, mean, cov, 0.2, 3.0).item() == pytest.approx(mc.item(), rel=1e-2)


def test_annealed_dense_map_becomes_the_cholesky_factor():
    """eps -> 0, lam -> inf along a schedule: the dense map ends lower-triangular (KR)."""
    mean, cov = _target()
    M, b = _continuation(Annealing(eps=(1.0, 1e-3), lam=(1.0, 1e4), steps=30), mean, cov)
    assert M.triu(1).abs().max() < 0.05
    assert (M - torch.linalg.cholesky(cov)).abs().max() < 0.05
    assert (b - mean).abs().max() < 0.01


def test_eps_one_and_large_lam_give_the_brenier_map():
    """eps = 1: the cost is |x - T(x)|^2 and the minimiser is m + S^(1/2) x (symmetric)."""
    mean, cov = _target()
    M, b = _continuation(Annealing(eps=1.0, lam=1e4, steps=0), mean, cov)
    evals, evecs = torch.linalg.eigh(cov)
    sqrt_cov = evecs @ torch.diag(evals.sqrt()) @ evecs.T
    assert (M - sqrt_cov).abs().max() < 0.01
    assert (M - M.T).abs().max() < 0.01
    # and it is far from the triangular KR map: the two limits differ
    assert (M - torch.linalg.cholesky(cov)).abs().max() > 0.2


def test_final_eps_and_lam_from_scratch_is_not_triangular():
    """The numerical fact in docs/objective.md: the schedule, not just its end, matters."""
    mean, cov = _target()
    M, _ = _continuation(Annealing(eps=1e-3, lam=1e4, steps=0), mean, cov)
    assert M.triu(1).abs().max() > 0.1
