"""COTFlowMatching end to end: Gaussian conditionals, log_prob, inputs, checkpoints, models."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

pytest.importorskip("ot")

from pyro_kr.flow_matching import COTFlowMatching, FlowPosterior, VelocityMLP  # noqa: E402
from pyro_kr.flow_matching.training import validation_w2  # noqa: E402

SLOPE, NOISE_SD = 0.8, 0.6  # u | y ~ N(SLOPE y, NOISE_SD^2), y ~ N(0, 1)
Y_QUERY = torch.tensor([[-1.0], [0.0], [1.0]])


def gaussian_pairs(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, 1, generator=g)
    return SLOPE * y + NOISE_SD * torch.randn(n, 1, generator=g), y


@pytest.fixture(scope="module")
def trained() -> COTFlowMatching:
    """A short minibatch-COT run on the 1-d Gaussian joint (about 10 s on one core)."""
    pyro.set_rng_seed(0)
    torch.set_num_threads(1)
    u, y = gaussian_pairs(2000)
    cot = COTFlowMatching(dim_u=1, dim_y=1, width=32, depth=2)
    cot.fit(u=u, y=y, steps=600, batch_size=128, coupling="minibatch", eps=1e-2, lr=3e-3,
            progress=False)
    return cot


def test_gaussian_conditional_mean_and_sd(trained):
    draws = trained.posterior(Y_QUERY, ode_steps=10).sample((4000,))
    assert draws.shape == (4000, 3, 1)
    mean, sd = draws.mean(0).squeeze(-1), draws.std(0).squeeze(-1)
    # an untrained flow gives mean 0 / sd 1; short training gets within these tolerances
    assert torch.allclose(mean, SLOPE * Y_QUERY.squeeze(-1), atol=0.2)
    assert torch.allclose(sd, torch.full((3,), NOISE_SD), atol=0.12)


def test_log_prob_integrates_to_one_and_matches_the_exact_density(trained):
    post = trained.posterior(Y_QUERY, ode_steps=10)
    grid = torch.linspace(-4.0, 4.0, 161).reshape(161, 1, 1)
    lp = post.log_prob(grid.expand(161, 3, 1))
    assert lp.shape == (161, 3)
    mass = lp.exp().sum(0) * 0.05
    assert torch.allclose(mass, torch.ones(3), atol=0.02)
    exact = dist.Normal(SLOPE * Y_QUERY.squeeze(-1), NOISE_SD).log_prob(grid.squeeze(-1))
    central = (grid.squeeze(-1) - SLOPE * Y_QUERY.squeeze(-1)).abs() < NOISE_SD
    assert float((lp - exact).abs()[central].mean()) < 0.25


def test_log_prob_agrees_with_samples(trained):
    # E_q[log q] is -entropy of q; for q close to N(., 0.6^2) it is near the Gaussian value
    post = trained.posterior(torch.tensor([0.5]), ode_steps=10)
    draws = post.sample((500,))
    neg_entropy = float(post.log_prob(draws).mean())
    gaussian = -0.5 * math.log(2 * math.pi * math.e * NOISE_SD**2)
    assert abs(neg_entropy - gaussian) < 0.15


def test_posterior_is_a_batched_distribution(trained):
    post = trained.posterior(torch.zeros(2, 5, 1))
    assert isinstance(post, FlowPosterior)
    assert post.batch_shape == (2, 5) and post.event_shape == (1,)
    assert post.sample().shape == (2, 5, 1)
    with pytest.raises(ValueError, match=r"expected values of shape \(\.\.\., 1\)"):
        post.log_prob(torch.zeros(2, 5, 3))


@pytest.mark.slow
def test_gaussian_conditional_tight_full_coupling():
    pyro.set_rng_seed(0)
    u, y = gaussian_pairs(5000)
    cot = COTFlowMatching(dim_u=1, dim_y=1, width=64, depth=3)
    cot.fit(u=u, y=y, steps=4000, batch_size=256, coupling="full", eps=1e-2, lr=1e-3,
            progress=False)
    draws = cot.posterior(Y_QUERY, ode_steps=20).sample((10_000,))
    assert torch.allclose(draws.mean(0).squeeze(-1), SLOPE * Y_QUERY.squeeze(-1), atol=0.07)
    assert torch.allclose(draws.std(0).squeeze(-1), torch.full((3,), NOISE_SD), atol=0.05)


def test_triangular_option_gives_lower_triangular_velocity():
    cot = COTFlowMatching(dim_u=3, dim_y=2, triangular=True, width=16, depth=2).double()
    u = torch.randn(3, dtype=torch.float64)
    t = torch.tensor([0.4], dtype=torch.float64)
    y = torch.randn(2, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda x: cot.velocity(t, y, x), u)
    assert torch.equal(torch.triu(jac, diagonal=1), torch.zeros(3, 3, dtype=torch.float64))
    assert bool((jac.diagonal().abs() > 0).all())


@pytest.mark.parametrize("ema_decay", [None, 0.9])  # with EMA the averaged weights are scored
def test_validation_keeps_the_best_state(ema_decay):
    pyro.set_rng_seed(0)
    u, y = gaussian_pairs(600)
    cot = COTFlowMatching(dim_u=1, dim_y=1, width=16, depth=2)
    history = cot.fit(u=u, y=y, steps=60, batch_size=64, coupling="independent", lr=3e-3,
                      validation=0.2, validate_every=20, validation_ode_steps=5,
                      ema_decay=ema_decay, progress=False)
    assert [s for s, _ in history.val_w2] == [20, 40, 60]
    assert history.best_w2 == min(w for _, w in history.val_w2)
    # the restored parameters are the best ones: recomputing their validation W2 agrees
    u_val = (u[:120] - cot.u_loc) / cot.u_scale
    y_val = (y[:120] - cot.y_loc) / cot.y_scale
    again = validation_w2(cot.velocity, u_val, y_val, ode_steps=5, seed=0)
    assert again == pytest.approx(history.best_w2, rel=1e-6)


def test_checkpoint_resume_continues_exactly(tmp_path):
    u, y = gaussian_pairs(300)
    # constant rate: the resumed runs below stop and continue at other totals of steps
    kwargs = dict(batch_size=32, coupling="full", eps=1e-2, lr=3e-3, progress=False,
                  checkpoint_every=5, lr_schedule="constant")

    def fresh() -> COTFlowMatching:
        pyro.set_rng_seed(0)
        return COTFlowMatching(dim_u=1, dim_y=1, width=8, depth=1)

    straight = fresh()
    straight.fit(u=u, y=y, steps=20, **kwargs)
    path = tmp_path / "cot.pt"
    first = fresh()
    first.fit(u=u, y=y, steps=10, checkpoint=path, **kwargs)
    assert torch.load(path, weights_only=False)["step"] == 10
    assert not list(tmp_path.glob("*.tmp*"))  # atomic write left no temporary file
    resumed = fresh()
    history = resumed.fit(u=u, y=y, steps=20, checkpoint=path, **kwargs)
    assert len(history.loss) == 20
    assert torch.load(path, weights_only=False)["step"] == 20
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="was written with"):
        fresh().fit(u=u, y=y, steps=30, checkpoint=path, **{**kwargs, "eps": 0.5})


def test_plan_refresh_draws_new_plans_and_resumes_exactly(tmp_path, monkeypatch):
    import pyro_kr.flow_matching.training as training

    calls = []
    real_plan = training.cot_plan

    def counting_plan(*args, **kwargs):
        calls.append(args[1].clone())  # the source noise the plan was computed for
        return real_plan(*args, **kwargs)

    monkeypatch.setattr(training, "cot_plan", counting_plan)
    u, y = gaussian_pairs(200)
    _, y_source = gaussian_pairs(200, seed=2)
    kwargs = dict(batch_size=32, coupling="full", eps=1e-2, lr=3e-3, progress=False,
                  checkpoint_every=5, plan_refresh_every=5, y_source=y_source,
                  lr_schedule="constant")

    def fresh() -> COTFlowMatching:
        pyro.set_rng_seed(0)
        return COTFlowMatching(dim_u=1, dim_y=1, width=8, depth=1)

    straight = fresh()
    history = straight.fit(u=u, y=y, steps=12, **kwargs)
    assert len(calls) == 3  # the first plan, then before steps 5 and 10
    assert not torch.equal(calls[0], calls[1]) and not torch.equal(calls[1], calls[2])
    assert history.coupling_seconds > 0
    path = tmp_path / "cot.pt"
    fresh().fit(u=u, y=y, steps=5, checkpoint=path, **kwargs)  # stops just before a refresh
    resumed = fresh()
    resumed.fit(u=u, y=y, steps=12, checkpoint=path, **kwargs)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="was written with"):
        fresh().fit(u=u, y=y, steps=30, checkpoint=path, **{**kwargs, "plan_refresh_every": 4})


def test_ema_weights_are_the_moving_average_of_the_trajectory():
    """With ``ema_decay`` the fitted weights are ``ema_k = d ema_{k-1} + (1 - d) p_k``."""
    u, y = gaussian_pairs(200)
    decay, steps = 0.7, 4
    kwargs = dict(batch_size=32, coupling="independent", lr=1e-2, progress=False,
                  lr_schedule="constant")

    def fresh() -> COTFlowMatching:
        pyro.set_rng_seed(0)
        return COTFlowMatching(dim_u=1, dim_y=1, width=8, depth=1)

    # a constant-lr run does not depend on the total steps: run k gives the weights after k
    trajectory = []
    for k in range(1, steps + 1):
        run = fresh()
        run.fit(u=u, y=y, steps=k, **kwargs)
        trajectory.append([p.detach().clone() for p in run.velocity.parameters()])
    expected = trajectory[0]
    for weights in trajectory[1:]:
        expected = [decay * e + (1 - decay) * w for e, w in zip(expected, weights, strict=True)]
    averaged = fresh()
    averaged.fit(u=u, y=y, steps=steps, ema_decay=decay, **kwargs)
    for got, want, raw in zip(averaged.velocity.parameters(), expected, trajectory[-1],
                              strict=True):
        assert torch.allclose(got, want, atol=1e-6)
        assert not torch.allclose(got, raw, atol=1e-6)  # not the raw last weights


class InterruptAt(VelocityMLP):
    """A velocity field that raises ``KeyboardInterrupt`` on its ``at``-th training call."""

    def __init__(self, *args, at: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.at = 0, at

    def forward(self, t, y, u):
        self.calls += 1
        if self.at is not None and self.calls == self.at:
            raise KeyboardInterrupt
        return super().forward(t, y, u)


def test_cosine_schedule_and_ema_resume_exactly_after_an_interrupt(tmp_path):
    u, y = gaussian_pairs(200)
    kwargs = dict(steps=20, batch_size=32, coupling="independent", lr=1e-2, progress=False,
                  checkpoint_every=5, ema_decay=0.8, lr_schedule="cosine")

    def fresh(at=None) -> COTFlowMatching:
        pyro.set_rng_seed(0)
        return COTFlowMatching(dim_u=1, dim_y=1, velocity=InterruptAt(1, 1, width=8, depth=1,
                                                                      at=at))

    straight = fresh()
    straight.fit(u=u, y=y, **kwargs)
    constant = fresh()
    constant.fit(u=u, y=y, **{**kwargs, "lr_schedule": "constant"})
    assert not torch.allclose(straight.velocity.net[0].weight, constant.velocity.net[0].weight)
    path = tmp_path / "cot.pt"
    with pytest.raises(KeyboardInterrupt):
        fresh(at=13).fit(u=u, y=y, checkpoint=path, **kwargs)
    assert torch.load(path, weights_only=False)["step"] == 10
    resumed = fresh()
    resumed.fit(u=u, y=y, checkpoint=path, **kwargs)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="was written with"):  # the schedule depends on steps
        fresh().fit(u=u, y=y, checkpoint=path, **{**kwargs, "steps": 30})


def test_plan_block_size_splits_the_full_plan_and_resumes(tmp_path, monkeypatch):
    import pyro_kr.flow_matching.couplings as couplings

    sizes = []
    real_plan = couplings.cot_plan

    def counting_plan(y0, *args, **kwargs):
        sizes.append(y0.shape[0])
        return real_plan(y0, *args, **kwargs)

    monkeypatch.setattr(couplings, "cot_plan", counting_plan)
    u, y = gaussian_pairs(120)
    _, y_source = gaussian_pairs(120, seed=2)
    kwargs = dict(batch_size=32, coupling="full", eps=1e-2, lr=3e-3, progress=False,
                  y_source=y_source, checkpoint_every=5, lr_schedule="constant")

    def fresh() -> COTFlowMatching:
        pyro.set_rng_seed(0)
        return COTFlowMatching(dim_u=1, dim_y=1, width=8, depth=1)

    whole, large_block = fresh(), fresh()
    whole.fit(u=u, y=y, steps=10, **kwargs)
    large_block.fit(u=u, y=y, steps=10, plan_block_size=500, **kwargs)  # one block: same run
    for a, b in zip(whole.parameters(), large_block.parameters(), strict=True):
        assert torch.equal(a, b)
    sizes.clear()
    blocked = fresh()
    blocked.fit(u=u, y=y, steps=10, plan_block_size=40, **kwargs)
    assert sizes == [40, 40, 40]
    assert not torch.equal(blocked.velocity.net[0].weight, whole.velocity.net[0].weight)
    path = tmp_path / "cot.pt"
    fresh().fit(u=u, y=y, steps=5, plan_block_size=40, checkpoint=path, **kwargs)
    resumed = fresh()
    resumed.fit(u=u, y=y, steps=10, plan_block_size=40, checkpoint=path, **kwargs)
    for a, b in zip(blocked.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="was written with"):
        fresh().fit(u=u, y=y, steps=20, checkpoint=path, **kwargs)  # no block size now


class NaNAfter(nn.Module):
    """A velocity whose output turns NaN from the ``bad``-th call on."""

    def __init__(self, bad: int):
        super().__init__()
        self.lin = nn.Linear(3, 1)
        self.calls, self.bad = 0, bad

    def forward(self, t, y, u):
        self.calls += 1
        out = self.lin(torch.cat([u, y, t], -1))
        return out * float("nan") if self.calls > self.bad else out


def test_nan_loss_names_the_step_and_restores_finite_parameters():
    u, y = gaussian_pairs(200)
    cot = COTFlowMatching(dim_u=1, dim_y=1, velocity=NaNAfter(bad=3))
    with pytest.raises(FloatingPointError, match="at step 3"):
        cot.fit(u=u, y=y, steps=10, batch_size=16, coupling="independent", progress=False)
    assert all(bool(torch.isfinite(p).all()) for p in cot.velocity.parameters())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"eps": 0.0}, ValueError, "eps must be > 0"),
        ({"eps": -1e-3}, ValueError, "eps must be > 0"),
        ({"sigma": -0.1}, ValueError, "sigma must be >= 0"),
        ({"lr": 0.0}, ValueError, "lr must be > 0"),
        ({"steps": 0}, ValueError, "steps must be >= 1"),
        ({"coupling": "sinkhorn"}, ValueError, "coupling must be one of"),
        ({"validation": 1.5}, ValueError, "validation must be None"),
        ({"y_source": torch.zeros(5, 2)}, ValueError, r"y_source must have shape \(m, 1\)"),
        ({"plan_refresh_every": 0}, ValueError, "plan_refresh_every must be >= 1"),
        ({"plan_refresh_every": 5, "coupling": "minibatch"}, ValueError,
         "plan_refresh_every applies to coupling='full' only"),
        ({"plan_block_size": 0}, ValueError, "plan_block_size must be >= 1"),
        ({"plan_block_size": 10, "coupling": "independent"}, ValueError,
         "plan_block_size applies to coupling='full' only"),
        ({"ema_decay": 1.0}, ValueError, r"ema_decay must be a float in \(0, 1\)"),
        ({"ema_decay": "0.9"}, ValueError, r"ema_decay must be a float in \(0, 1\)"),
        ({"lr_schedule": "linear"}, ValueError, "lr_schedule must be one of"),
    ],
)
def test_bad_fit_options_raise(kwargs, error, match):
    u, y = gaussian_pairs(50)
    cot = COTFlowMatching(dim_u=1, dim_y=1, width=8, depth=1)
    with pytest.raises(error, match=match):
        cot.fit(u=u, y=y, steps=kwargs.pop("steps", 2), progress=False, **kwargs)


def test_bad_data_raise():
    cot = COTFlowMatching(dim_u=2, dim_y=1, width=8, depth=1)
    u, y = torch.zeros(10, 2), torch.zeros(10, 1)
    with pytest.raises(ValueError, match=r"training u of shape \(n, 2\), got \(10, 1\)"):
        cot.fit(u=torch.zeros(10, 1), y=y, steps=1, progress=False)
    with pytest.raises(ValueError, match="equal rows"):
        cot.fit(u=u, y=torch.zeros(9, 1), steps=1, progress=False)
    bad = u.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="1 NaN/inf"):
        cot.fit(u=bad, y=y, steps=1, progress=False)
    with pytest.raises(TypeError, match="expected a tensor training u"):
        cot.fit(u=[[0.0, 0.0]], y=y, steps=1, progress=False)
    with pytest.raises(ValueError, match="needs u=... and y=..."):
        cot.fit(steps=1, progress=False)
    with pytest.raises(RuntimeError, match="before fit"):
        cot.posterior(torch.zeros(1))


def test_bad_constructor_and_posterior_inputs(trained):
    with pytest.raises(ValueError, match="needs a Pyro model"):
        COTFlowMatching(dim_u=1)
    with pytest.raises(ValueError, match="needs the data site name"):
        COTFlowMatching(lambda: None)
    with pytest.raises(TypeError, match="velocity must be an nn.Module"):
        COTFlowMatching(dim_u=1, dim_y=1, velocity=lambda t, y, u: u)
    with pytest.raises(ValueError, match=r"y_obs of shape \(\.\.\., 1\)"):
        trained.posterior(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="NaN or inf"):
        trained.posterior(torch.tensor([float("nan")]))


def small_model():
    scale = pyro.sample("scale", dist.LogNormal(0.0, 0.3))
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("obs", 3):
        pyro.sample("y", dist.Normal(loc.sum(-1), scale))


def unvectorizable_model():
    scale = pyro.sample("scale", dist.LogNormal(0.0, 0.3))
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("obs", 3):  # keepdim breaks broadcasting under an outer plate
        pyro.sample("y", dist.Normal(loc.sum(-1, keepdim=True), scale))


def test_model_mode_falls_back_to_sequential_simulation():
    cot = COTFlowMatching(unvectorizable_model, observed="y", width=8, depth=1)
    with pytest.warns(RuntimeWarning, match="falling back to a loop"):
        u, y = cot.simulator.simulate(20)
    assert u.shape == (20, 3) and y.shape == (20, 3)


def test_model_mode_simulates_trains_and_unpacks():
    pyro.set_rng_seed(0)
    cot = COTFlowMatching(small_model, observed="y", width=16, depth=1)
    assert (cot.dim_u, cot.dim_y) == (3, 3)
    u, y = cot.simulator.simulate(400)
    assert u.shape == (400, 3) and y.shape == (400, 3)
    assert abs(float(u[:, 0].std()) - 0.3) < 0.05  # packed unconstrained: log(scale)
    history = cot.fit(num_simulations=300, steps=5, batch_size=32, coupling="minibatch",
                      progress=False)
    assert len(history.loss) == 5
    post = cot.posterior(torch.tensor([[0.1, 0.2, 0.3], [1.0, 1.0, 1.0]]), ode_steps=3)
    draws = post.sample((7,))
    assert draws.shape == (7, 2, 3)
    sites = cot.unpack(draws)
    assert sites["scale"].shape == (7, 2) and sites["loc"].shape == (7, 2, 2)
    assert bool((sites["scale"] > 0).all())
    with pytest.raises(ValueError, match="do not pass u or y"):
        cot.fit(u=torch.zeros(3, 3), steps=1, progress=False)
    with pytest.raises(ValueError, match=r"observations of shape \(\.\.\., \(3,\)\)"):
        cot.posterior(torch.zeros(4))
    with pytest.raises(ValueError, match="not a sample site"):
        COTFlowMatching(small_model, observed="z")


def test_dtype_follows_the_velocity_module():
    u, y = gaussian_pairs(100)
    velocity = VelocityMLP(1, 1, width=8, depth=1).double()
    cot = COTFlowMatching(dim_u=1, dim_y=1, velocity=velocity)
    assert cot.u_loc.dtype == torch.float64
    cot.fit(u=u, y=y, steps=3, batch_size=16, coupling="minibatch", progress=False)
    assert cot.posterior(torch.zeros(2, 1)).sample((4,)).dtype == torch.float64


@pytest.mark.parametrize("coupling", ["independent", "full"])
def test_sample_mode_transform_y_applies_to_training_validation_and_source_data(coupling):
    """``transform_y=torch.log`` on positive ``y`` is the same fit as no transform on ``log y``:
    the same training, validation and source data, so the same draws at every query (before
    the fix the sample-based fit trained on raw ``y`` while ``posterior`` queried ``log y``)."""
    u, z = gaussian_pairs(300)
    y = z.exp()  # positive data whose log is the Gaussian joint's y
    y_val, y_src = z[:40].exp() * 1.1, z[40:140].exp() * 0.9
    draws = []
    for transform, yy, val, src in ((torch.log, y, y_val, y_src),
                                    (None, z, y_val.log(), y_src.log())):
        torch.manual_seed(0)
        cot = COTFlowMatching(dim_u=1, dim_y=1, width=8, depth=1, transform_y=transform)
        cot.fit(u=u, y=yy, steps=30, batch_size=32, coupling=coupling, progress=False,
                validation=(u[:40], val), validate_every=10,
                y_source=src if coupling == "full" else None)
        query = Y_QUERY.exp() if transform is not None else Y_QUERY
        torch.manual_seed(1)
        draws.append(cot.posterior(query, ode_steps=5).sample((50,)))
    assert torch.allclose(draws[0], draws[1], atol=1e-5)


def test_transform_y_outside_its_domain_is_a_clear_error():
    cot = COTFlowMatching(dim_u=1, dim_y=1, width=8, depth=1, transform_y=torch.log)
    u, y = torch.zeros(10, 1), torch.ones(10, 1)
    y[2] = -1.0
    with pytest.raises(ValueError, match="transform_y turned 1 entries of the training y"):
        cot.fit(u=u, y=y, steps=1, progress=False)
    with pytest.raises(ValueError, match="of the validation y into NaN/inf"):
        cot.fit(u=u, y=y.abs(), steps=1, progress=False, validation=(u[:3], -y[:3].abs()))
