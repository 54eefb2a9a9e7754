"""KR-only queries: exact marginals of leading sites and conditionals of the rest.

With ``map="affine"`` set to ``T(x) = m + L x`` the guide is exactly ``N(m, L L^T)`` on the
packed latent, so marginals and conditionals have textbook Gaussian formulas; with a perturbed
``map="monotone"`` the checks are the exact structural identities of a triangular map.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_kr import AutoKR
from pyro_kr.guides import ConditionalPosterior

DT = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def model():
    """Packed latent ``(tau, mu, theta1, theta2)``: ``tau`` positive, the others real."""
    tau = pyro.sample("tau", dist.LogNormal(torch.tensor(0.0, dtype=DT), 1.0))
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=DT), 1.0))
    pyro.sample("theta", dist.Normal(mu.expand(2), tau).to_event(1))


MEAN = torch.tensor([0.3, -1.0, 0.5, 2.0], dtype=DT)
L = torch.tensor(
    [[0.5, 0.0, 0.0, 0.0], [0.4, 1.0, 0.0, 0.0], [-0.3, 0.6, 0.7, 0.0], [0.2, -0.5, 0.4, 0.9]],
    dtype=DT,
)
COV = L @ L.T


def gaussian_guide(order=("tau", "mu", "theta")) -> AutoKR:
    guide = AutoKR(model, map="affine", order=list(order))
    guide()
    affine = guide.transform[-1]
    affine.set_loc(MEAN)
    affine.set_scale_tril(L)
    return guide


def monotone_guide(order=("tau", "mu", "theta")) -> AutoKR:
    guide = AutoKR(model, order=list(order))
    guide()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return guide


def _assert_moments(z: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> None:
    sd = cov.diagonal().sqrt()
    n = z.shape[0]
    tol = 5 / n**0.5  # five Monte Carlo standard errors, in sd units
    assert ((z.mean(0) - mean) / sd).abs().max() < tol
    assert ((torch.cov(z.T) - cov) / torch.outer(sd, sd)).abs().max() < 2 * tol


def test_marginal_of_leading_sites_is_the_gaussian_marginal():
    guide = gaussian_guide()
    draws = guide.marginal(["tau", "mu"], 20_000)
    assert set(draws) == {"tau", "mu"}
    assert draws["tau"].shape == draws["mu"].shape == (20_000,)
    assert bool((draws["tau"] > 0).all())
    z = torch.stack([draws["tau"].log(), draws["mu"]], -1)  # tau's unconstrained block is log
    _assert_moments(z, MEAN[:2], COV[:2, :2])


def test_marginal_of_one_site_accepts_a_name():
    draws = gaussian_guide().marginal("tau", 20_000)
    assert list(draws) == ["tau"]
    _assert_moments(draws["tau"].log().unsqueeze(-1), MEAN[:1], COV[:1, :1])


def test_conditional_is_the_gaussian_conditional():
    guide = gaussian_guide()
    tau, mu = 1.7, -0.4
    fixed = torch.tensor([torch.tensor(tau).log().item(), mu], dtype=DT)
    post = guide.conditional(fixed={"tau": tau, "mu": mu})
    assert isinstance(post, ConditionalPosterior)
    draws = post.sample(20_000)
    torch.testing.assert_close(draws["tau"], torch.full((20_000,), tau, dtype=DT))
    torch.testing.assert_close(draws["mu"], torch.full((20_000,), mu, dtype=DT))
    assert draws["theta"].shape == (20_000, 2)
    s11, s12, s22 = COV[:2, :2], COV[:2, 2:], COV[2:, 2:]
    gain = torch.linalg.solve(s11, s12).T
    cond_mean = MEAN[2:] + gain @ (fixed - MEAN[:2])
    cond_cov = s22 - gain @ s12
    _assert_moments(draws["theta"], cond_mean, cond_cov)


def test_conditional_on_the_first_site_only():
    guide = gaussian_guide()
    draws = guide.conditional(fixed={"tau": 0.5}).sample(20_000)
    rest = torch.cat([draws["mu"].unsqueeze(-1), draws["theta"]], -1)
    fixed = torch.tensor(0.5, dtype=DT).log()
    gain = COV[1:, :1] / COV[0, 0]
    cond_mean = MEAN[1:] + gain.squeeze(-1) * (fixed - MEAN[0])
    cond_cov = COV[1:, 1:] - gain @ COV[:1, 1:]
    _assert_moments(rest, cond_mean, cond_cov)


def test_marginal_of_a_monotone_map_is_exactly_the_leading_block():
    """The leading outputs do not depend on the trailing reference coordinates."""
    guide = monotone_guide()
    pyro.set_rng_seed(0)
    marginal = guide.marginal(["tau", "mu"], 500)
    pyro.set_rng_seed(0)
    joint = guide.sample_posterior(500)
    torch.testing.assert_close(marginal["tau"], joint["tau"])
    torch.testing.assert_close(marginal["mu"], joint["mu"])


def test_conditional_of_a_monotone_map_inverts_the_leading_components():
    guide = monotone_guide()
    tau, mu = 0.8, 0.25
    post = guide.conditional(fixed={"tau": tau, "mu": mu})
    draws = post.sample(300)
    transform = guide.get_transform()
    # every draw is T(x_lead, x_rest) with the same x_lead, whose leading outputs are fixed
    x_rest = torch.randn(300, 2, dtype=DT)
    x = torch.cat([post._x_lead.expand(300, 2), x_rest], -1)
    z = transform(x)
    torch.testing.assert_close(z[:, 0].exp(), torch.full((300,), tau, dtype=DT))
    torch.testing.assert_close(z[:, 1], torch.full((300,), mu, dtype=DT))
    assert draws["theta"].std(0).min() > 0  # the later sites still vary
    torch.testing.assert_close(draws["mu"], torch.full((300,), mu, dtype=DT))


@pytest.mark.parametrize("query", ["marginal", "conditional"])
def test_sites_that_do_not_lead_are_a_value_error(query):
    guide = gaussian_guide()
    with pytest.raises(ValueError, match=r"lead the KR order.*requested \['mu'\].*"
                       r"order=\['mu', 'tau', 'theta'\]"):
        if query == "marginal":
            guide.marginal(["mu"], 10)
        else:
            guide.conditional(fixed={"mu": 0.0})
    with pytest.raises(ValueError, match=r"unknown sites \['nope'\]"):
        guide.marginal(["nope"], 10)


def test_reordering_makes_a_site_lead():
    guide = gaussian_guide(order=("mu", "tau", "theta"))
    assert guide.order == ["mu", "tau", "theta"]
    draws = guide.marginal("mu", 20_000)
    _assert_moments(draws["mu"].unsqueeze(-1), MEAN[:1], COV[:1, :1])


def test_queries_need_a_set_up_guide():
    guide = AutoKR(model)
    with pytest.raises(RuntimeError, match="run the guide"):
        guide.marginal("tau", 10)


def test_conditional_validates_values():
    guide = gaussian_guide()
    with pytest.raises(ValueError, match=r"value for 'tau' must have shape \(\), got \(2,\)"):
        guide.conditional(fixed={"tau": torch.ones(2)})
    with pytest.raises(ValueError, match="value for 'tau' is outside its support"):
        guide.conditional(fixed={"tau": -1.0})
