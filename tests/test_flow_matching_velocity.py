"""Velocity models and the RK4 / exact-divergence ODE helpers of pyro_kr.flow_matching."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pyro_kr.flow_matching.ode import divergence, flow_log_prob, rk4_flow
from pyro_kr.flow_matching.velocity import TriangularVelocity, VelocityMLP, call_velocity

FAMILIES = {"mlp": VelocityMLP, "triangular": TriangularVelocity}


class Linear(nn.Module):
    """v(t, y, u) = A u + b y: flow map u1 = expm(A) u0 + ... (closed forms below)."""

    def __init__(self, a: torch.Tensor, b: float = 0.0):
        super().__init__()
        self.a, self.b = a, b

    def forward(self, t, y, u):
        return u @ self.a.T + self.b * y


@pytest.mark.parametrize("name", sorted(FAMILIES), ids=sorted(FAMILIES))
def test_shapes_and_broadcasting(name):
    v = FAMILIES[name](3, 2, width=16, depth=2).double()
    u = torch.randn(5, 4, 3, dtype=torch.float64)
    y = torch.randn(4, 2, dtype=torch.float64)  # broadcast over the leading 5
    out = call_velocity(v, 0.3, y, u)
    assert out.shape == (5, 4, 3)
    manual = v(torch.full((5, 4, 1), 0.3, dtype=torch.float64), y.expand(5, 4, 2), u)
    assert torch.allclose(out, manual)


@pytest.mark.parametrize("name", sorted(FAMILIES), ids=sorted(FAMILIES))
def test_gradients_reach_every_parameter(name):
    v = FAMILIES[name](3, 2, width=16, depth=2).double()
    out = call_velocity(v, 0.5, torch.randn(7, 2, dtype=torch.float64),
                        torch.randn(7, 3, dtype=torch.float64))
    out.square().sum().backward()
    for pname, p in v.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), pname


def test_triangular_jacobian_is_lower_triangular_with_diagonal():
    torch.manual_seed(0)
    d = 4
    v = TriangularVelocity(d, 2, width=32, depth=2).double()
    y = torch.randn(2, dtype=torch.float64)
    for t in (0.1, 0.7):
        u = torch.randn(d, dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(
            lambda x, t=t: call_velocity(v, t, y, x.unsqueeze(0)).squeeze(0), u
        )
        assert jac.shape == (d, d)
        assert torch.equal(torch.triu(jac, diagonal=1), torch.zeros(d, d, dtype=torch.float64))
        assert bool((jac.diagonal().abs() > 1e-8).all())  # component k depends on u_k itself
        assert bool(torch.tril(jac, diagonal=-1).abs().sum() > 0)


def test_mlp_jacobian_is_dense():
    torch.manual_seed(0)
    v = VelocityMLP(3, 1, width=16, depth=2).double()
    u = torch.randn(3, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(
        lambda x: call_velocity(v, 0.5, torch.zeros(1, dtype=torch.float64), x), u
    )
    assert bool(torch.triu(jac, diagonal=1).abs().sum() > 0)


def test_rk4_matches_matrix_exponential():
    a = torch.tensor([[-0.5, 0.0], [0.8, 0.3]], dtype=torch.float64)
    u0 = torch.randn(6, 2, dtype=torch.float64)
    u1 = rk4_flow(Linear(a), u0, torch.zeros(1, dtype=torch.float64), steps=40)
    assert torch.allclose(u1, u0 @ torch.linalg.matrix_exp(a).T, atol=1e-8)
    back = rk4_flow(Linear(a), u1, torch.zeros(1, dtype=torch.float64), steps=40, t0=1.0, t1=0.0)
    assert torch.allclose(back, u0, atol=1e-8)


def test_divergence_is_the_trace():
    a = torch.tensor([[-0.5, 2.0], [0.8, 0.3]], dtype=torch.float64)
    u = torch.randn(3, 2, dtype=torch.float64)
    v, div = divergence(Linear(a), 0.2, torch.zeros(1, dtype=torch.float64), u)
    assert torch.allclose(v, u @ a.T)
    assert torch.allclose(div, torch.full((3,), -0.2, dtype=torch.float64))


def test_flow_log_prob_matches_the_pushforward_gaussian():
    # u1 = expm(A) u0 + c y-term; for b = 0, u1 ~ N(0, M M^T) with M = expm(A)
    a = torch.tensor([[0.4, 0.0], [0.6, -0.3]], dtype=torch.float64)
    m = torch.linalg.matrix_exp(a)
    exact = torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64),
                                                   scale_tril=m)
    u1 = torch.randn(10, 2, dtype=torch.float64)
    lp = flow_log_prob(Linear(a), u1, torch.zeros(1, dtype=torch.float64), steps=30)
    assert torch.allclose(lp, exact.log_prob(u1), atol=1e-7)


def test_flow_log_prob_of_zero_field_is_standard_normal():
    u = torch.randn(4, 3, dtype=torch.float64)
    lp = flow_log_prob(Linear(torch.zeros(3, 3, dtype=torch.float64)), u,
                       torch.zeros(1, dtype=torch.float64), steps=3)
    expected = -0.5 * u.square().sum(-1) - 1.5 * math.log(2 * math.pi)
    assert torch.allclose(lp, expected)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="dim_u must be >= 1"):
        VelocityMLP(0, 1)
    with pytest.raises(TypeError, match="dim_y must be an int"):
        VelocityMLP(1, 1.0)
    with pytest.raises(ValueError, match="width must be >= 4"):
        TriangularVelocity(3, 1, width=2)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        rk4_flow(VelocityMLP(1, 1), torch.zeros(1, 1), torch.zeros(1), steps=0)
