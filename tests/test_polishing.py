"""``pyro_kr.polish``: L-BFGS on the KL of fixed reference draws, checked against the exact
posterior and evidence of conjugate Gaussian models (dense and sparse maps), with its
refusals, its undo of an overfit polish and of an interrupt."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from _gaussian_hierarchy import TAU, exact_posterior, hierarchy_data, known_tau_model
from pyro.infer.autoguide import AutoNormal

import pyro_kr
from pyro_kr.checkpoint import snapshot_params
from pyro_kr.polishing import reference_points

Y2 = torch.tensor([0.8, -0.3])


def _two_d(y=Y2):
    """``a ~ N(0, 1)``, ``b | a ~ N(a, 1)``, ``y ~ N((a, b), 0.5^2 I)``: a Gaussian posterior."""
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    b = pyro.sample("b", dist.Normal(a, 1.0))
    pyro.sample("y", dist.Normal(torch.stack([a, b], -1), 0.5).to_event(1), obs=y)


def _two_d_exact():
    prior = torch.tensor([[1.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    noise = 0.25 * torch.eye(2, dtype=torch.float64)
    gain = prior @ torch.linalg.inv(prior + noise)
    y = Y2.double()
    log_evidence = dist.MultivariateNormal(torch.zeros(2, dtype=torch.float64),
                                           prior + noise).log_prob(y)
    return gain @ y, prior - gain @ prior, float(log_evidence)


def _fit(model, guide, *args, steps=100):
    pyro.clear_param_store()
    torch.manual_seed(0)
    pyro_kr.fit(model, guide, *args, steps=steps, progress=False, check=False)


def test_default_polish_reaches_the_exact_gaussian_posterior_and_evidence(capsys):
    """An affine ``AutoKR`` (its KR map is the Cholesky factor) after a short SGD fit, then
    ``polish`` with its defaults: the exact posterior moments, and the fresh negative ELBO at
    ``-log p(y)`` (the KL is ~0). The monotone map: the sparse test below."""
    guide = pyro_kr.AutoKR(_two_d, map="affine")
    _fit(_two_d, guide)
    mean, cov, log_evidence = _two_d_exact()
    state = torch.get_rng_state()
    result = pyro_kr.polish(_two_d, guide)
    assert torch.equal(state, torch.get_rng_state())  # the global stream is untouched
    # progress (on by default, as fit's): plain lines in logs, the iterations and the loss
    err = capsys.readouterr().err
    assert "polish: it " in err and f"/500 loss={result.loss_after:.6g}" in err
    assert isinstance(result, pyro_kr.PolishResult) and result.kept
    assert result.loss_after < result.loss_before
    assert result.heldout_after < result.heldout_before
    assert abs(result.heldout_after + log_evidence) < 0.003  # KL(q || p) >= 0, ~0 here
    assert guide.get_transform()[-1].loc.dtype == torch.float32  # cast back
    torch.manual_seed(1)
    draws = guide.sample_posterior(40000)
    z = torch.stack([draws["a"], draws["b"]], 1).double()
    sd = cov.diag().sqrt()
    assert ((z.mean(0) - mean).abs() / sd).max() < 0.03
    assert ((z.std(0) / sd) - 1).abs().max() < 0.02
    corr = torch.corrcoef(z.T)[0, 1]
    assert abs(corr - cov[0, 1] / (sd[0] * sd[1])) < 0.01


@pytest.mark.parametrize("map_kind", ["affine", "monotone"])
def test_polish_of_the_sparse_map_recovers_a_conjugate_hierarchy(map_kind):
    y, sigma = hierarchy_data()
    guide = pyro_kr.AutoKR(known_tau_model, map=map_kind, structure="plates")
    _fit(known_tau_model, guide, y, sigma, steps=150)
    assert guide.structure_plan is not None
    result = pyro_kr.polish(known_tau_model, guide, y, sigma, num_particles=1024, max_iter=150)
    assert result.kept and result.heldout_after < result.heldout_before
    n = len(y)
    marginal = dist.MultivariateNormal(
        torch.zeros(n, dtype=torch.float64),
        25.0 + torch.diag(TAU**2 + sigma.double() ** 2),
    )
    assert abs(result.heldout_after + float(marginal.log_prob(y.double()))) < 0.02
    torch.manual_seed(1)
    draws = guide.sample_posterior(40000, y, sigma)
    z = torch.cat([draws["mu"][:, None], draws["theta"]], 1).double()
    mean, cov = exact_posterior(y, sigma)
    sd = cov.diag().sqrt()
    assert ((z.mean(0) - mean).abs() / sd).max() < 0.05
    assert ((z.std(0) / sd) - 1).abs().max() < 0.04


def test_reference_points_are_standard_normal_and_seeded():
    for sampler in ("sobol", "mc"):
        x = reference_points(4096, 3, sampler, seed=2)
        assert x.dtype == torch.float64 and torch.equal(x, reference_points(4096, 3, sampler, 2))
        assert x.mean(0).abs().max() < 0.06 and (x.std(0) - 1).abs().max() < 0.04
    state = torch.get_rng_state()
    reference_points(8, 2, "mc")
    assert torch.equal(state, torch.get_rng_state())
    with pytest.raises(ValueError, match="sampler must be one of"):
        reference_points(8, 2, "halton")


def test_an_overfit_polish_is_undone_with_a_warning():
    """Four Monte Carlo draws of a monotone map: L-BFGS fits the draws (the fixed loss falls
    far below ``-log p(y)``), the fresh draws say so, and the map before the polish is back."""
    guide = pyro_kr.AutoKR(_two_d)
    _fit(_two_d, guide)
    before = snapshot_params()
    _, _, log_evidence = _two_d_exact()
    with pytest.warns(RuntimeWarning, match="fitted the draws, not the posterior"):
        result = pyro_kr.polish(_two_d, guide, num_particles=4, sampler="mc", max_iter=200)
    assert not result.kept and result.loss_after < -log_evidence - 0.1
    after = snapshot_params()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_an_interrupt_restores_the_map_and_its_dtype():
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] > 12:
            raise KeyboardInterrupt
        _two_d()

    guide = pyro_kr.AutoKR(_two_d)
    _fit(_two_d, guide, steps=20)
    before = snapshot_params()
    with pytest.raises(KeyboardInterrupt):
        pyro_kr.polish(flaky, guide, num_particles=64, max_iter=50)
    after = snapshot_params()
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == torch.float32
               for k in before)


def test_refusals_name_the_problem_and_the_fix():
    y, sigma = hierarchy_data(8)
    with pytest.raises(TypeError, match="AutoKR"):
        pyro_kr.polish(_two_d, AutoNormal(_two_d))
    with pytest.raises(RuntimeError, match="set-up guide"):
        pyro_kr.polish(_two_d, pyro_kr.AutoKR(_two_d))
    pyro.clear_param_store()
    guide = pyro_kr.AutoKR(known_tau_model, structure="plates")
    guide(y, sigma, 3)
    with pytest.raises(ValueError, match="subsample_size"):
        pyro_kr.polish(known_tau_model, guide, y, sigma, 3)
    guide = pyro_kr.AutoKR(_two_d)
    _fit(_two_d, guide, steps=2)
    for bad in ({"num_particles": 1}, {"max_iter": 0}, {"heldout_particles": 2.5},
                {"dtype": torch.int64}):
        with pytest.raises(ValueError):
            pyro_kr.polish(_two_d, guide, **bad)


def test_a_model_that_does_not_vectorize_is_refused():
    def unbatched():
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        b = pyro.sample("b", dist.Normal(a, 1.0))
        pyro.sample("y", dist.Normal(torch.stack([a, b]), 0.5).to_event(1), obs=Y2)

    guide = pyro_kr.AutoKR(unbatched)
    _fit(unbatched, guide, steps=2)
    with pytest.raises(ValueError, match="does not vectorize"):
        pyro_kr.polish(unbatched, guide)


def test_a_model_that_fails_in_double_precision_gets_the_fix():
    X = torch.randn(5, 2)

    def regression():
        w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("y", dist.Normal(w @ X.T, 1.0).to_event(1), obs=torch.zeros(5))

    guide = pyro_kr.AutoKR(regression, map="affine")
    _fit(regression, guide, steps=5)
    before = snapshot_params()
    with pytest.raises(RuntimeError, match="dtype=None"):
        pyro_kr.polish(regression, guide, num_particles=64, max_iter=5)
    after = snapshot_params()
    assert all(torch.equal(before[k], after[k]) for k in before)
    result = pyro_kr.polish(regression, guide, num_particles=64, max_iter=5, dtype=None)
    assert math.isfinite(result.loss_after)
