"""AutoKR against closed forms: a linear-Gaussian model whose posterior is exactly known.

For ``z ~ N(0, I)``, ``y ~ N(A z, sigma^2 I)`` the posterior is ``N(m, S)`` with
``S = (I + A^T A / sigma^2)^-1`` and ``m = S A^T y / sigma^2``; its KR map from ``N(0, I)`` in
the site order is ``m + cholesky(S) x`` (docs/maps.md). Training uses many particles and
a decaying learning rate so that the gradient noise is far below the tolerances.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.infer import SVI, Predictive, Trace_ELBO, config_enumerate
from pyro.infer.autoguide.initialization import init_to_value
from pyro.optim import Adam, ClippedAdam

from pyro_kr import Annealing, AutoKR, TransportELBO, fit
from pyro_kr.transforms import MonotoneTriangular, TriangularAffine
from tests.conftest import DEVICES

DT = torch.float64
A = torch.tensor(
    [[1.0, 0.5, 0.0], [0.3, 1.0, -0.4], [0.0, 0.7, 1.0], [0.5, -0.5, 0.5]], dtype=DT
)
SIGMA = 0.5
Y = torch.tensor([0.8, -0.3, 1.1, 0.2], dtype=DT)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def linear_model(y=None, device="cpu"):
    """Sites ``a`` (scalar) and ``b`` (2-vector): packed latent ``z = (a, b1, b2)``."""
    device = y.device if y is not None else device
    a = pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=DT, device=device), 1.0))
    b = pyro.sample("b", dist.Normal(torch.zeros(2, dtype=DT, device=device), 1.0).to_event(1))
    z = torch.cat([a.unsqueeze(-1), b], -1)
    return pyro.sample("y", dist.Normal(z @ A.to(z).T, SIGMA).to_event(1), obs=y)


def exact_posterior() -> tuple[torch.Tensor, torch.Tensor]:
    cov = torch.linalg.inv(torch.eye(3, dtype=DT) + A.T @ A / SIGMA**2)
    return cov @ A.T @ Y / SIGMA**2, cov


def train(guide, steps: int = 1000, particles: int = 128) -> None:
    # one thread also in module-scoped fixtures, which run before the function-scoped one
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loss = TransportELBO(Annealing(steps=steps // 2), num_particles=particles)
        fit(linear_model, guide, Y, loss=loss, steps=steps, progress=False,
            optim=ClippedAdam({"lr": 0.03, "lrd": 0.995}))
    finally:
        torch.set_num_threads(threads)


def packed_draws(guide, n: int) -> torch.Tensor:
    draws = guide.sample_posterior(n, Y)
    return torch.cat([draws["a"].unsqueeze(-1), draws["b"]], -1)


@pytest.fixture(scope="module")
def affine_guide():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    guide = AutoKR(linear_model, map="affine")
    train(guide)
    return guide


@pytest.fixture(scope="module")
def monotone_guide():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    guide = AutoKR(linear_model, map="monotone")
    train(guide)
    return guide


# -- closed forms ------------------------------------------------------------------------------
def test_affine_recovers_mean_and_cholesky_factor(affine_guide):
    mean, cov = exact_posterior()
    affine = affine_guide.transform[-1]
    assert isinstance(affine, TriangularAffine) and len(affine_guide.transform) == 1
    assert (affine.loc.detach() - mean).abs().max() < 0.05
    assert (affine.scale_tril.detach() - torch.linalg.cholesky(cov)).abs().max() < 0.05


def test_monotone_matches_mean_and_covariance(monotone_guide):
    mean, cov = exact_posterior()
    sd = cov.diagonal().sqrt()
    z = packed_draws(monotone_guide, 200_000)  # Monte Carlo error ~0.01 sd units
    assert ((z.mean(0) - mean) / sd).abs().max() < 0.05
    assert ((torch.cov(z.T) - cov) / torch.outer(sd, sd)).abs().max() < 0.05


def test_monotone_sample_w2_is_at_the_noise_floor(monotone_guide):
    pytest.importorskip("ot")
    from pyro_kr.metrics import w2

    mean, cov = exact_posterior()
    chol = torch.linalg.cholesky(cov)
    n, repeats = 1000, 5
    gen = torch.Generator().manual_seed(0)

    def exact(k: int) -> torch.Tensor:
        return mean + torch.randn(k, 3, generator=gen, dtype=DT) @ chol.T

    floor = sum(w2(exact(n), exact(n)) for _ in range(repeats)) / repeats
    pyro.set_rng_seed(1)
    ours = sum(w2(packed_draws(monotone_guide, n), exact(n)) for _ in range(repeats)) / repeats
    assert ours < 1.1 * floor


def test_order_gives_the_cholesky_factor_of_the_permuted_covariance():
    guide = AutoKR(linear_model, map="affine", order=["b", "a"])
    train(guide)
    assert guide.order == ["b", "a"]
    assert list(guide.site_slices()) == ["b", "a"]
    mean, cov = exact_posterior()
    perm = torch.tensor([1, 2, 0])  # packed (b1, b2, a)
    affine = guide.transform[-1]
    chol = torch.linalg.cholesky(cov[perm][:, perm])
    assert (affine.loc.detach() - mean[perm]).abs().max() < 0.05
    assert (affine.scale_tril.detach() - chol).abs().max() < 0.05
    # a different ordering is a different map: the factors are not permutations of each other
    assert (chol - torch.linalg.cholesky(cov)[perm][:, perm]).abs().max() > 0.05
    draws = guide.sample_posterior(5, Y)
    assert draws["a"].shape == (5,) and draws["b"].shape == (5, 2)


# -- what any autoguide offers ----------------------------------------------------------------
def test_median_is_the_map_at_zero_and_quantiles_bracket_it(affine_guide):
    mean, cov = exact_posterior()
    median = affine_guide.median(Y)
    torch.testing.assert_close(median["a"], affine_guide.transform[-1].loc[0].detach())
    assert abs(median["a"] - mean[0]) < 0.05
    assert median["b"].shape == (2,)
    pyro.set_rng_seed(0)
    q = affine_guide.quantiles([0.1587, 0.5, 0.8413], Y, num_samples=40_000)
    assert q["a"].shape == (3,) and q["b"].shape == (3, 2)
    sd = cov.diagonal().sqrt()
    torch.testing.assert_close(q["a"][1], median["a"], atol=0.02, rtol=0)
    assert (q["a"][2] - q["a"][0]) / 2 == pytest.approx(sd[0].item(), rel=0.05)
    assert ((q["b"][2] - q["b"][0]) / 2 / sd[1:] - 1).abs().max() < 0.05
    with pytest.raises(ValueError, match="quantiles must be a list of numbers in"):
        affine_guide.quantiles([0.5, 1.5], Y)


def test_predictive_works(affine_guide):
    pred = Predictive(linear_model, guide=affine_guide, num_samples=50)(Y)
    assert pred["a"].shape == (50,)
    assert pred["b"].shape == (50, 2)
    assert pred["y"].shape == (50, 4)
    torch.testing.assert_close(pred["y"], Y.expand(50, 4))  # observed: the data
    # posterior predictive of new data: mean A m, covariance A S A^T + sigma^2 I
    mean, cov = exact_posterior()
    pred = Predictive(linear_model, guide=affine_guide, num_samples=20_000, parallel=True,
                      return_sites=["y"])(None)
    assert pred["y"].shape == (20_000, 4)
    sd = (A @ cov @ A.T + SIGMA**2 * torch.eye(4, dtype=DT)).diagonal().sqrt()
    assert ((pred["y"].mean(0) - A @ mean) / sd).abs().max() < 0.05
    assert (pred["y"].std(0) / sd - 1).abs().max() < 0.05


def test_param_store_save_and_load(tmp_path):
    guide = AutoKR(linear_model)
    svi = SVI(linear_model, guide, Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(5):
        svi.step(Y)
    before = guide.median(Y)
    path = tmp_path / "params.pt"
    pyro.get_param_store().save(path)

    pyro.clear_param_store()
    fresh = AutoKR(linear_model)
    fresh(Y)
    assert not torch.allclose(fresh.median(Y)["b"], before["b"])
    pyro.get_param_store().load(path)
    after = fresh.median(Y)
    for name in before:
        torch.testing.assert_close(after[name], before[name])
    # the loaded guide keeps training from the loaded values
    SVI(linear_model, fresh, Adam({"lr": 0.05}), Trace_ELBO()).step(Y)
    assert not torch.equal(fresh.median(Y)["b"], after["b"])


def test_initialization_is_affine_around_init_loc_with_init_scale():
    values = {"a": torch.tensor(0.7, dtype=DT), "b": torch.tensor([-1.0, 2.0], dtype=DT)}
    guide = AutoKR(linear_model, init_loc_fn=init_to_value(values=values), init_scale=0.2)
    guide(Y)
    assert [type(t) for t in guide.transform] == [MonotoneTriangular, MonotoneTriangular,
                                                  TriangularAffine]
    median = guide.median(Y)
    torch.testing.assert_close(median["a"], values["a"], atol=1e-3, rtol=0)
    torch.testing.assert_close(median["b"], values["b"], atol=1e-3, rtol=0)
    x = torch.randn(1000, 3, dtype=DT)
    z = guide.get_transform()(x)
    loc = torch.cat([values["a"].reshape(1), values["b"]])
    torch.testing.assert_close(z, loc + 0.2 * x, atol=0.02, rtol=0)


def test_laplace_init_is_the_exact_kr_map_of_a_gaussian_posterior():
    mean, cov = exact_posterior()
    guide = AutoKR(linear_model, map="affine", init_scale="laplace")
    guide(Y)  # no training at all
    affine = guide.transform[-1]
    torch.testing.assert_close(affine.loc.detach(), mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(affine.scale_tril, torch.linalg.cholesky(cov), atol=1e-6, rtol=0)


def test_laplace_init_of_the_monotone_map_starts_at_the_gaussian_kr_map():
    mean, cov = exact_posterior()
    guide = AutoKR(linear_model, init_scale="laplace")
    guide(Y)
    x = torch.randn(1000, 3, dtype=DT)
    z = guide.get_transform()(x).detach()
    expected = mean + x @ torch.linalg.cholesky(cov).T
    assert float((z - expected).abs().max()) < 0.05


def test_laplace_init_works_in_the_unconstrained_space_of_a_constrained_site():
    # s ~ Gamma(a, b): u = log s has density exp(a u - b e^u), mode log(a / b), variance 1 / a
    a, b = 4.0, 2.0

    def model():
        pyro.sample("s", dist.Gamma(torch.tensor(a, dtype=DT), torch.tensor(b, dtype=DT)))

    guide = AutoKR(model, map="affine", init_scale="laplace")
    guide()
    affine = guide.transform[-1]
    assert float(affine.loc.detach()) == pytest.approx(math.log(a / b), abs=1e-6)
    assert float(affine.scale_tril.detach()) == pytest.approx(1 / math.sqrt(a), abs=1e-6)


@pytest.mark.parametrize(
    ("factor", "match"),
    [
        (lambda z: z.exp(), "ran off to a non-finite point"),  # log p -> inf as z -> inf
        (lambda z: z**2, "not positive definite"),  # log p = z^2 / 2: a minimum at the start
    ],
    ids=["unbounded", "minimum"],
)
@pytest.mark.filterwarnings("ignore:Encountered")
def test_laplace_init_without_a_mode_is_a_clear_error(factor, match):
    from pyro_kr.guides.laplace import LaplaceError

    def model():
        z = pyro.sample("z", dist.Normal(torch.tensor(0.0, dtype=DT), 1.0))
        pyro.factor("f", factor(z))

    guide = AutoKR(model, map="affine", init_scale="laplace")
    with pytest.raises(LaplaceError, match=f"init_scale='laplace'.*{match}.*numeric init_scale"):
        guide()


@pytest.mark.parametrize("seed", range(5))
def test_laplace_init_on_a_centered_funnel_is_a_clear_error(seed):
    # the density grows without bound as v -> -inf: the search ends either where the model's
    # own validation rejects the scale exp(v / 2) (it underflows to 0), or at a "mode" in the
    # neck whose Laplace scales (~1e-9) are below what the affine map represents. Seeds 1 and 4
    # took the second path and used to crash with a plain ValueError from set_scale_tril.
    import pyro_kr.bench.problems as problems
    from pyro_kr.guides.laplace import LaplaceError

    pyro.set_rng_seed(seed)
    p = problems.get("funnel")
    guide = AutoKR(p.model, init_scale="laplace")
    with pytest.raises(LaplaceError, match="init_scale='laplace'.*numeric init_scale"):
        guide(y=p.observation(0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"init_scale": "hessian"},
         "init_scale must be a positive number, 'laplace' or 'laplace_scale'"),
        ({"map": "spline"}, r"map must be one of \('monotone', 'affine'\), got 'spline'"),
        ({"init_scale": 0.0}, "init_scale must be > 0, got 0.0"),
        ({"map": "affine", "hidden_dims": [8]}, "map='affine' takes no map options"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AutoKR(linear_model, **kwargs)


@pytest.mark.parametrize("order", [["c"], ["a", "a"]])
def test_order_validation(order):
    guide = AutoKR(linear_model, order=order)
    with pytest.raises(ValueError, match=r"order must list distinct latent sites.*\['a', 'b'\]"):
        guide(Y)


def test_map_options_reach_the_monotone_layers():
    guide = AutoKR(linear_model, depth=1, hidden_dims=[7])
    guide(Y)
    assert len(guide.transform) == 2
    widths = {m.out_features for m in guide.transform[0].modules() if hasattr(m, "out_features")}
    assert 7 in widths


# -- model structure ---------------------------------------------------------------------------
def constrained_model():
    one = torch.tensor(1.0, dtype=DT)
    scale = pyro.sample("scale", dist.HalfCauchy(one))
    frac = pyro.sample("frac", dist.Beta(2 * one, 3 * one))
    probs = pyro.sample("probs", dist.Dirichlet(torch.ones(3, dtype=DT)))
    corr = pyro.sample("corr", dist.LKJCholesky(3, concentration=one))
    with pyro.plate("groups", 2):  # a latent inside a global plate
        pyro.sample("u", dist.Normal(torch.zeros(2, dtype=DT), 1.0))
    with pyro.plate("data", 4):
        pyro.sample("x", dist.Normal(scale * frac, 1.0), obs=torch.zeros(4, dtype=DT))
    pyro.sample("k", dist.Categorical(probs), obs=torch.tensor(1))
    return corr


def test_constrained_sites_round_trip():
    guide = AutoKR(constrained_model)
    loss = TransportELBO(Annealing(steps=10), num_particles=4)
    history = fit(constrained_model, guide, loss=loss, steps=10, progress=False)
    assert all(math.isfinite(v) for v in history.loss)
    x = torch.randn(200, guide.latent_dim, dtype=DT)
    latent = guide.get_transform()(x)
    values = guide._constrain(latent)
    assert values["scale"].shape == (200,) and bool((values["scale"] > 0).all())
    assert bool(((values["frac"] > 0) & (values["frac"] < 1)).all())
    assert values["probs"].shape == (200, 3)
    torch.testing.assert_close(values["probs"].sum(-1), torch.ones(200, dtype=DT))
    assert values["corr"].shape == (200, 3, 3)
    assert bool(dist.constraints.corr_cholesky.check(values["corr"]).all())
    # constrained -> unconstrained -> packed -> reference and back
    blocks = []
    for name, block in guide.site_slices().items():
        support = guide.prototype_trace.nodes[name]["fn"].support
        blocks.append(biject_to(support).inv(values[name]).reshape(200, -1))
        assert blocks[-1].shape[-1] == block.stop - block.start
    repacked = torch.cat(blocks, -1)
    torch.testing.assert_close(repacked, latent, atol=1e-8, rtol=1e-8)
    pyro.clear_param_store()  # drop the transform's cache
    torch.testing.assert_close(guide.get_transform().inv(repacked.detach().clone()), x,
                               atol=1e-6, rtol=1e-6)
    draws = guide.sample_posterior(50)
    assert set(draws) == {"scale", "frac", "probs", "corr", "u"}
    assert draws["u"].shape == (50, 2) and draws["corr"].shape == (50, 3, 3)


def test_data_subsampling_model_trains():
    data = torch.randn(100, dtype=DT) + 3.0

    def model(data):
        loc = pyro.sample("loc", dist.Normal(torch.tensor(0.0, dtype=DT), 10.0))
        with pyro.plate("data", len(data), subsample_size=10) as idx:
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=data[idx])

    guide = AutoKR(model, map="affine")
    loss = TransportELBO(Annealing(steps=100), num_particles=4)
    fit(model, guide, data, loss=loss, steps=300, lr=0.05, progress=False)
    assert guide.latent_dim == 1
    assert abs(guide.median(data)["loc"] - data.mean()) < 0.3


def test_discrete_latents_give_a_clear_error():
    @config_enumerate
    def model():
        k = pyro.sample("k", dist.Categorical(torch.ones(3, dtype=DT) / 3))
        pyro.sample("x", dist.Normal(k.to(DT), 1.0), obs=torch.tensor(0.5, dtype=DT))

    guide = AutoKR(model)
    with pytest.raises(ValueError, match=r"continuous latent sites only; \['k'\] are discrete"
                       ) as info:
        guide()
    assert "TraceEnum_ELBO" in str(info.value) and "config_enumerate" in str(info.value)


@pytest.mark.parametrize("device", DEVICES)
def test_runs_on_every_device(device):
    y = Y.to(device)
    guide = AutoKR(linear_model)
    fit(linear_model, guide, y, loss=TransportELBO(Annealing(steps=5), num_particles=4),
        steps=5, progress=False)
    draws = guide.sample_posterior(10, y)
    assert draws["b"].device.type == device
    assert guide.median(y)["a"].device.type == device
    guide.to("cpu")
    assert all(p.device.type == "cpu" for p in guide.parameters())
    if device != "cpu":
        cpu_draws = guide.sample_posterior(10, Y)
        assert cpu_draws["b"].device.type == "cpu"


def test_guide_trace_exposes_the_packed_latent_and_sites():
    guide = AutoKR(linear_model, map="affine")
    trace = poutine.trace(guide).get_trace(Y)
    latent = trace.nodes["_AutoKR_latent"]["value"]
    assert latent.shape == (3,)
    torch.testing.assert_close(trace.nodes["a"]["value"], latent[0])
    torch.testing.assert_close(trace.nodes["b"]["value"], latent[1:])
