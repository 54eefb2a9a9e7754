"""benchmarks/hierarchical_refine.py: the IAF with a fixed autoregressive order (--iaf-order)."""

from __future__ import annotations

import pyro
import torch
from _scripts import load_benchmark


def _load():
    return load_benchmark("hierarchical_refine.py", "hierarchical_refine_bench")


def test_iaf_order_fixes_the_permutation_pyro_would_draw_at_random():
    bench = _load()
    model, (y, sigma) = bench.H.model, bench.H.make_data(8)
    # the latents as AutoContinuous packs them: mu (0), tau (1), theta (2..9); the plate's
    # subsample site is not a latent
    assert bench.latent_order(model, (y, sigma), "globals_first").tolist() == list(range(10))
    assert bench.latent_order(model, (y, sigma), "locals_first").tolist() == [*range(2, 10), 0, 1]
    pyro.clear_param_store()
    guide = bench.iaf_with_order(model, (y, sigma), "locals_first")
    guide(y, sigma)
    assert bench.iaf_permutation(guide) == [*range(2, 10), 0, 1]
    assert guide(y, sigma)["theta"].shape == (8,)
    # Pyro's own AutoIAFNormal draws its order at random (what the stored rows used)
    pyro.clear_param_store()
    torch.manual_seed(0)
    default = bench.make_guide("iaf", model)
    default(y, sigma)
    assert sorted(bench.iaf_permutation(default)) == list(range(10))
    assert bench.iaf_permutation(bench.make_guide("sparse", model)) is None
