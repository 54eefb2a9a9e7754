"""Registry, simulators, observations, exact posteriors and solvers of pyro_kr.bench.problems."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch

import pyro_kr.bench.problems as problems

LIKELIHOOD = ["linear_gaussian", "banana", "funnel", "eight_schools", "lotka_volterra"]
LIKELIHOOD += ["elliptic_1d", "darcy_2d"]
JOINT2D = ["checkerboard", "moons", "circles", "swissroll"]


def test_names_and_unknown_name():
    names = problems.names()
    for name in LIKELIHOOD + JOINT2D:
        assert name in names
    with pytest.raises(ValueError, match="valid names: .*lotka_volterra"):
        problems.get("lotka")
    with pytest.raises(TypeError):
        problems.get(3)


@pytest.mark.parametrize("name", LIKELIHOOD, ids=LIKELIHOOD)
def test_simulate_shapes_and_seeding(name):
    p = problems.get(name)
    u, y = p.simulate(6, seed=3)
    assert list(u) == p.param_names
    for k, shape in p.param_shapes.items():
        assert tuple(u[k].shape) == (6, *shape)
        assert u[k].dtype == torch.float64
    assert tuple(y.shape) == (6, *p.y_shape)
    u2, y2 = p.simulate(6, seed=3)
    u3, _ = p.simulate(6, seed=4)
    for k in u:
        assert torch.equal(u[k], u2[k])
        assert not torch.equal(u[k], u3[k])
    assert torch.equal(y, y2)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", LIKELIHOOD, ids=LIKELIHOOD)
def test_model_sites_and_log_joint(name):
    p = problems.get(name)
    y = p.observation(0)
    assert tuple(y.shape) == p.y_shape and y.dtype == torch.float64
    u, _ = p.simulate(3, seed=0)
    for i in range(3):
        ui = {k: v[i] for k, v in u.items()}
        tr = pyro.poutine.trace(pyro.poutine.condition(p.model, data=ui)).get_trace(y)
        sites = [n for n, s in tr.nodes.items() if s["type"] == "sample"]
        assert sites[: len(p.param_names)] == p.param_names
        expected = p.log_joint(ui, y)
        assert torch.allclose(tr.log_prob_sum(), expected, rtol=1e-12, atol=1e-9)
    # y=None simulates a draw of the observation's shape
    tr = pyro.poutine.trace(p.model).get_trace()
    assert set(p.param_names) <= {n for n in tr.stochastic_nodes}
    if p.y_shape != (0,):
        assert tuple(tr.nodes["y"]["value"].shape) == p.y_shape


@pytest.mark.parametrize("name", LIKELIHOOD, ids=LIKELIHOOD)
def test_kr_order_is_none_or_a_permutation_of_the_sites(name):
    p = problems.get(name)
    assert p.kr_order is None or sorted(p.kr_order) == sorted(p.param_names)


def test_observation_index_errors():
    p = problems.get("banana")
    with pytest.raises(ValueError, match="observations 0..0"):
        p.observation(1)
    with pytest.raises(TypeError):
        p.observation("0")
    with pytest.raises(ValueError, match="expected y of shape"):
        pyro.poutine.trace(p.model).get_trace(torch.zeros(3, dtype=torch.float64))


def test_linear_gaussian_exact_posterior_and_reference():
    p = problems.get("linear_gaussian")
    a = p.forward_matrix
    s = torch.linalg.svdvals(a)
    assert a.shape == (15, 10)
    assert math.isclose(float(s[0]), 10.0, rel_tol=1e-10)
    assert math.isclose(float(s[-1]), 0.01, rel_tol=1e-8)
    y = p.observation(2)
    mean, cov = p.exact_posterior(y)
    # the posterior density is Gaussian: the log joint minus the Gaussian log density is constant
    post = torch.distributions.MultivariateNormal(mean, cov)
    u, _ = p.simulate(5, seed=1)
    diff = p.log_joint(u, y) - post.log_prob(u["theta"])
    assert float(diff.std()) < 1e-8 * float(diff.abs().mean())
    ref = p.reference(2, num_samples=20_000, seed=0)["theta"]
    assert ref.shape == (20_000, 10)
    sd = np.sqrt(np.diag(cov.numpy()))
    assert np.all(np.abs(ref.mean(0) - mean.numpy()) < 5 * sd / math.sqrt(20_000))
    again = p.reference(2, num_samples=100, seed=0)["theta"]
    np.testing.assert_array_equal(again, p.reference(2, num_samples=100, seed=0)["theta"])
    assert not np.array_equal(again, p.reference(2, num_samples=100, seed=1)["theta"])


def test_funnel_reference_is_exact_prior():
    p = problems.get("funnel")
    ref = p.reference(0, num_samples=20_000)
    assert ref["v"].shape == (20_000,) and ref["x"].shape == (20_000, 9)
    assert abs(ref["v"].std() - 3.0) < 0.1
    # x_i | v has variance exp(v): standardized x is N(0, 1)
    z = ref["x"] / np.exp(ref["v"] / 2)[:, None]
    assert abs(z.std() - 1.0) < 0.02


def test_eight_schools_data():
    p = problems.get("eight_schools")
    assert p.observation(0).tolist() == [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
    assert p.sigma.tolist() == [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]


def test_joint2d_tasks():
    pytest.importorskip("pyro_kr.bench.problems.joint2d")
    for name in JOINT2D:
        p = problems.get(name)
        assert p.has_likelihood is False
        assert p.param_names == ["u"]
        u, y = p.simulate(50, seed=0)
        assert u["u"].shape == (50, 1) and y.shape == (50, 1)
        u2, _ = p.simulate(50, seed=0)
        assert torch.equal(u["u"], u2["u"])
        ref = p.reference(0, num_samples=100)
        assert ref["u"].shape == (100, 1)
        with pytest.raises(NotImplementedError, match="no PyMC twin"):
            p.pymc_model(y[0])
        with pytest.raises(NotImplementedError, match="no likelihood"):
            p.model()
