"""Pyro model vs PyMC twin: log joint densities agree up to one additive constant."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch

import pyro_kr.bench.problems as problems

pm = pytest.importorskip("pymc")

NAMES = ["linear_gaussian", "banana", "funnel", "eight_schools", "lotka_volterra"]
NAMES += ["elliptic_1d", "darcy_2d", "symmetric_modes"]


def _points(p, n: int = 20) -> dict[str, torch.Tensor]:
    """20 parameter values: prior draws, or near the truth where the prior is too wide."""
    if p.name == "lotka_volterra":
        gen = torch.Generator().manual_seed(0)
        u_star = torch.tensor([0.83, 0.041, 1.08, 0.04], dtype=torch.float64)
        u = u_star * torch.exp(0.2 * torch.randn(n, 4, generator=gen, dtype=torch.float64))
        return dict(zip(p.param_names, u.unbind(-1), strict=True))
    return p.simulate(n, seed=1)[0]


@pytest.fixture(scope="module", params=NAMES, ids=NAMES)
def compiled(request):
    """One compiled PyMC log density per problem (constrained values, no Jacobian)."""
    from pymc.model.transform.conditioning import remove_value_transforms

    p = problems.get(request.param)
    y = p.observation(0)
    model = p.pymc_model(y.numpy())
    logp = remove_value_transforms(model).compile_logp(jacobian=False, mode="FAST_COMPILE")
    return p, y, model, logp


def test_site_names_match(compiled):
    p, _, model, _ = compiled
    assert [rv.name for rv in model.free_RVs] == p.param_names
    for rv in model.free_RVs:
        assert tuple(rv.type.shape) == p.param_shapes[rv.name]
    observed = [rv.name for rv in model.observed_RVs]
    assert observed == ([] if p.y_shape == (0,) else ["y"])


def test_log_joint_agrees_up_to_a_constant(compiled):
    p, y, _, logp = compiled
    u = _points(p)
    pyro_lp, pymc_lp = [], []
    for i in range(20):
        ui = {k: v[i] for k, v in u.items()}
        tr = pyro.poutine.trace(pyro.poutine.condition(p.model, data=ui)).get_trace(y)
        pyro_lp.append(float(tr.log_prob_sum()))
        pymc_lp.append(float(logp({k: v.numpy() for k, v in ui.items()})))
    diff = np.asarray(pyro_lp) - np.asarray(pymc_lp)
    assert np.all(np.isfinite(diff))
    spread = np.std(pyro_lp)
    assert spread > 1.0  # the points differ, so the test has power
    assert np.std(diff) < 1e-6 * max(1.0, np.mean(np.abs(pyro_lp)))


def test_lotka_volterra_truth_is_plausible():
    p = problems.get("lotka_volterra")
    values = torch.tensor([0.83, 0.041, 1.08, 0.04], dtype=torch.float64)
    u_star = dict(zip(p.param_names, values, strict=True))
    resid = (p.observation(0).log() - p.log_solution(u_star)) / math.sqrt(0.1)
    # the observation was simulated at u*: standardized residuals look like N(0, 1) draws
    assert abs(float(resid.mean())) < 1.0 and 0.4 < float(resid.std()) < 1.6
