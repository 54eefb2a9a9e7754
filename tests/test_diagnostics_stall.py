"""Stall / collapse detection after a fit (issue 18, "no silent stall")."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_kr
from pyro_kr.diagnostics.stall import FitWarning, check_fit, compare_to_gaussian

Y = torch.full((5,), 4.0)


def model(y):
    """z ~ N(0, I_2); y_i ~ N(z_0 + 2 z_1, 0.3): the posterior sits far from the prior."""
    z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    loc = (z[..., 0] + 2.0 * z[..., 1]).unsqueeze(-1).expand(z.shape[:-1] + (len(y),))
    pyro.sample("y", dist.Normal(loc, 0.3).to_event(1), obs=y)


def _fit(lr, steps=1500):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = pyro_kr.AutoKR(model, map="affine")
    loss = pyro_kr.TransportELBO(pyro_kr.Annealing(steps=1000), num_particles=8)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pyro_kr.fit(model, guide, Y, loss=loss, steps=steps, lr=lr, progress=False)
    return guide, [w for w in record if issubclass(w.category, FitWarning)]


def test_guide_held_at_prior_is_reported_with_the_fix():
    guide, found = _fit(lr=1e-9, steps=20)  # nothing learned: the guide stays at its start
    result = check_fit(guide, model, Y)
    assert result.status == "at_prior"
    assert result.khat > 0.7 and result.prior_khat > 0.7
    assert len(found) == 1
    message = str(found[0].message)
    assert "stalled at the prior" in message and "larger lr" in message
    assert "init_scale='laplace'" in message


def test_healthy_fit_is_not_reported():
    guide, found = _fit(lr=2e-2)
    result = check_fit(guide, model, Y)
    assert result.ok and result.khat < 0.7 and result.shift > 0.5
    assert result.elbo > result.prior_elbo + 100  # the data moved it far from the prior
    assert found == []


def test_prior_guide_on_uninformative_data_is_not_a_stall():
    def weak(y):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("y", dist.Normal(z.sum(-1), 100.0), obs=y)

    pyro.clear_param_store()
    guide = pyro.infer.autoguide.AutoNormal(weak, init_scale=1.0)  # q = prior = posterior
    result = check_fit(guide, weak, torch.tensor(0.0))
    assert result.ok and result.message == ""


def test_narrow_guide_is_reported_as_collapsed():
    def weak(y):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("y", dist.Normal(z.sum(-1), 100.0), obs=y)

    pyro.clear_param_store()
    guide = pyro.infer.autoguide.AutoNormal(weak, init_scale=0.05)  # far too narrow
    result = check_fit(guide, weak, torch.tensor(0.0))
    assert result.status == "collapsed" and "k-hat" in result.message


def test_check_false_skips_the_check():
    pyro.clear_param_store()
    guide = pyro_kr.AutoKR(model, map="affine")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pyro_kr.fit(model, guide, Y, steps=2, lr=1e-9, progress=False, check=False)
    assert not [w for w in record if issubclass(w.category, FitWarning)]


@pytest.mark.parametrize("bad", [0, 1])
def test_check_fit_validates_num_samples(bad):
    pyro.clear_param_store()
    guide = pyro_kr.AutoKR(model, map="affine")
    with pytest.raises(ValueError):
        check_fit(guide, model, Y, num_samples=bad)


def _weak(y):
    z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    pyro.sample("y", dist.Normal(z.sum(-1), 100.0), obs=y)


def test_autokr_worse_than_its_laplace_gaussian_is_reported():
    # posterior ~ N(0, I) (the data say almost nothing); a guide twice too wide has a low
    # k-hat (check_fit: ok) but an ELBO 2 * 0.5 * (4 - 1 - log 4) = 1.6 nats below the
    # Laplace Gaussian's, which is exact here
    pyro.clear_param_store()
    guide = pyro_kr.AutoKR(_weak, map="affine", init_scale=2.0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pyro_kr.fit(_weak, guide, torch.tensor(0.0), steps=2, lr=1e-9, progress=False)
    found = [str(w.message) for w in record if issubclass(w.category, FitWarning)]
    assert len(found) == 1 and "worse than the Laplace Gaussian" in found[0]
    assert "init_scale='laplace'" in found[0]
    result = compare_to_gaussian(guide, _weak, torch.tensor(0.0), num_samples=4000)
    assert result.worse and result.khat < 0.7
    loc = guide.median(torch.tensor(0.0))["z"]  # init_to_median: near 0, not exactly
    kl = 0.5 * float(loc @ loc) + 4 - 1 - math.log(4)  # KL(N(loc, 4 I) || N(0, I))
    assert result.gaussian_elbo - result.elbo == pytest.approx(kl, abs=0.15)  # 3 se


def test_laplace_gaussian_is_not_worse_than_itself():
    pyro.clear_param_store()
    guide = pyro_kr.AutoKR(model, map="affine", init_scale="laplace")
    result = compare_to_gaussian(guide, model, Y, num_samples=1000)
    assert not result.worse and result.message == ""
    assert result.elbo == pytest.approx(result.gaussian_elbo, abs=4 * result.elbo_se + 1e-6)
