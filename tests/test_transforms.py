"""Property tests run on every map family of ``pyro_kr.transforms`` (one registry, one id each).

Every family is first made non-trivial: all parameters are perturbed with Gaussian noise of
standard deviation ``NOISE_SD`` (divided by ``sqrt(fan_in)`` for weight matrices), which moves
the maps far from their near-identity initialization (``|T(x) - x|`` reaches tens to hundreds
for ``|x| <= 50``), while keeping them well enough conditioned for the tolerances below to be
reachable in float32. Conditional families are conditioned on a fixed random context.

Tolerances of the inverse (issue 2, section 2.4):
  * float64: every entry of ``inverse(forward(x)) - x`` and ``forward(inverse(y)) - y`` is at
    most ``1e-10`` in absolute value, for points with ``|x_i|`` up to 50;
  * float32: per sample, ``max_i |error_i| <= 1e-6 * max(1, max_i |v_i|)`` with ``v`` the
    expected vector (``x``, resp. ``y``): the normwise relative error. float32 cannot hold 50
    to 1e-6 absolute, and the rounding of ``T`` itself, about ``eps * sum of |terms|``, is per
    sample, not per coordinate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from conftest import DEVICES
from pyro.distributions.conditional import ConditionalTransformModule
from torch import nn
from torch.autograd.functional import jacobian
from torch.distributions import Transform

from pyro_kr.transforms import (
    ConditionalMonotoneTriangular,
    ConditionalTriangularAffine,
    MonotoneTriangular,
    TriangularAffine,
    monotone_triangular_stack,
)
from pyro_kr.transforms.components import ComponentParams
from pyro_kr.transforms.root_finding import solve_increasing

DIM = 3
CONTEXT_DIM = 2
NOISE_SD = 0.3

FAMILIES: dict[str, Callable[[int], nn.Module]] = {
    "affine": lambda dim: TriangularAffine(dim),
    "monotone": lambda dim: MonotoneTriangular(dim),
    "stack": lambda dim: monotone_triangular_stack(dim, depth=2),
    "conditional_affine": lambda dim: ConditionalTriangularAffine(dim, CONTEXT_DIM),
    "conditional_monotone": lambda dim: ConditionalMonotoneTriangular(dim, CONTEXT_DIM),
}
NAMES = list(FAMILIES)
CONDITIONAL = [n for n in NAMES if n.startswith("conditional")]


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one intra-op thread is faster, and far faster on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def randomize_(
    module: nn.Module, *, sd: float = NOISE_SD, seed: int = 0, per_fan_in: bool = True
) -> nn.Module:
    """Perturb every parameter in place (noise ``sd / sqrt(fan_in)`` for matrices)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            scale = sd / math.sqrt(p.shape[-1]) if p.dim() > 1 and per_fan_in else sd
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            p.add_(scale * noise.to(p))
    return module


def build(name: str, *, dtype: torch.dtype = torch.float64, device: str = "cpu") -> nn.Module:
    """A randomized member of family ``name`` (same parameters for every dtype and device)."""
    torch.manual_seed(0)
    module = FAMILIES[name](DIM).to(torch.float64)
    randomize_(module)
    return module.to(dtype=dtype, device=device)


def context(shape: tuple[int, ...] = (), *, dtype=torch.float64, device="cpu") -> torch.Tensor:
    gen = torch.Generator().manual_seed(1234)
    ctx = torch.randn(*shape, CONTEXT_DIM, generator=gen, dtype=torch.float64)
    return ctx.to(device=device, dtype=dtype)


def as_transform(module: nn.Module, ctx: torch.Tensor | None = None) -> Transform:
    """The module itself, or the module conditioned on ``ctx`` (default: a fixed context)."""
    if isinstance(module, ConditionalTransformModule):
        if ctx is None:
            ref = next(module.parameters())
            ctx = context(dtype=ref.dtype, device=ref.device)
        return module.condition(ctx)
    return module


def points(n: int, *, seed: int = 0, dtype=torch.float64, device="cpu") -> torch.Tensor:
    """``n`` central points (sd 2), ``n`` uniform on ``[-50, 50]^d`` and the corners ``±50``."""
    gen = torch.Generator().manual_seed(seed)
    central = 2.0 * torch.randn(n, DIM, generator=gen, dtype=torch.float64)
    tails = 100.0 * torch.rand(n, DIM, generator=gen, dtype=torch.float64) - 50.0
    corners = 50.0 * (2.0 * torch.randint(0, 2, (2**DIM, DIM), generator=gen) - 1.0)
    return torch.cat([central, tails, corners.to(torch.float64)]).to(device=device, dtype=dtype)


