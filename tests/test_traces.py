"""pyro_kr.traces: the one trace-utilities module (plate depth, draws, fallback, packing)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_kr import traces


def plated_model(n: int = 3):
    s = pyro.sample("s", dist.LogNormal(0.0, 0.5))
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("data", n, subsample_size=2):
        pyro.sample("y", dist.Normal(loc.sum(-1), s))


def broken_model():
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("data", 3):  # keepdim: does not broadcast under an outer plate
        pyro.sample("y", dist.Normal(loc.sum(-1, keepdim=True), 1.0))


def test_plate_depth_and_sites_skip_subsample_draws():
    trace = poutine.trace(plated_model).get_trace()
    assert traces.plate_depth(trace) == 1
    names = [s["name"] for s in traces.sample_sites(trace, subsample=False)]
    assert names == ["s", "loc", "y"]
    assert any(traces.is_subsample(s) for s in traces.sample_sites(trace))


def test_pack_unpack_round_trip_through_constraints():
    trace = poutine.trace(plated_model).get_trace()
    sites = traces.latent_sites(trace, exclude=("y",))
    assert [s.name for s in sites] == ["s", "loc"] and sum(s.numel for s in sites) == 3
    values = {"s": torch.tensor([0.5, 2.0]), "loc": torch.tensor([[1.0, -1.0], [0.0, 3.0]])}
    u = traces.pack(values, sites, 2)
    torch.testing.assert_close(u[:, 0], values["s"].log())
    back = traces.unpack(u, sites)
    for k in values:
        torch.testing.assert_close(back[k], values[k])
    with pytest.raises(ValueError, match=r"unpack expected shape \(\.\.\., 3\)"):
        traces.unpack(torch.zeros(2, 4), sites)


def test_simulate_pairs_is_seeded_and_falls_back_to_a_loop():
    shapes = {"loc": torch.Size([2]), "y": torch.Size([3])}
    a = traces.simulate_pairs(broken_model, (), {}, shapes, 4, depth=1, seed=3,
                              vectorize=False)
    b = traces.simulate_pairs(broken_model, (), {}, shapes, 4, depth=1, seed=3,
                              vectorize=False)
    torch.testing.assert_close(a["y"], b["y"])  # seeded: reproducible
    assert a["loc"].shape == (4, 2) and a["y"].shape == (4, 3)
    with pytest.warns(RuntimeWarning, match="vectorized simulation failed.*loop over 4 draws"):
        traces.simulate_pairs(broken_model, (), {}, shapes, 4, depth=1, seed=3)
    with pytest.raises(Exception):  # noqa: B017 - vectorize=True propagates the model's error
        traces.simulate_pairs(broken_model, (), {}, shapes, 4, depth=1, seed=3, vectorize=True)


def test_as_draws_refuses_a_wrong_number_of_values():
    assert traces.as_draws(torch.zeros(6), 3, (2,)).shape == (3, 2)
    assert traces.as_draws(torch.ones(2), 3, (2,)).shape == (3, 2)  # draws-free: expanded
    with pytest.raises(ValueError, match="is not 3 draws of"):
        traces.as_draws(torch.zeros(5), 3, (2,))


def test_log_prob_per_draw_sums_each_draw_and_refuses_other_shapes():
    def model():
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 3):
            pyro.sample("y", dist.Normal(loc, 1.0), obs=torch.arange(3.0))

    trace = poutine.trace(traces.draws_plate(model, 5, depth=1)).get_trace()
    trace.compute_log_prob()
    loc, y = trace.nodes["loc"]["value"], trace.nodes["y"]["value"]
    assert loc.shape == (5, 1)
    expected = dist.Normal(loc, 1.0).log_prob(y).sum(-1)
    got = traces.log_prob_per_draw(trace.nodes["y"]["log_prob"], 5, depth=1)
    assert torch.allclose(got, expected)
    assert traces.log_prob_per_draw(torch.tensor(2.0), 5, depth=1).tolist() == [2.0] * 5
    with pytest.raises(ValueError, match="does not broadcast over draws"):
        traces.log_prob_per_draw(torch.zeros(4, 3), 5, depth=1)


def test_simulate_pairs_runs_inside_a_plate_of_draws():
    """A guide that simulates (amortized reverse mode) is diagnosed inside the draws plate:
    simulate_pairs must use its own plate name and stay vectorized there."""
    import warnings

    shapes = {"loc": torch.Size([2]), "y": torch.Size([3])}

    def model():
        loc = pyro.sample("loc", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("data", 3):
            pyro.sample("y", dist.Normal(loc[..., 0], 1.0))

    def outer():
        return traces.simulate_pairs(model, (), {}, shapes, 4, depth=1, seed=0)

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to the loop
        out = traces.draws_plate(outer, 5, depth=2)()
    assert out["y"].shape == (4, 3)
