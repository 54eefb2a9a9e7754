"""benchmarks/peer_posteriors.py: sbi's and COT-FM's posteriors as AmortizedPosterior.

Checked without sbi: a stand-in for sbi's ``DirectPosterior`` (the two methods the adapter
calls, float32 like sbi) returns the exact posterior of a linear-Gaussian model in
``theta = log u``, ``x = log y``; SBC and coverage through the adapter must then find it
calibrated, and its draws and densities must be those of the closed form. The COT-FM adapter
must pass a small fitted sample-mode ``COTFlowMatching`` through unchanged, under the model's
site names.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from _scripts import load_benchmark

from pyro_kr import AmortizedPosterior, COTFlowMatching
from pyro_kr.diagnostics import coverage, sbc

A = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])  # x = A theta + N(0, I)
NAMES = ["a", "b"]


def model(y=None):
    a = pyro.sample("a", dist.LogNormal(0.0, 1.0))
    b = pyro.sample("b", dist.LogNormal(0.0, 1.0))
    loc = torch.stack([a.log(), b.log()], -1) @ A.T.to(a)
    return pyro.sample("y", dist.LogNormal(loc, 1.0).to_event(1), obs=y)


class ExactPosterior:
    """The exact ``q(theta | x)``: ``N(S A^T x, S)``, ``S = (I + A^T A)^-1`` (sbi's calls)."""

    def __init__(self):
        self.cov = torch.linalg.inv(torch.eye(2) + A.T @ A)

    def _dist(self, x):
        return dist.MultivariateNormal(x @ (self.cov @ A.T).T, self.cov)

    def sample_batched(self, sample_shape, x, show_progress_bars=True):
        assert x.dtype == torch.float32 and x.ndim == 2
        return self._dist(x).sample(sample_shape)

    def log_prob_batched(self, theta, x):
        assert theta.dtype == x.dtype == torch.float32 and theta.shape[-2] == x.shape[0]
        return self._dist(x).log_prob(theta)


def _adapter():
    module = load_benchmark("peer_posteriors.py", "peer_posteriors_bench")
    return module.SbiPosterior(ExactPosterior(), NAMES, "y", (3,))


def test_adapter_implements_the_protocol_with_exact_draws_and_densities():
    post = _adapter()
    assert isinstance(post, AmortizedPosterior) and post.observed == ["y"]
    y = torch.tensor([[0.5, 2.0, 1.5], [3.0, 0.2, 1.0]], dtype=torch.float64)
    batched = post.posterior(y)
    assert batched.batch_shape == (2,) and batched.event_shape == (2,)
    torch.manual_seed(0)
    draws = batched.sample((4000,))
    assert draws.shape == (4000, 2, 2) and draws.dtype == torch.float64
    exact = ExactPosterior()._dist(y.log().float())
    assert torch.allclose(draws.mean(0).float(), exact.mean, atol=0.05)
    assert torch.allclose(batched.log_prob(draws[:3]).float(), exact.log_prob(draws[:3].float()))
    one = post.posterior(y[1])  # one observation: batch ()
    assert one.batch_shape == () and one.sample((5,)).shape == (5, 2)
    assert torch.allclose(one.log_prob(draws[:3, 1]), batched.log_prob(draws[:3])[:, 1])
    values = post.sample(y, 7)
    assert set(values) == {"a", "b"} and values["a"].shape == (7, 2) and (values["a"] > 0).all()
    assert torch.allclose(post.pack(post.unpack(draws[0])), draws[0])
    assert list(post.site_slices()) == NAMES and post.sampler() is post


def test_sbc_and_coverage_find_the_exact_posterior_calibrated():
    post = _adapter()
    s = sbc(post, model, num_datasets=200, num_draws=50, seed=3)
    assert s.names == NAMES and s.ranks.shape == (200, 2) and s.rejected == []
    c = coverage(post, model, num_datasets=200, num_draws=200, seed=4)
    levels = [round(float(a), 2) for a in c.levels]
    for level in (0.5, 0.9):  # 4 sd of a binomial proportion on 200 datasets
        tol = 4 * (level * (1 - level) / 200) ** 0.5
        assert abs(c.joint[levels.index(level)] - level) < tol
        assert (abs(c.marginal[levels.index(level)] - level) < tol).all()


def test_wrong_observation_shape_and_nonpositive_y_are_clear_errors():
    post = _adapter()
    with pytest.raises(ValueError, match=r"y must have shape \(3,\)"):
        post.posterior(torch.ones(2, 4))
    with pytest.raises(ValueError, match="every observation must be > 0"):
        post.posterior(torch.tensor([1.0, -1.0, 2.0]))


def _cot_adapter():
    """A small sample-mode COT-FM on ``(log u, y)`` pairs of the model, wrapped."""
    module = load_benchmark("peer_posteriors.py", "peer_posteriors_bench")
    pyro.set_rng_seed(0)
    pairs = [pyro.poutine.trace(model).get_trace() for _ in range(300)]
    log_u = torch.stack([torch.stack([t.nodes[k]["value"] for k in NAMES]) for t in pairs]).log()
    y = torch.stack([t.nodes["y"]["value"] for t in pairs])
    cot = COTFlowMatching(dim_u=2, dim_y=3, transform_y=torch.log, width=16, depth=2)
    cot.fit(log_u.double(), y.double(), steps=30, progress=False)
    return module.CotPosterior(cot, NAMES, "y", (3,)), cot


def test_cot_adapter_passes_cot_fm_through_with_the_model_sites():
    post, cot = _cot_adapter()
    assert isinstance(post, AmortizedPosterior) and post.observed == ["y"]
    y = torch.tensor([[0.5, 2.0, 1.5], [3.0, 0.2, 1.0]], dtype=torch.float64)
    batched = post.posterior(y)
    assert batched.batch_shape == (2,) and batched.event_shape == (2,)
    torch.manual_seed(1)
    draws = batched.sample((6,))
    torch.manual_seed(1)
    assert torch.equal(draws, cot.posterior(y).sample((6,)))  # log u, unchanged
    assert torch.allclose(batched.log_prob(draws), cot.posterior(y).log_prob(draws))
    one = post.posterior({"y": y[1]})
    assert one.batch_shape == ()
    assert torch.allclose(one.log_prob(draws[:, 1]), batched.log_prob(draws)[:, 1])
    values = post.sample(y, 5)
    assert set(values) == {"a", "b"} and values["b"].shape == (5, 2) and (values["b"] > 0).all()
    s = sbc(post, model, num_datasets=20, num_draws=10, seed=3)
    assert s.names == NAMES and s.ranks.shape == (20, 2)
    with pytest.raises(ValueError, match="dim_u = 2, but 3 names"):
        type(post)(cot, ["a", "b", "c"], "y", (3,))
    with pytest.raises(ValueError, match="every observation must be > 0"):
        post.posterior(torch.tensor([1.0, 0.0, 2.0]))