# --- Jacobian: triangular, positive diagonal, exact log-determinant -------------------------


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_jacobian_is_lower_triangular_with_positive_diagonal(name):
    t = as_transform(build(name))
    for x in points(4):
        jac = jacobian(lambda z: t(z), x)
        assert jac.shape == (DIM, DIM)
        assert torch.equal(jac.triu(1), torch.zeros_like(jac)), f"upper part at {x}: {jac}"
        assert bool((jac.diagonal() > 0).all()), f"diagonal at {x}: {jac.diagonal()}"


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_log_abs_det_matches_autograd(name):
    t = as_transform(build(name))
    xs = points(4)
    log_det = t.log_abs_det_jacobian(xs, t(xs))
    for x, value in zip(xs, log_det, strict=True):
        ref = torch.linalg.slogdet(jacobian(lambda z: t(z), x)).logabsdet
        err, scale = float((value - ref).detach()), max(1.0, abs(float(ref)))
        assert abs(err) <= 1e-6 * scale, (x, value, ref)


def test_randomized_maps_are_not_near_identity():
    """Guards the premise of the tests above: the nonlinearity matters after randomization."""
    x = points(64)
    for name in NAMES:
        t = as_transform(build(name))
        with torch.no_grad():
            assert float((t(x) - x).abs().max()) > 10.0, name


