"""Default-budget AutoKR on a Gaussian posterior split over several vector sites (issue 18).

Target: posterior mean within 0.05 posterior sd and correlations within 0.05 at the documented
default budget (3000 steps, 8 particles, ``Annealing(steps=2000)``, lr 1e-2). Measured on this
model (seed 0, 40,000 draws): monotone 0.21 sd / 0.11, affine 0.10 sd / 0.10. With Adam's lr
decayed by 0.999 per step (``fit(..., optim=ClippedAdam({"lr": 1e-2, "lrd": 0.999}))``): affine
0.054 / 0.037, monotone 0.077 / 0.036; decayed by 0.998 the mean stops short (affine 1.58 sd
off); decayed by 0.9985 (to about 1 % of the start at step 3000): affine 0.031 / 0.022,
monotone 0.042 / 0.020, inside the target (``test_lr_decay_end_game_meets_the_target``).
With ``fit(..., lr_decay=True)`` (Adam's lr held through the 2000-step ramp, then decayed to
1 % by step 3000): affine 0.018 / 0.020, monotone 0.049 / 0.022, inside the target
(``test_lr_decay_after_the_ramp_meets_the_target``). With a constant lr (``lr_decay=False``,
``fit``'s default before 2026-12-05) the target is not met: a strict xfail, which fails
(XPASS) once it is. The default recipe since 2026-12-05 (docs/guide.md: 3000 steps, 8
particles, ``Annealing.over(3000)``, which also ramps the likelihood temperature, and ``fit``'s
default lr decay after the ramp) is ``test_default_recipe_meets_the_target``. Iterate averaging
in place of the decay (``fit(..., lr_decay=False, average_from=0.7)``: a constant lr, and the
uniform average of the iterates after the 2000-step ramp swapped in at the end): affine
0.016 / 0.015, monotone 0.040 / 0.020, inside the target
(``test_average_after_the_ramp_meets_the_target``); the default recipe plus
``average_from=0.85``: affine 0.020 / 0.030, monotone 0.033 / 0.024.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_kr

SIZES = {"a": 2, "b": 3, "c": 1}
SIGMA = 0.5


def _problem():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(8, 6, generator=g, dtype=torch.float64)
    y = A @ torch.randn(6, generator=g, dtype=torch.float64)
    y = y + SIGMA * torch.randn(8, generator=g, dtype=torch.float64)
    precision = torch.eye(6, dtype=torch.float64) + A.T @ A / SIGMA**2
    cov = torch.linalg.inv(precision)
    return A, y, cov @ A.T @ y / SIGMA**2, cov


A, Y, MEAN, COV = _problem()


def model(y):
    z = [
        pyro.sample(n, dist.Normal(torch.zeros(k, dtype=torch.float64), 1.0).to_event(1))
        for n, k in SIZES.items()
    ]
    loc = (torch.cat(z, -1).unsqueeze(-2) * A).sum(-1)
    pyro.sample("y", dist.Normal(loc, SIGMA).to_event(1), obs=y)


def _errors(map_kind, optim=None, schedule=None, **options):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = pyro_kr.AutoKR(model, map=map_kind, order="auto")
    schedule = pyro_kr.Annealing(steps=2000) if schedule is None else schedule
    loss = pyro_kr.TransportELBO(schedule, num_particles=8)
    lr = {"lr": 1e-2} if optim is None else {"optim": optim}
    pyro_kr.fit(model, guide, Y, loss=loss, steps=3000, progress=False, **lr, **options)
    draws = guide.sample_posterior(40_000, Y)
    x = torch.cat([draws[n] for n in SIZES], -1)
    sd = COV.diag().sqrt()
    mean_err = ((x.mean(0) - MEAN) / sd).abs().max()
    corr_err = (torch.corrcoef(x.T) - COV / sd[:, None] / sd[None]).abs().max()
    return float(mean_err), float(corr_err)


@pytest.mark.slow
@pytest.mark.parametrize("map_kind", ["affine", "monotone"])
def test_default_recipe_meets_the_target(map_kind):
    # the documented default: Annealing.over(steps) (tempered) and fit's default lr decay
    mean_err, corr_err = _errors(map_kind, schedule=pyro_kr.Annealing.over(3000))
    assert mean_err < 0.05 and corr_err < 0.05, (mean_err, corr_err)


@pytest.mark.slow
@pytest.mark.parametrize("map_kind", ["affine", "monotone"])
@pytest.mark.xfail(strict=True, reason="issue 18: a constant lr is not exact (see docstring)")
def test_constant_lr_misses_the_target(map_kind):
    mean_err, corr_err = _errors(map_kind, lr_decay=False)
    assert mean_err < 0.05 and corr_err < 0.05, (mean_err, corr_err)


@pytest.mark.slow
@pytest.mark.parametrize("map_kind", ["affine", "monotone"])
def test_lr_decay_end_game_meets_the_target(map_kind):
    # the same budget with Adam's lr decayed to ~1 % of its start by the last step
    optim = pyro.optim.ClippedAdam({"lr": 1e-2, "lrd": 0.9985})
    mean_err, corr_err = _errors(map_kind, optim)
    assert mean_err < 0.05 and corr_err < 0.05, (mean_err, corr_err)


@pytest.mark.slow
@pytest.mark.parametrize("map_kind", ["affine", "monotone"])
def test_lr_decay_after_the_ramp_meets_the_target(map_kind):
    # fit's own end game: lr held until the annealing ramp ends (step 2000), then to 1 %
    mean_err, corr_err = _errors(map_kind, lr_decay=True)
    assert mean_err < 0.05 and corr_err < 0.05, (mean_err, corr_err)


@pytest.mark.slow
@pytest.mark.parametrize("map_kind", ["affine", "monotone"])
def test_average_after_the_ramp_meets_the_target(map_kind):
    # the constant lr of the strict xfail above, with the iterates after the ramp averaged
    mean_err, corr_err = _errors(map_kind, lr_decay=False, average_from=0.7)
    assert mean_err < 0.05 and corr_err < 0.05, (mean_err, corr_err)
