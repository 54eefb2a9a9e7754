"""fit_amortized: both modes recover exact linear-Gaussian posteriors for unseen y."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from _amortized_models import constrained, exact_posterior, linear_gaussian, unseen_linear_gaussian

from pyro_kr import AmortizedKR, fit_amortized
from pyro_kr.amortized import AmortizedHistory
from pyro_kr.diagnostics.stall import FitWarning

# Training settings per mode: a linear context (hidden_dims=()) makes the affine family contain
# the exact posterior map y -> (mean(y), cholesky(cov)); the learning rate decays 100x.
SETTINGS = {
    "reverse": dict(steps=1000, batch_size=128, schedule=None, lr=0.02),
    "forward": dict(steps=2000, batch_size=512, num_simulations=50_000, lr=0.05,
                    validate_every=50, patience=100),
}


def _affine_parts(guide: AmortizedKR, ys: torch.Tensor):
    """Shift ``T(0)`` and factor ``T(e_i) - T(0)`` of the conditioned affine map per y."""
    transform = guide.posterior(ys).transforms[0]
    zero = torch.zeros(len(ys), 2, dtype=torch.float64)
    shift = transform(zero)
    eye = torch.eye(2, dtype=torch.float64)
    factor = torch.stack([transform(eye[i].expand(len(ys), 2)) - shift for i in range(2)], -1)
    return shift, factor


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_linear_gaussian_mean_and_cholesky_for_unseen_y(mode):
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine", hidden_dims=(),
                        embedding_dim=8, embedding_hidden=(16,))
    settings = dict(SETTINGS[mode])
    lr, steps = settings.pop("lr"), settings["steps"]
    optim = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.01 ** (1 / steps)})
    history = fit_amortized(linear_gaussian, guide, mode=mode, optim=optim, progress=False,
                            **settings)
    assert isinstance(history, AmortizedHistory) and history.mode == mode
    ys = unseen_linear_gaussian(10, seed=123)
    with torch.no_grad():
        shift, factor = _affine_parts(guide, ys)
    mean, chol = exact_posterior(ys)
    assert (shift - mean).abs().max() < 0.05
    assert (factor - chol).abs().max() < 0.05
    with torch.no_grad():  # batched posterior equals per-y posteriors after training too
        for i in (0, 9):
            s_i, f_i = _affine_parts(guide, ys[i : i + 1])
            assert torch.allclose(s_i[0], shift[i]) and torch.allclose(f_i[0], factor[i])


def test_forward_mode_validation_and_early_stopping():
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine")
    history = fit_amortized(linear_gaussian, guide, mode="forward", steps=400, lr=0.05,
                            num_simulations=500, batch_size=64, validate_every=10, patience=2,
                            min_patience_steps=0, progress=False)  # patience: 2 checks only
    assert history.val_step and history.val_step[0] == 10
    assert len(history.val_loss) == len(history.val_step)
    assert history.best_step in history.val_step
    assert history.stopped_early and history.steps < 400


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_monotone_map_with_constrained_latents_trains(mode):
    guide = AmortizedKR(constrained, observed="y", map="monotone", depth=1, hidden_dims=(16,))
    history = fit_amortized(constrained, guide, mode=mode, steps=20, batch_size=32,
                            num_simulations=200 if mode == "forward" else None, progress=False)
    assert history.steps == 20
    assert all(torch.isfinite(torch.tensor(history.loss)))
    assert history.loss[-1] < history.loss[0]


@pytest.mark.parametrize("mode", ["reverse", "hybrid"])
def test_no_single_posterior_check_on_a_batch_of_datasets(mode, recwarn):
    # fit's end check scores one posterior; the reverse objective's model is a fresh batch of
    # simulated datasets, so its k-hat (0.95 here after 200 steps) is noise: no FitWarning
    pyro.set_rng_seed(0)
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine", hidden_dims=(),
                        embedding_dim=8, embedding_hidden=(16,))
    fit_amortized(linear_gaussian, guide, mode=mode, steps=200, batch_size=64,
                  num_simulations=500 if mode == "hybrid" else None, progress=False)
    assert not [w for w in recwarn if issubclass(w.category, FitWarning)]


def test_reverse_mode_resumes_exactly(tmp_path):
    def run(path, stop_at: int | None = None) -> dict[str, torch.Tensor]:
        pyro.clear_param_store()
        pyro.set_rng_seed(5)
        guide = AmortizedKR(linear_gaussian, observed="y", map="affine")
        fit_amortized(linear_gaussian, guide, mode="reverse", steps=6, batch_size=16,
                      progress=False, checkpoint=path, checkpoint_every=2,
                      callback=lambda step, record: step + 1 == stop_at)
        return {k: v.detach().clone() for k, v in guide.nets.state_dict().items()}

    straight = run(tmp_path / "a.pt")
    interrupted = run(tmp_path / "b.pt", stop_at=3)
    resumed = run(tmp_path / "b.pt")
    assert not all(torch.equal(straight[k], interrupted[k]) for k in straight)
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_bad_arguments():
    guide = AmortizedKR(linear_gaussian, observed="y", map="affine")
    with pytest.raises(ValueError, match="mode must be one of"):
        fit_amortized(linear_gaussian, guide, mode="both")
    with pytest.raises(ValueError, match="need num_simulations"):
        fit_amortized(linear_gaussian, guide, mode="forward", steps=2)
    with pytest.raises(ValueError, match="takes no schedule"):
        fit_amortized(linear_gaussian, guide, mode="forward", num_simulations=10,
                      schedule=pyro_kr_annealing())
    with pytest.raises(TypeError, match="AmortizedKR"):
        fit_amortized(linear_gaussian, lambda y=None: None, mode="reverse")


def pyro_kr_annealing():
    from pyro_kr import Annealing

    return Annealing(steps=5)


def _plated(y=None):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    s = pyro.sample("s", dist.HalfNormal(torch.tensor(1.0, dtype=torch.float64)))
    with pyro.plate("data", 5):
        return pyro.sample("y", dist.Normal(mu, s + 0.5), obs=y)


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_observations_inside_a_plate(mode):
    guide = AmortizedKR(_plated, observed="y", map="monotone", depth=1, hidden_dims=(8,))
    history = fit_amortized(_plated, guide, mode=mode, steps=20, batch_size=8,
                            num_simulations=100 if mode == "forward" else None, progress=False)
    assert guide.plate_depth == 1 and history.loss[-1] < history.loss[0]
    y = pyro.poutine.uncondition(_plated)()
    assert guide.posterior(torch.stack([y, y, y])).batch_shape == (3,)
    draws = guide.sample(y, 7)
    assert draws["mu"].shape == (7,) and bool((draws["s"] > 0).all())
