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


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Run torch single-threaded: the tests are small, and on 2 shared cores several
    intra-op threads competing with another process slow training loops by 10-30x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