# --- Inverse -------------------------------------------------------------------------------

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-6}


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    err = (actual - expected).abs().amax(-1)
    if dtype == torch.float64:
        bound = torch.full_like(err, TOLERANCE[dtype])
    else:
        bound = TOLERANCE[dtype] * expected.abs().amax(-1).clamp(min=1.0)
    worst = int((err - bound).argmax())
    assert bool((err <= bound).all()), (
        f"error {float(err[worst]):.3g} > {float(bound[worst]):.3g} at {expected[worst]}"
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_inverse_of_forward_is_identity(name, dtype):
    t = as_transform(build(name, dtype=dtype))
    x = points(256, dtype=dtype)
    y = t(x)
    x_back = t.inv(y.clone())  # a clone: the cache would return ``x`` for ``y`` itself
    assert x_back.dtype == dtype and x_back.shape == x.shape
    _assert_close(x_back, x, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_forward_of_inverse_is_identity(name, dtype):
    t = as_transform(build(name, dtype=dtype))
    y = points(256, seed=1, dtype=dtype)
    x = t.inv(y)
    y_back = t(x.clone())
    _assert_close(y_back, y, dtype)


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_inverse_uses_the_cache_for_own_outputs(name):
    t = as_transform(build(name))
    x = points(8)
    assert t.inv(t(x)) is x


@pytest.mark.parametrize("dim", [1, 2, 7], ids=["d1", "d2", "d7"])
def test_monotone_inverse_needs_at_most_dim_sweeps(dim):
    torch.manual_seed(0)
    t = randomize_(MonotoneTriangular(dim).double())
    gen = torch.Generator().manual_seed(0)
    x = 10.0 * torch.randn(200, dim, generator=gen, dtype=torch.float64)
    x_back = t.inv(t(x).clone())
    assert torch.allclose(x_back, x, rtol=0.0, atol=1e-10)
    stats = t.last_inverse_stats
    assert stats is not None and 1 <= stats.sweeps <= dim
    assert stats.inner_iterations >= stats.sweeps


@pytest.mark.parametrize("seed", [0, 1])
def test_inverse_of_strongly_nonlinear_monotone_map(seed):
    """Noise 0.3 on every weight (no fan-in scaling): slopes near ``min_slope``, bumps of
    width near 1e-3. The inverse is badly conditioned, so its backward error is checked."""
    torch.manual_seed(seed)
    t = randomize_(MonotoneTriangular(4).double(), seed=seed, per_fan_in=False)
    gen = torch.Generator().manual_seed(seed)
    x = torch.cat(
        [
            3.0 * torch.randn(500, 4, generator=gen, dtype=torch.float64),
            100.0 * torch.rand(500, 4, generator=gen, dtype=torch.float64) - 50.0,
        ]
    )
    y = t(x)
    y_back = t(t.inv(y.clone()).clone())
    assert float(((y_back - y).abs() / y.abs().clamp(min=1.0)).max().detach()) <= 1e-10


def test_scalar_solver_converges_on_steep_bumps_and_flat_tails():
    """Newton cycles on these (slope 0.01 tails, bumps of width 1e-3); the safeguard must not."""
    gen = torch.Generator().manual_seed(0)
    n, k = 4000, 8

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=torch.float64)

    params = ComponentParams(
        shift=10.0 * torch.randn(n, 1, generator=gen, dtype=torch.float64),
        slope=uniform(0.01, 0.05, n, 1),
        weight=torch.exp(uniform(math.log(1e-3), math.log(20.0), n, 1, k)),
        center=uniform(-20.0, 20.0, n, 1, k),
        scale=torch.exp(uniform(math.log(1e-3), math.log(10.0), n, 1, k)),
    )
    x = uniform(-50.0, 50.0, n, 1)
    y, _ = params.value_and_derivative(x)
    fn, lower, upper = params.scalar_problem(y)
    assert bool((lower <= x).all() and (x <= upper).all())
    x_sol = solve_increasing(fn, y, lower, upper, tol=1e-13)
    value, derivative = params.value_and_derivative(x_sol)
    assert float((value - y).abs().max()) <= 1e-10
    # forward error = residual / slope, and the slope is at least 0.01 here
    assert float((x_sol - x).abs().max()) <= 1e-8


# --- Shapes, dtypes, devices -----------------------------------------------------------------

SHAPES = [(5,), (2, 3)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("batch", SHAPES, ids=["n", "a_b"])
@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_batch_shapes_and_dtypes(name, batch, dtype):
    t = as_transform(build(name, dtype=dtype))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*batch, DIM, generator=gen, dtype=torch.float64).to(dtype)
    y = t(x)
    log_det = t.log_abs_det_jacobian(x, y)
    x_back = t.inv(y.clone())
    assert y.shape == x.shape and x_back.shape == x.shape and log_det.shape == batch
    assert y.dtype == log_det.dtype == x_back.dtype == dtype
    # batching is only bookkeeping: the flat batch gives the same numbers
    flat = x.reshape(-1, DIM)
    t_flat = as_transform(build(name, dtype=dtype))
    y_flat = t_flat(flat)
    torch.testing.assert_close(y.reshape(-1, DIM), y_flat)
    torch.testing.assert_close(log_det.reshape(-1), t_flat.log_abs_det_jacobian(flat, y_flat))


@pytest.mark.parametrize("name", CONDITIONAL, ids=CONDITIONAL)
def test_conditional_batched_over_contexts(name):
    """Contexts ``(m, c)`` and inputs ``(n, m, d)``: slice ``j`` uses context ``j``."""
    module = build(name)
    n, m = 4, 3
    ctx = context((m,))
    gen = torch.Generator().manual_seed(0)
    x = 3.0 * torch.randn(n, m, DIM, generator=gen, dtype=torch.float64)
    t = module.condition(ctx)
    y = t(x)
    log_det = t.log_abs_det_jacobian(x, y)
    assert y.shape == (n, m, DIM) and log_det.shape == (n, m)
    for j in range(m):
        t_j = module.condition(ctx[j])
        torch.testing.assert_close(y[:, j], t_j(x[:, j]))
        torch.testing.assert_close(log_det[:, j], t_j.log_abs_det_jacobian(x[:, j], y[:, j]))
    x_back = t.inv(y.clone())
    assert x_back.shape == (n, m, DIM)
    _assert_close(x_back, x, torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_round_trip_on_device(name, device):
    t = as_transform(build(name, device=device))
    x = points(32, device=device)
    y = t(x)
    x_back = t.inv(y.clone())
    assert y.device.type == x_back.device.type == device
    _assert_close(x_back, x, torch.float64)
    y_cpu = as_transform(build(name))(x.cpu())
    torch.testing.assert_close(y.cpu(), y_cpu)


# --- Transform attributes ----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_transform_attributes(name):
    t = as_transform(build(name))
    assert isinstance(t, Transform)
    assert t.bijective is True
    assert t.sign == 1
    assert t.event_dim == 1
    assert t.domain.event_dim == t.codomain.event_dim == 1
    assert t.inv.sign == 1 and t.inv.event_dim == 1


# --- Parameters: gradients, save/load, cache invalidation ----------------------------------------


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_gradients_reach_every_parameter(name):
    module = build(name)
    t = as_transform(module)
    x = points(16)
    y = t(x)
    loss = (0.5 * y.pow(2).sum(-1) - t.log_abs_det_jacobian(x, y)).mean()
    loss.backward()
    for pname, p in module.named_parameters():
        assert p.grad is not None, f"{pname} has no gradient"
        assert bool(p.grad.abs().gt(0).any()), f"{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_state_dict_round_trip(name, tmp_path):
    module = build(name)
    path = tmp_path / f"{name}.pt"
    torch.save(module.state_dict(), path)
    torch.manual_seed(123)  # a different fresh initialization
    fresh = FAMILIES[name](DIM).to(torch.float64)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    t, t_fresh = as_transform(module), as_transform(fresh)
    x = points(16)
    y, y_fresh = t(x), t_fresh(x)
    assert torch.equal(y, y_fresh)
    assert torch.equal(t.log_abs_det_jacobian(x, y), t_fresh.log_abs_det_jacobian(x, y_fresh))
    assert torch.equal(t.inv(y.clone()), t_fresh.inv(y.clone()))


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_cache_is_dropped_after_an_optimizer_step(name):
    """Reusing one batch (and one conditioned map) across steps must see the new parameters."""
    module = build(name)
    t = as_transform(module)
    x = points(8)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    y = t(x)
    loss = y.pow(2).sum() - t.log_abs_det_jacobian(x, y).sum()
    loss.backward()
    opt.step()
    y_new = t(x)
    assert not torch.equal(y_new, y)
    torch.testing.assert_close(y_new, t(x.clone()))
    torch.testing.assert_close(
        t.log_abs_det_jacobian(x, y_new), t.log_abs_det_jacobian(x.clone(), y_new)
    )
    y_new.pow(2).sum().backward()  # a fresh graph, not the one freed by the first backward


@pytest.mark.parametrize("name", NAMES, ids=NAMES)
def test_cache_respects_grad_mode(name):
    t = as_transform(build(name))
    x = points(4)
    with torch.no_grad():
        t(x)
    assert t(x).requires_grad
