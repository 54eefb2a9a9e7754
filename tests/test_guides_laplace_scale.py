"""``AutoKR(init_scale="laplace_scale")``: the Laplace fit's scale with ``init_loc_fn``'s
location, and the logged fallback to the plain scale where there is no usable Laplace fit."""

from __future__ import annotations

import logging

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide.initialization import init_to_value

import pyro_kr.guides.autokr as autokr_module
from pyro_kr import AutoKR
from tests.test_guides_autokr import DT, Y, exact_posterior, linear_model

INIT = {"a": torch.tensor(0.7, dtype=DT), "b": torch.tensor([-1.0, 2.0], dtype=DT)}


@pytest.mark.parametrize("map_kind", ["affine", "monotone"])
def test_the_scale_is_the_laplace_factor_and_the_location_the_init_point(map_kind):
    _, cov = exact_posterior()
    guide = AutoKR(linear_model, map=map_kind, init_scale="laplace_scale",
                   init_loc_fn=init_to_value(values=INIT))
    guide(Y)
    affine = guide.transform[-1]
    # the Gaussian posterior's Laplace factor is the Cholesky factor of its covariance
    torch.testing.assert_close(affine.scale_tril.detach(), torch.linalg.cholesky(cov),
                               atol=1e-6, rtol=0)
    # ... and the location stays where init_loc_fn put it, not at the mode
    torch.testing.assert_close(affine.loc.detach(), torch.cat([INIT["a"].reshape(1), INIT["b"]]))
    assert guide.init_scale_choice == "laplace_scale"


def test_a_numeric_scale_is_recorded_too():
    guide = AutoKR(linear_model, init_scale=0.2)
    guide(Y)
    assert guide.init_scale_choice == "0.2"
    default = AutoKR(linear_model)  # the default start: 0.1 times the identity
    default(Y)
    assert default.init_scale_choice == "0.1"


def _funnel():
    import pyro_kr.bench.problems as problems

    return problems.get("funnel")


def test_no_mode_falls_back_to_the_plain_scale_logged_and_leaves_the_rng_alone(caplog):
    p = _funnel()
    y = p.observation(0)
    pyro.set_rng_seed(1)
    with caplog.at_level(logging.WARNING, logger="pyro_kr.guides.autokr"):
        guide = AutoKR(p.model, init_scale="laplace_scale")
        guide(y=y)
        after = torch.randn(3)
    assert guide.init_scale_choice.startswith("0.1 (laplace_scale unusable: ")
    assert "mode" in guide.init_scale_choice
    assert any("instead of the Laplace scale" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    d = guide.latent_dim
    torch.testing.assert_close(guide.transform[-1].scale_tril.detach(),
                               0.1 * torch.eye(d, dtype=guide.transform[-1].loc.dtype))
    # the same fit as AutoKR(init_scale=0.1): same location, same random stream afterwards
    pyro.set_rng_seed(1)
    plain = AutoKR(p.model, init_scale=0.1)
    plain(y=y)
    torch.testing.assert_close(guide.transform[-1].loc.detach(), plain.transform[-1].loc.detach())
    assert torch.equal(after, torch.randn(3))


def test_above_the_size_limit_the_plain_scale_is_used(monkeypatch, caplog):
    monkeypatch.setattr(autokr_module, "LAPLACE_SCALE_MAX_DIM", 2)
    with caplog.at_level(logging.INFO, logger="pyro_kr.guides.autokr"):
        guide = AutoKR(linear_model, init_scale="laplace_scale")
        guide(Y)
    assert "LAPLACE_SCALE_MAX_DIM" in guide.init_scale_choice
    assert any(r.levelno == logging.INFO and "LAPLACE_SCALE_MAX_DIM" in r.getMessage()
               for r in caplog.records)
    torch.testing.assert_close(guide.transform[-1].scale_tril.detach(),
                               0.1 * torch.eye(3, dtype=DT))


def hierarchical_model(y):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=DT), 1.0))
    with pyro.plate("groups", y.shape[0]):
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        pyro.sample("y", dist.Normal(theta, 0.5), obs=y)


def test_the_sparse_map_keeps_the_plain_scale_and_says_so():
    y = torch.tensor([0.3, -0.2, 1.0, 0.4], dtype=DT)
    guide = AutoKR(hierarchical_model, structure="plates", init_scale="laplace_scale")
    guide(y)
    assert guide.structure_plan is not None  # the sparse map is kept
    assert "structure='plates'" in guide.init_scale_choice
    assert guide.init_scale_choice.startswith("0.1 (laplace_scale unusable")


def test_an_unknown_named_scale_is_refused():
    with pytest.raises(ValueError, match="'laplace' or 'laplace_scale', got 'hessian'"):
        AutoKR(linear_model, init_scale="hessian")


def test_several_modes_keep_the_plain_scale(caplog):
    # four modes (the signs of theta1, theta2): the searches from prior draws end at others
    import pyro_kr.bench.problems as problems

    p = problems.get("symmetric_modes")
    y = p.observation(0)
    pyro.set_rng_seed(0)
    with caplog.at_level(logging.WARNING, logger="pyro_kr.guides.autokr"):
        guide = AutoKR(p.model, init_scale="laplace_scale")
        guide(y=y)
    assert "several modes" in guide.init_scale_choice
    assert any("several modes" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(guide.transform[-1].scale_tril.detach(),
                               0.1 * torch.eye(2, dtype=guide.transform[-1].loc.dtype))


def test_other_mode_finds_none_on_a_gaussian_posterior_and_prior_starts_are_seeded():
    from pyro_kr.guides.laplace import laplace_init, other_mode, prior_starts

    guide = AutoKR(linear_model, map="affine", init_scale=0.1)
    guide(Y)
    mode, scale_tril = laplace_init(guide, torch.zeros(3, dtype=DT), Y)
    assert other_mode(guide, mode, scale_tril, Y, num_starts=3) is None
    before = torch.randn(2)  # the caller's stream is left alone
    starts = prior_starts(guide, 5, Y, seed=3)
    assert starts.shape == (5, 3) and torch.equal(starts, prior_starts(guide, 5, Y, seed=3))
    assert not torch.equal(starts, prior_starts(guide, 5, Y, seed=4))
    pyro.set_rng_seed(0)
    a = torch.randn(2)
    pyro.set_rng_seed(0)
    prior_starts(guide, 5, Y, seed=3)
    assert torch.equal(a, torch.randn(2)) and before.shape == (2,)
    # a mode shifted by 3 Laplace sds along the first coordinate counts as another one
    moved = mode + 3 * scale_tril[:, 0]
    assert "several modes" in other_mode(guide, moved, scale_tril, Y, num_starts=1)
