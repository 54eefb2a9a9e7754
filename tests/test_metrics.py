from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyro_kr import metrics


def _normal(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return shift + scale * torch.randn(n, d, generator=g, dtype=torch.float64)


# ----------------------------------------------------------------------------- inputs


def test_dict_inputs_flatten_in_first_dicts_order():
    a = {"b": np.arange(4.0), "a": np.arange(8.0).reshape(4, 2)}
    flat = metrics.as_draws("t", a)
    assert flat.shape == (4, 3)
    assert torch.equal(flat[:, 0], torch.arange(4.0, dtype=torch.float64))
    assert metrics.flatten_names(a) == ["b", "a[0]", "a[1]"]
    x, y = metrics.as_pair("t", a, {"a": a["a"] + 1.0, "b": a["b"]})  # y's order is irrelevant
    assert torch.equal(y[:, 0], x[:, 0]) and torch.equal(y[:, 1:], x[:, 1:] + 1.0)


@pytest.mark.parametrize("fn", [metrics.w2, metrics.sliced_w2, metrics.mmd2, metrics.c2st,
                                metrics.moment_errors], ids=lambda f: f.__name__)
def test_mismatched_coordinates_name_both_shapes(fn):
    with pytest.raises(ValueError, match=r"\(10, 2\).*\(12, 3\)"):
        fn(_normal(10, 2, 0), _normal(12, 3, 1))


@pytest.mark.parametrize("fn", [metrics.w2, metrics.mmd2, metrics.moment_errors],
                         ids=lambda f: f.__name__)
def test_nan_is_rejected(fn):
    x = _normal(10, 2, 0)
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        fn(x, _normal(10, 2, 1))


def test_dict_key_mismatch_and_type_mix_are_rejected():
    with pytest.raises(ValueError, match="sites"):
        metrics.w2({"a": np.zeros(5)}, {"b": np.zeros(5)})
    with pytest.raises(TypeError, match="both as arrays or both as dicts"):
        metrics.w2({"a": np.zeros(5)}, np.zeros((5, 1)))


# ----------------------------------------------------------------------------- W2


def test_w2_of_a_set_with_itself_is_zero():
    x = _normal(300, 3, 0)
    assert metrics.w2(x, x) == 0.0
    assert metrics.w2(x, x, standardize=True) == 0.0


def test_w2_between_unit_normals_shifted_by_one():
    x, y = _normal(2000, 1, 0), _normal(2000, 1, 1, shift=1.0)
    assert metrics.w2(x, y) == pytest.approx(1.0, abs=0.1)


def test_w2_accepts_numpy_and_torch_alike_and_is_symmetric():
    x, y = _normal(200, 2, 0), _normal(150, 2, 1, shift=0.5)
    value = metrics.w2(x, y)
    assert metrics.w2(x.numpy(), y.numpy()) == pytest.approx(value, rel=1e-10)
    assert metrics.w2(y, x) == pytest.approx(value, rel=1e-8)


def test_w2_standardized_is_scale_invariant():
    x, y = _normal(200, 2, 0), _normal(200, 2, 1, shift=0.3)
    scale = torch.tensor([1.0, 100.0], dtype=torch.float64)
    raw = metrics.w2(x, y, standardize=True)
    assert metrics.w2(x * scale, y * scale, standardize=True) == pytest.approx(raw, rel=1e-8)
    assert metrics.w2(x * scale, y * scale) > 10 * raw  # raw W2 is dominated by coordinate 2


def test_w2_standardizes_by_an_explicit_reference():
    x, y = _normal(100, 2, 0), _normal(100, 2, 1, shift=0.3)
    ref = 10.0 * _normal(400, 2, 2)  # sd 10: distances shrink tenfold
    assert metrics.w2(x, y, standardize=True, reference=ref) == pytest.approx(
        metrics.w2(x, y) / 10.0, rel=0.1)
    with pytest.raises(ValueError, match="reference with 2 coordinates"):
        metrics.w2(x, y, standardize=True, reference=_normal(50, 3, 3))


def test_w2_raises_when_pot_does_not_converge():
    with pytest.raises(RuntimeError, match="num_iter_max"):
        metrics.w2(_normal(200, 2, 0), _normal(200, 2, 1), num_iter_max=5)


def test_sliced_w2_properties():
    x, y = _normal(500, 3, 0), _normal(500, 3, 1, shift=0.4)
    assert metrics.sliced_w2(x, x) == 0.0
    value = metrics.sliced_w2(x, y, seed=3)
    assert value == metrics.sliced_w2(x, y, seed=3)
    assert 0.0 < value <= metrics.w2(x, y) + 1e-9
    # in one dimension every direction is +-1, so sliced W2 is W2
    x1, y1 = x[:, :1], y[:, :1]
    assert metrics.sliced_w2(x1, y1) == pytest.approx(metrics.w2(x1, y1), rel=1e-6)


def test_sliced_w2_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    metrics.sliced_w2(_normal(50, 2, 0), _normal(50, 2, 1), seed=123)
    assert torch.equal(state, torch.get_rng_state())


# ----------------------------------------------------------------------------- MMD


def test_median_bandwidth_of_a_standard_normal():
    # |z - z'| for z, z' ~ N(0, I_2) is Rayleigh(sqrt 2): median sqrt(4 log 2)
    h = metrics.median_bandwidth(_normal(1500, 2, 0))
    assert h == pytest.approx(math.sqrt(4 * math.log(2)), rel=0.05)


def test_mmd2_symmetric_and_near_zero_for_the_same_distribution():
    x, y = _normal(400, 2, 0), _normal(300, 2, 1)
    same = metrics.mmd2(x, y)
    assert metrics.mmd2(y, x) == pytest.approx(same, rel=1e-10, abs=1e-14)
    different = metrics.mmd2(x, _normal(300, 2, 2, shift=1.0))
    assert abs(same) < 0.01
    assert different > 0.1 and different > 20 * abs(same)


def test_mmd2_is_unbiased_and_can_be_negative():
    values = [metrics.mmd2(_normal(60, 1, s), _normal(60, 1, 100 + s), bandwidth=1.0)
              for s in range(30)]
    assert min(values) < 0.0
    assert abs(np.mean(values)) < 3 * np.std(values) / math.sqrt(len(values))


def test_mmd2_rejects_a_bad_bandwidth():
    with pytest.raises(ValueError, match="positive bandwidth"):
        metrics.mmd2(_normal(10, 1, 0), _normal(10, 1, 1), bandwidth=0.0)


# ----------------------------------------------------------------------------- C2ST


def test_c2st_is_chance_for_the_same_distribution_and_one_when_separated():
    same = metrics.c2st(_normal(400, 2, 0), _normal(400, 2, 1), steps=150)
    separated = metrics.c2st(_normal(400, 2, 0), _normal(400, 2, 1, shift=8.0), steps=150)
    assert abs(same - 0.5) < 0.07
    assert separated > 0.98


def test_c2st_is_deterministic_and_restores_rng_and_threads():
    x, y = _normal(100, 2, 0), _normal(100, 2, 1, shift=1.0)
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    a = metrics.c2st(x, y, steps=30, seed=5)
    assert a == metrics.c2st(x, y, steps=30, seed=5)
    assert torch.equal(state, torch.get_rng_state()) and threads == torch.get_num_threads()
    assert 0.5 < metrics.c2st(x, y, steps=60, classifier="logistic") <= 1.0
    with pytest.raises(ValueError, match="classifier"):
        metrics.c2st(x, y, classifier="forest")


# ----------------------------------------------------------------------------- moments


def test_moment_errors_on_known_inputs():
    ref = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]])  # means (2, 2), sds (2, sqrt 3)
    x = np.stack([2 * ref[:, 0] + 1, ref[:, 1]], axis=1)  # mean 5, sd 4 in coordinate 0
    e = metrics.moment_errors(x, ref)
    assert e.mean == pytest.approx((1.5, 0.0))
    assert e.sd == pytest.approx((1.0, 0.0))
    assert (e.max_mean, e.max_sd) == pytest.approx((1.5, 1.0))
    assert e.as_dict() == {"mean_error": e.max_mean, "sd_error": e.max_sd}
    named = metrics.moment_errors({"a": x[:, 0], "b": x[:, 1:]}, {"a": ref[:, 0], "b": ref[:, 1:]})
    assert named.names == ("a", "b[0]") and named.mean == e.mean


