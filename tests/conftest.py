from __future__ import annotations

import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_clear():
    """Every test starts from the same seed and an empty Pyro param store."""
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
