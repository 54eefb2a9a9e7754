"""Bad input to every map family raises a ``ValueError``/``TypeError`` that says what it
expected and what it got (issue 2, section 3), instead of a shape error deep inside torch or
a silent NaN."""

from __future__ import annotations

import re

import pytest
import torch
from test_transforms import (
    CONDITIONAL,
    CONTEXT_DIM,
    DIM,
    FAMILIES,
    NAMES,
    as_transform,
    build,
    context,
)

from pyro_kr.transforms import (
    ConditionalMonotoneTriangular,
    ConditionalTriangularAffine,
    MonotoneTriangular,
    monotone_triangular_stack,
)


def _forward(t, x):
    return t(x)


def _inverse(t, y):
    return t.inv(y)


DIRECTIONS = {"forward": _forward, "inverse": _inverse}


@pytest.mark.parametrize("direction", list(DIRECTIONS), ids=list(DIRECTIONS))
@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_wrong_last_dimension(name, direction):
    t = as_transform(build(name))
    bad = torch.zeros(5, DIM + 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=re.escape(f"(..., {DIM})")) as info:
        DIRECTIONS[direction](t, bad)
    assert str((5, DIM + 1)) in str(info.value)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_scalar_input(name):
    t = as_transform(build(name))
    with pytest.raises(ValueError, match=r"got shape \(\)"):
        t(torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("direction", list(DIRECTIONS), ids=list(DIRECTIONS))
@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_non_finite_input(name, direction, bad_value):
    t = as_transform(build(name))
    x = torch.zeros(4, DIM, dtype=torch.float64)
    x[2, 1] = bad_value
    with pytest.raises(ValueError, match="non-finite"):
        DIRECTIONS[direction](t, x)


@pytest.mark.parametrize("direction", list(DIRECTIONS), ids=list(DIRECTIONS))
@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_dtype_mismatch(name, direction):
    t = as_transform(build(name))  # float64 parameters
    with pytest.raises(TypeError, match="torch.float32.*torch.float64"):
        DIRECTIONS[direction](t, torch.zeros(4, DIM, dtype=torch.float32))


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
@pytest.mark.parametrize("dim", [0, -2])
def test_dim_below_one(name, dim):
    with pytest.raises(ValueError, match=f"dim must be >= 1, got {dim}"):
        FAMILIES[name](dim)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_dim_not_an_int(name):
    with pytest.raises(TypeError, match="dim must be an int, got float"):
        FAMILIES[name](2.0)


@pytest.mark.parametrize(
    "cls", [ConditionalTriangularAffine, ConditionalMonotoneTriangular], ids=CONDITIONAL
)
def test_context_dim_below_one(cls):
    with pytest.raises(ValueError, match="context_dim must be >= 1, got 0"):
        cls(DIM, 0)


@pytest.mark.parametrize("name", CONDITIONAL, ids=CONDITIONAL)
def test_wrong_context_dimension(name):
    module = build(name)
    bad = torch.zeros(5, CONTEXT_DIM + 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=re.escape(f"(..., {CONTEXT_DIM})")) as info:
        module.condition(bad)
    assert str((5, CONTEXT_DIM + 1)) in str(info.value)


@pytest.mark.parametrize("name", CONDITIONAL, ids=CONDITIONAL)
def test_context_batch_does_not_broadcast(name):
    t = build(name).condition(context((4,)))
    x = torch.zeros(5, DIM, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\(5, 3\).*\(4, 2\)|\(4,\).*\(5, 3\)"):
        t(x)


@pytest.mark.parametrize("name", CONDITIONAL, ids=CONDITIONAL)
def test_non_finite_context(name):
    ctx = context((3,))
    ctx[1, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        build(name).condition(ctx)


@pytest.mark.parametrize("name", CONDITIONAL, ids=CONDITIONAL)
def test_context_dtype_mismatch(name):
    with pytest.raises(TypeError, match="context of dtype torch.float32"):
        build(name).condition(context(dtype=torch.float32))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_bumps": 0}, "num_bumps must be >= 1"),
        ({"min_slope": 0.0}, r"min_slope must be in \(0, 1\)"),
        ({"init_weight": -1.0}, "init_weight must be > 0"),
        ({"center_range": 0.0}, "center_range must be > 0"),
    ],
)
def test_monotone_options_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MonotoneTriangular(DIM, **kwargs)
    with pytest.raises(ValueError, match=message):
        ConditionalMonotoneTriangular(DIM, CONTEXT_DIM, **kwargs)


def test_stack_depth_below_one():
    with pytest.raises(ValueError, match="depth must be >= 1, got 0"):
        monotone_triangular_stack(DIM, depth=0)


def test_affine_setters_validate():
    t = build("affine")
    with pytest.raises(ValueError, match=re.escape(f"({DIM}, {DIM})")):
        t.set_scale_tril(torch.eye(DIM + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="lower-triangular"):
        t.set_scale_tril(torch.ones(DIM, DIM, dtype=torch.float64))
    with pytest.raises(ValueError, match="diagonal must exceed 1e-06.*smallest entry of -1"):
        t.set_scale_tril(-torch.eye(DIM, dtype=torch.float64))
    with pytest.raises(ValueError, match="diagonal must exceed 1e-06.*smallest entry of 1e-09"):
        t.set_scale_tril(1e-9 * torch.eye(DIM, dtype=torch.float64))
    with pytest.raises(ValueError, match=re.escape(f"(..., {DIM})")):
        t.set_loc(torch.zeros(DIM + 1, dtype=torch.float64))
