"""Bounded-memory sampling: the KR queries map their reference draws in row chunks.

``pyro_kr.guides.chunks.map_in_chunks`` maps at most ``SAMPLE_CHUNK_COORDINATES`` coordinates
per call; the queries must give the same draws as one un-chunked call, and the peak memory of
``sample_posterior`` must no longer grow with the whole batch. ``draw_guide`` (behind ``psis``
and ``to_inference_data``) runs its vectorized pass in chunks of draws under the same budget.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

import pyro_kr
from pyro_kr.diagnostics import _draws, draw_guide, psis
from pyro_kr.guides import autokr as autokr_module
from pyro_kr.guides import chunks
from pyro_kr.guides import queries as queries_module
from pyro_kr.guides.chunks import map_in_chunks

DT = torch.float64
N = 5
NUM = 37


def _model(y):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=DT), 5.0))
    tau = pyro.sample("tau", dist.LogNormal(torch.tensor(0.0, dtype=DT), 1.0))
    with pyro.plate("groups", len(y)):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, 1.0), obs=y)


def _fitted(structure: str):
    y = torch.linspace(-1.0, 2.0, N, dtype=DT)
    guide = pyro_kr.AutoKR(_model, structure=structure, order=["mu", "tau"])
    svi = SVI(_model, guide, Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(5):
        svi.step(y)
    assert guide.latent_dim == N + 2
    if structure == "plates":
        assert guide.structure_plan is not None
    return guide, y


def _spy(monkeypatch, rows: list[int]) -> None:
    """Record the rows of every call that the queries make through ``map_in_chunks``."""

    def spied(transform, x, budget=None):
        def recorded(chunk):
            rows.append(chunk.shape[0])
            return transform(chunk)

        recorded.sampling_cost = chunks.sampling_cost(transform)
        return map_in_chunks(recorded, x, budget)

    monkeypatch.setattr(autokr_module, "map_in_chunks", spied)
    monkeypatch.setattr(queries_module, "map_in_chunks", spied)


@pytest.mark.parametrize("structure", ["dense", "plates"])
@pytest.mark.parametrize("query", ["sample_posterior", "marginal", "conditional"])
def test_chunked_queries_give_the_unchunked_draws(monkeypatch, structure, query):
    guide, y = _fitted(structure)
    d = guide.latent_dim

    def draw():
        torch.manual_seed(1)
        if query == "sample_posterior":
            return guide.sample_posterior(NUM, y)
        if query == "marginal":
            return guide.marginal(["mu", "tau"], NUM)
        return guide.conditional({"mu": torch.tensor(0.3, dtype=DT)}).sample(NUM)

    rows: list[int] = []
    _spy(monkeypatch, rows)
    monkeypatch.setattr(chunks, "SAMPLE_CHUNK_COORDINATES", math.inf)
    whole = draw()
    assert rows == [NUM]
    rows.clear()
    cost = guide.sampling_cost  # 8 for the sparse map, 1 for the dense one
    assert cost == (8.0 if structure == "plates" else 1.0)
    monkeypatch.setattr(chunks, "SAMPLE_CHUNK_COORDINATES", (8 * d + 3) * cost)  # 8 rows a call
    chunked = draw()
    if query == "marginal" and structure == "plates":
        assert rows == [NUM]  # only the globals' map (2 coordinates a row, cost 1) is mapped
    else:
        assert rows == [8, 8, 8, 8, 5]
    assert chunked.keys() == whole.keys()
    for name, value in whole.items():
        assert value.dtype == DT and value.shape[0] == NUM
        torch.testing.assert_close(chunked[name], value, rtol=0.0, atol=1e-12)


@pytest.mark.parametrize(
    ("n", "d", "budget"),
    [(37, 7, 59), (37, 7, 56), (10, 3, 1), (10, 3, 2.5), (1, 4, 3), (5, 4, 1000), (12, 1, 5)],
)
def test_map_in_chunks_keeps_rows_within_the_budget(n, d, budget):
    x = torch.randn(n, d, dtype=DT)
    weight = torch.randn(d, d + 1, dtype=DT)
    rows: list[int] = []

    def transform(chunk):
        rows.append(chunk.shape[0])
        return chunk @ weight

    out = map_in_chunks(transform, x, budget)
    per_call = max(1, int(budget // d))
    assert all(r <= per_call for r in rows) and all(r >= 1 for r in rows)
    assert all(r * d <= budget for r in rows) or rows == [1] * n  # one row alone may exceed
    assert sum(rows) == n and rows[:-1] == [per_call] * (len(rows) - 1)
    assert out.dtype == x.dtype and out.device == x.device and out.shape == (n, d + 1)
    torch.testing.assert_close(out, x @ weight, rtol=0.0, atol=1e-12)


def test_map_in_chunks_reads_the_module_budget(monkeypatch):
    rows: list[int] = []

    def transform(chunk):
        rows.append(chunk.shape[0])
        return chunk

    x = torch.zeros(10, 4)
    monkeypatch.setattr(chunks, "SAMPLE_CHUNK_COORDINATES", 12)
    map_in_chunks(transform, x)
    assert rows == [3, 3, 3, 1]
    rows.clear()
    monkeypatch.setattr(chunks, "SAMPLE_CHUNK_COORDINATES", math.inf)
    assert map_in_chunks(transform, x) is x and rows == [10]
    with pytest.raises(ValueError, match="shape"):
        map_in_chunks(transform, torch.zeros(4))
    with pytest.raises(ValueError, match="positive"):
        map_in_chunks(transform, x, 0)


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import math, resource, sys, torch, pyro, pyro.distributions as dist
    import pyro_kr
    from pyro_kr.guides import chunks
    torch.set_num_threads(1)
    if sys.argv[1] == "inf":
        chunks.SAMPLE_CHUNK_COORDINATES = math.inf
    N = 300
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("g", N):
            theta = pyro.sample("theta", dist.Normal(mu, tau))
            pyro.sample("y", dist.Normal(theta, 1.0), obs=y)
    y = torch.randn(N)
    guide = pyro_kr.AutoKR(model, structure="plates")
    guide(y)
    assert guide.structure_plan is not None and guide.latent_dim == N + 2
    guide.sample_posterior(10, y)
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    r0 = rss()
    guide.sample_posterior(12000, y)
    print(rss() - r0)
    """
)


