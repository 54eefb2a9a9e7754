"""The four-mode ``symmetric_modes`` problem and its exact reference."""

import numpy as np
import pyro
import torch

import pyro_kr.bench.problems as problems
from pyro_kr.bench.problems.symmetric_modes import mode_shares


def test_model_matches_log_joint_and_reference_is_symmetric():
    p = problems.get("symmetric_modes")
    y = p.observation(0)
    u, _ = p.simulate(3, seed=0)
    for i in range(3):
        ui = {k: v[i] for k, v in u.items()}
        tr = pyro.poutine.trace(pyro.poutine.condition(p.model, data=ui)).get_trace(y)
        torch.testing.assert_close(tr.log_prob_sum(), p.log_joint(ui, y))
    ref = p.reference(0, num_samples=20_000)
    for share in mode_shares(ref["theta1"], ref["theta2"]).values():
        assert abs(share - 0.25) < 0.015  # 4 sd of a binomial share at n = 20,000


def test_reference_agrees_with_importance_sampling_from_the_prior():
    # independent of the grid: self-normalized importance sampling with prior draws
    p = problems.get("symmetric_modes")
    y = p.observation(0)
    u, _ = p.simulate(400_000, seed=5)
    logw = p.likelihood(u).log_prob(y)
    w = torch.softmax(logw, 0).numpy()
    ess = 1.0 / np.sum(w**2)
    assert ess > 2000
    ref = p.reference(0, num_samples=50_000, seed=1)
    for name in ("theta1", "theta2"):
        a = np.abs(u[name].numpy())
        is_mean, is_sd = float(np.sum(w * a)), float(np.sqrt(np.sum(w * (a - np.sum(w * a)) ** 2)))
        ref_mean = float(np.mean(np.abs(ref[name])))
        assert abs(is_mean - ref_mean) < 5 * is_sd / np.sqrt(ess) + 1e-3
        assert abs(is_sd - float(np.std(np.abs(ref[name])))) < 0.1 * is_sd
