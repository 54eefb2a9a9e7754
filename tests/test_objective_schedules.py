"""Annealing schedules: values of every kind, ramp then hold, state_dict, validation."""

from __future__ import annotations

import math

import pytest

from pyro_kr import Annealing
from pyro_kr.objective.schedules import (
    DEFAULT_EPS,
    DEFAULT_LAM,
    ConstantSchedule,
    CosineSchedule,
    GeometricSchedule,
    LinearSchedule,
)


def test_geometric_values_have_a_constant_ratio():
    s = GeometricSchedule(1.0, 1e-4, 4)
    values = [s(k) for k in range(5)]
    assert values == pytest.approx([1.0, 1e-1, 1e-2, 1e-3, 1e-4], rel=1e-12)


def test_linear_values():
    s = LinearSchedule(1.0, 0.2, 4)
    assert [s(k) for k in range(5)] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2], rel=1e-12)


def test_cosine_values_are_slow_at_both_ends():
    s = CosineSchedule(1.0, 0.0, 4)
    expected = [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(5)]
    assert [s(k) for k in range(5)] == pytest.approx(expected, abs=1e-12)
    assert s(2) == pytest.approx(0.5)
    # first and last steps move less than the middle ones
    assert s(0) - s(1) < s(1) - s(2)
    assert s(3) - s(4) < s(2) - s(3)


def test_constant_schedule():
    s = ConstantSchedule.of(3.0)
    assert [s(k) for k in (0, 5, 10_000)] == [3.0, 3.0, 3.0]
    assert ConstantSchedule.of(math.inf)(7) == math.inf


@pytest.mark.parametrize("cls", [GeometricSchedule, LinearSchedule, CosineSchedule])
def test_every_kind_ramps_then_holds(cls):
    s = cls(1.0, 1e-2, 10)
    assert s(0) == pytest.approx(1.0)
    assert s(10) == pytest.approx(1e-2)
    assert s(11) == s(10) == s(10_000)
    assert s(-3) == s(0)  # clamped below too
    values = [s(k) for k in range(11)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_zero_step_schedule_is_at_its_end():
    assert GeometricSchedule(1.0, 1e-3, 0)(0) == pytest.approx(1e-3)


def test_annealing_pairs_eps_and_lam_and_counts_steps():
    a = Annealing(eps=(1.0, 1e-2), lam=(1.0, 1e2), steps=2)
    assert a.values(0) == pytest.approx((1.0, 1.0))
    assert a.values(1) == pytest.approx((0.1, 10.0))
    assert a.values(2) == a.values(50) == pytest.approx((0.01, 100.0))
    assert (a.eps, a.lam) == pytest.approx((1.0, 1.0))
    a.step()
    assert (a.eps, a.lam) == pytest.approx((0.1, 10.0))
    for _ in range(10):
        a.step()
    assert a.step_count == 11
    assert (a.eps, a.lam) == pytest.approx((0.01, 100.0))


@pytest.mark.parametrize("kind", ["geometric", "linear", "cosine"])
def test_annealing_kind_selects_the_schedule(kind):
    a = Annealing(eps=(1.0, 0.1), lam=(1.0, 10.0), steps=4, kind=kind)
    expected = {"geometric": GeometricSchedule, "linear": LinearSchedule,
                "cosine": CosineSchedule}[kind]
    assert type(a.eps_schedule) is expected
    assert type(a.lam_schedule) is expected
    assert a.values(4) == pytest.approx((0.1, 10.0))


def test_annealing_defaults_are_the_documented_constants():
    a = Annealing(steps=10)
    assert (a.eps_schedule.start, a.eps_schedule.end) == DEFAULT_EPS
    assert (a.lam_schedule.start, a.lam_schedule.end) == DEFAULT_LAM
    assert isinstance(a.eps_schedule, GeometricSchedule)


def test_annealing_accepts_constants_and_schedules():
    a = Annealing(eps=1.0, lam=math.inf, steps=5)
    assert a.values(3) == (1.0, math.inf)
    a = Annealing(eps=LinearSchedule(1.0, 0.5, 2), lam=ConstantSchedule.of(4.0), steps=99)
    assert a.values(1) == pytest.approx((0.75, 4.0))


def test_state_dict_round_trip():
    a = Annealing(eps=(1.0, 1e-3), lam=(1.0, 1e4), steps=100)
    for _ in range(37):
        a.step()
    state = a.state_dict()
    b = Annealing(eps=(1.0, 1e-3), lam=(1.0, 1e4), steps=100)
    assert b.values(b.step_count) != a.values(a.step_count)
    b.load_state_dict(state)
    assert b.step_count == 37
    assert (b.eps, b.lam) == (a.eps, a.lam)
    a.step()
    b.step()
    assert (b.eps, b.lam) == (a.eps, a.lam)


def test_repr_shows_the_step():
    a = Annealing(steps=3)
    a.step()
    assert "step_count=1" in repr(a)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": (1.5, 1e-3)}, r"eps must lie in \(0, 1\]"),
        ({"eps": (1.0, 0.0)}, r"eps must lie in \(0, 1\]"),
        ({"eps": (1.0, 0.0), "kind": "linear"}, r"eps must lie in \(0, 1\]"),
        ({"eps": (1.0, 2.0), "kind": "linear"}, r"eps must lie in \(0, 1\]"),
        ({"eps": (0.1, 0.5)}, "eps must not increase"),
        ({"lam": (0.0, 10.0)}, "lam must be > 0"),
        ({"lam": (1.0, math.inf)}, "a lam ramp needs finite ends"),
        ({"steps": 0}, r"steps=0\) leaves no room for the ramp eps"),
        ({"lam": -1.0}, "lam must be > 0"),
        ({"lam": (10.0, 1.0)}, "lam must not decrease"),
        ({"steps": -1}, "steps must be a non-negative int"),
        ({"steps": 2.5}, "steps must be a non-negative int"),
        ({"steps": True}, "steps must be a non-negative int"),
        ({"eps": "big"}, "eps must be a number, a"),
        ({"eps": (1.0, 0.1, 0.01)}, "eps must be a number, a"),
        ({"kind": "exponential"}, "kind must be one of"),
    ],
)
def test_annealing_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Annealing(**({"steps": 10} | kwargs))


def test_schedule_validation():
    with pytest.raises(ValueError, match="must be a number"):
        LinearSchedule(float("nan"), 0.0, 3)
    with pytest.raises(ValueError, match="steps must be"):
        LinearSchedule(1.0, 0.0, -2)
    with pytest.raises(ValueError, match="ConstantSchedule"):
        GeometricSchedule(1.0, math.inf, 3)


def test_over_ramps_over_the_default_share_of_the_budget():
    from pyro_kr.objective.schedules import DEFAULT_EPS, DEFAULT_LAM, RAMP_FRACTION

    a = Annealing.over(1000)
    assert a.steps == int(RAMP_FRACTION * 1000) == 700
    assert a.values(0) == (DEFAULT_EPS[0], DEFAULT_LAM[0])
    assert a.values(700) == pytest.approx((DEFAULT_EPS[1], DEFAULT_LAM[1]))
    assert a.values(1000) == a.values(700)  # held afterwards
    assert Annealing.over(1).steps == 1  # never an empty ramp
    assert Annealing.over(10, fraction=0.5, eps=(0.1, 0.01)).values(5)[0] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="fraction must lie in"):
        Annealing.over(10, fraction=0.0)