def test_sparse_sampling_memory_is_bounded_by_the_chunk_budget():
    # 12,000 draws x 302 latents of the sparse monotone map: mapped in one call (budget
    # math.inf) the peak resident memory grew by about 1,600 MB (450 bytes per coordinate);
    # in chunks of 2**20 coordinates by about 600 MB, of 2**16 (the default) by about 85 MB
    # (measured on a 2-core Linux box).
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, "default"],
        capture_output=True, text=True, timeout=300, check=True,
        env={"OMP_NUM_THREADS": "1", "PATH": ""},
    )
    grown = float(out.stdout.strip().splitlines()[-1])
    assert grown < 300, f"peak resident memory grew by {grown:.0f} MB"


def _draw_calls(monkeypatch) -> list[int]:
    """Record the number of draws of every vectorized pass of ``draw_guide``."""
    calls: list[int] = []
    vectorized = _draws._vectorized

    def spied(guide, model, args, kwargs, n, *rest):
        calls.append(n)
        return vectorized(guide, model, args, kwargs, n, *rest)

    monkeypatch.setattr(_draws, "_vectorized", spied)
    return calls


def _log_q(guide, y, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """``log q`` of one constrained draw of an AutoKR: its packed unconstrained value replayed
    through the guide (the auxiliary site's log density plus the constraining Jacobians)."""
    unconstrained = [
        biject_to(site["fn"].support).inv(values[name]).reshape(-1)
        for name, site in guide.prototype_trace.iter_stochastic_nodes()
    ]
    data = {f"_{guide._pyro_name}_latent": torch.cat(unconstrained)}
    return poutine.trace(poutine.condition(guide, data=data)).get_trace(y).log_prob_sum()


@pytest.mark.parametrize("structure", ["dense", "plates"])
def test_draw_guide_in_uneven_chunks_scores_every_draw(monkeypatch, structure):
    guide, y = _fitted(structure)
    d = guide.latent_dim
    calls = _draw_calls(monkeypatch)
    cost = guide.sampling_cost
    monkeypatch.setattr(chunks, "SAMPLE_CHUNK_COORDINATES", (13 * d + 2) * cost)  # 13 per pass
    draws = draw_guide(guide, _model, (y,), num_samples=NUM, vectorize=True)
    assert calls[-3:] == [13, 13, 11] and draws.vectorized
    assert draws.latent["theta"].shape == (NUM, N) and draws.latent["mu"].shape == (NUM,)
    assert draws.log_likelihood["y"].shape == (NUM, N)
    assert draws.log_joint.shape == draws.log_q.shape == (NUM,)
    assert torch.isfinite(draws.log_weight).all()
    assert draws.latent["mu"].unique().numel() == NUM  # every chunk draws afresh
    with torch.no_grad(), poutine.block():
        for i in range(NUM):
            values = {name: value[i] for name, value in draws.latent.items()}
            joint = _draws._model_log_joint(_model, (y,), {}, values)
            torch.testing.assert_close(draws.log_joint[i], joint, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(
                draws.log_q[i], _log_q(guide, y, values), rtol=1e-7, atol=1e-7
            )
    calls.clear()
    result = psis(guide, _model, y, num_samples=NUM)
    assert calls[-3:] == [13, 13, 11]
    assert result.log_weights.shape == (NUM,) and bool(np.isfinite(result.log_weights).all())


def test_draw_guide_within_the_budget_is_one_unchanged_pass(monkeypatch):
    guide, y = _fitted("plates")
    calls = _draw_calls(monkeypatch)
    monkeypatch.setattr(chunks, "SAMPLE_CHUNK_COORDINATES", math.inf)
    whole = draw_guide(guide, _model, (y,), num_samples=NUM, seed=3)
    assert calls[-1] == NUM
    monkeypatch.undo()
    calls = _draw_calls(monkeypatch)
    assert NUM * guide.latent_dim * guide.sampling_cost <= chunks.SAMPLE_CHUNK_COORDINATES
    default = draw_guide(guide, _model, (y,), num_samples=NUM, seed=3)
    assert calls[-1] == NUM
    for name in ("latent", "log_likelihood"):
        got, want = getattr(default, name), getattr(whole, name)
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)
    assert torch.equal(default.log_joint, whole.log_joint)
    assert torch.equal(default.log_q, whole.log_q)


def test_sampling_memory_benchmark_smoke():
    """``benchmarks/sampling_memory.py --smoke`` measures in a child process and prints a row."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "sampling_memory.py"
    out = subprocess.run(
        [sys.executable, str(script), "--smoke", "--modes", "sample_posterior", "--budgets",
         "default"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    row = out.stdout.strip().splitlines()[-1].split()
    assert row[:3] == ["sample_posterior", "50", "500"]
    assert float(row[4]) >= 0


def test_the_budget_is_divided_by_the_maps_sampling_cost():
    # the sparse map's conditioner runs per draw and group: it gets 1/8 of the dense map's rows
    dense, _ = _fitted("dense")
    sparse, _ = _fitted("plates")
    assert chunks.sampling_cost(dense.get_transform()) == 1.0
    assert chunks.sampling_cost(sparse.get_transform()) == 8.0 == sparse.sampling_cost
    assert pyro_kr.AutoKR(_model).sampling_cost == 1.0  # before setup
    x = torch.randn(100, dense.latent_dim, dtype=DT)
    rows: list[int] = []

    def recorded(transform):
        def call(chunk):
            rows.append(chunk.shape[0])
            return transform(chunk)

        call.sampling_cost = chunks.sampling_cost(transform)
        return call

    budget = 16 * dense.latent_dim * 8
    map_in_chunks(recorded(dense.get_transform()), x, budget)
    assert rows[0] == 100  # 128 rows fit
    rows.clear()
    map_in_chunks(recorded(sparse.get_transform()), x, budget)
    assert rows[:-1] == [16] * 6 and rows[-1] == 4
    with pytest.raises(ValueError, match="sampling_cost must be positive"):
        chunks.sampling_cost(type("Bad", (), {"sampling_cost": 0.0})())