def test_moment_errors_reject_a_degenerate_reference():
    with pytest.raises(ValueError, match="positive standard deviation"):
        metrics.moment_errors(_normal(5, 1, 0), torch.ones(5, 1))


# ----------------------------------------------------------------------------- noise floor


def test_noise_floor_is_well_defined():
    ref = _normal(1200, 2, 0)
    floor = metrics.noise_floor("w2", ref, n=300, seed=1)
    assert 0.0 < floor < 0.5
    assert floor == metrics.noise_floor("w2", ref, n=300, seed=1)
    assert floor != metrics.noise_floor("w2", ref, n=300, seed=2)
    # the floor shrinks with the sample size (W2 of empirical measures is biased upward)
    assert metrics.noise_floor("w2", ref, n=600, seed=1, repeats=2) < floor
    custom = metrics.noise_floor(lambda a, b: float((a.mean(0) - b.mean(0)).abs().max()), ref)
    assert 0.0 < custom < 0.2
    with pytest.raises(ValueError, match="at least 2000 reference draws"):
        metrics.noise_floor("w2", ref, n=1000)
    with pytest.raises(ValueError, match="valid names"):
        metrics.noise_floor("kl", ref)


def test_compare_reports_every_metric_with_its_floor():
    ref = {"a": _normal(1000, 1, 0)[:, 0], "b": _normal(1000, 2, 1)}
    draws = {"a": _normal(600, 1, 2, shift=0.5)[:, 0], "b": _normal(600, 2, 3)}
    names = ("w2", "w2_standardized", "sliced_w2", "mmd2", "mean_error", "sd_error")
    out = metrics.compare(draws, ref, metrics=names, n=400)
    assert out["n"] == 400
    assert set(out) == {"n", *names, *(f"{m}_noise_floor" for m in names)}
    for m in ("w2", "mmd2", "mean_error"):
        assert out[m] > out[f"{m}_noise_floor"]
    assert out["mean_error"] == pytest.approx(0.5, abs=0.15)
    # compare is deterministic for a seed, and n defaults to min(len(draws), len(ref) // 2)
    assert metrics.compare(draws, ref, metrics=("w2",))["n"] == 500
    with pytest.raises(ValueError, match="larger than the 600 draws"):
        metrics.compare(draws, ref, n=700)
