"""Stall / collapse detection after a fit (issue 18, "no silent stall")."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_kr
from pyro_kr.diagnostics.stall import FitWarning, check_fit

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
