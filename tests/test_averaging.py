"""pyro_kr.averaging: tail / exponential averages of Pyro's param store."""

from __future__ import annotations

import pyro
import pyro.distributions.constraints as constraints
import pytest
import torch

from pyro_kr.averaging import ParamAverage, average_start


def _run(avg: ParamAverage, values: list[torch.Tensor], name: str = "x") -> None:
    p = dict(pyro.get_param_store().named_parameters())[name]
    for v in values:  # stands for optimizer steps writing the unconstrained value
        with torch.no_grad():
            p.copy_(v)
        avg.update()


def test_tail_average_equals_hand_mean_and_swaps_in():
    pyro.clear_param_store()
    gen = torch.Generator().manual_seed(0)
    seq = [torch.randn(3, 2, generator=gen, dtype=torch.float64) for _ in range(10)]
    pyro.param("x", torch.zeros(3, 2, dtype=torch.float64))
    pyro.param("b", torch.ones(4))  # a second dtype group, never moved
    avg = ParamAverage(start=6)
    _run(avg, seq)
    assert avg.seen == 10 and avg.count == 4
    hand = torch.stack(seq[6:]).mean(0)
    torch.testing.assert_close(avg.averaged()["x"], hand, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(avg.averaged()["b"], torch.ones(4))
    live = pyro.param("x")
    replaced = avg.swap_in()
    assert pyro.param("x") is live  # in place: modules holding the tensor see the average
    torch.testing.assert_close(pyro.param("x").detach(), hand, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(replaced["x"], seq[-1])
    assert pyro.param("x").dtype == torch.float64 and pyro.param("x").requires_grad


def test_ema_matches_hand_recursion():
    pyro.clear_param_store()
    seq = [torch.full((2,), float(t)) for t in range(1, 8)]
    pyro.param("x", torch.zeros(2))
    avg = ParamAverage(start=2, decay=0.9)
    _run(avg, seq)
    hand = seq[2].clone()
    for v in seq[3:]:
        hand = 0.9 * hand + 0.1 * v
    assert avg.count == 5
    torch.testing.assert_close(avg.averaged()["x"], hand)


def test_constrained_parameter_is_averaged_unconstrained():
    # positive: the store keeps log x, so the swapped-in value is the geometric mean
    pyro.clear_param_store()
    pyro.param("s", torch.tensor([1.0]), constraint=constraints.positive)
    values = torch.tensor([1.0, 4.0, 16.0])
    avg = ParamAverage()
    _run(avg, [v.log().reshape(1) for v in values], name="s")
    avg.swap_in()
    assert pyro.param("s").item() == pytest.approx(4.0, rel=1e-6)  # not the arithmetic 7
    assert pyro.param("s").item() != pytest.approx(values.mean().item())


def test_state_dict_round_trip_and_names():
    pyro.clear_param_store()
    pyro.param("x", torch.zeros(2))
    pyro.param("y", torch.zeros(1))
    seq = [torch.full((2,), float(t)) for t in range(6)]
    a = ParamAverage(start=1, names=["x"])
    _run(a, seq[:3])
    b = ParamAverage(start=1, names=["x"])
    b.load_state_dict(a.state_dict())
    _run(a, seq[3:])
    _run(b, seq[3:])
    torch.testing.assert_close(a.averaged()["x"], b.averaged()["x"])
    torch.testing.assert_close(a.averaged()["x"], torch.stack(seq[1:]).mean(0))
    assert list(a.averaged()) == ["x"]
    with pytest.raises(ValueError, match="start="):
        ParamAverage(start=2).load_state_dict(a.state_dict())


def test_average_start():
    assert average_start(None, 100) is None
    assert average_start(0.75, 1000) == 750
    assert average_start(0.5, 3) == 1
    assert average_start(0, 10) == 0 and average_start(9, 10) == 9
    for bad in (0.0, 1.0, 1.5, -0.2, 10, -1, True, "0.5"):
        with pytest.raises(ValueError, match="average_from"):
            average_start(bad, 10)
    with pytest.raises(ValueError, match="steps"):
        average_start(0.5, 0)


def test_errors():
    with pytest.raises(ValueError, match="start"):
        ParamAverage(start=-1)
    with pytest.raises(ValueError, match="decay"):
        ParamAverage(decay=1.0)
    pyro.clear_param_store()
    pyro.param("x", torch.zeros(1))
    avg = ParamAverage(start=3)
    avg.update()
    with pytest.raises(RuntimeError, match="no iterate averaged yet"):
        avg.swap_in()
    avg = ParamAverage()
    avg.update()
    pyro.param("z", torch.zeros(1))
    with pytest.raises(RuntimeError, match="new: \\['z'\\]"):
        avg.update()
    with pytest.raises(RuntimeError, match="no parameters"):
        ParamAverage(names=["nope"]).update()


def test_averaged_svi_on_a_conjugate_model_is_closer_than_the_last_iterate():
    # Noisy SGD on a Gaussian mean (closed form): the tail average lands nearer the exact
    # posterior mean than the last iterate, over several seeds.
    data = torch.tensor([0.3, -0.1, 0.8, 0.5])
    exact = data.sum() / (len(data) + 1)  # N(0, 1) prior, unit noise

    def model():
        mu = pyro.sample("mu", pyro.distributions.Normal(0.0, 1.0))
        with pyro.plate("n", len(data)):
            pyro.sample("obs", pyro.distributions.Normal(mu, 1.0), obs=data)

    def guide():
        loc = pyro.param("loc", torch.tensor(0.0))
        pyro.sample("mu", pyro.distributions.Normal(loc, 0.45))

    last_err, avg_err = [], []
    for seed in range(4):
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        svi = pyro.infer.SVI(model, guide, pyro.optim.SGD({"lr": 0.05}), pyro.infer.Trace_ELBO())
        avg = ParamAverage(start=200)
        for _ in range(600):
            svi.step()
            avg.update()
        last_err.append(abs(pyro.param("loc").item() - exact.item()))
        avg.swap_in()
        avg_err.append(abs(pyro.param("loc").item() - exact.item()))
    assert sum(avg_err) < 0.5 * sum(last_err)
    assert max(avg_err) < 0.05
