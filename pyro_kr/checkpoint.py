"""Atomic checkpoint files and RNG state capture, shared by every training loop."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_kr._atomic import atomic_path

__all__ = [
    "CHECKPOINT_FRACTION",
    "atomic_save",
    "check_writable",
    "checkpoint_interval",
    "get_rng_state",
    "load_checkpoint",
    "restore_params",
    "set_rng_state",
    "snapshot_params",
]


#: Default checkpoint interval of every training loop: this fraction of the steps.
CHECKPOINT_FRACTION = 0.1


def checkpoint_interval(checkpoint_every: int | None, steps: int) -> int:
    """Steps between checkpoints: ``checkpoint_every``, or by default 10 % of ``steps``.

    The one default of :func:`pyro_kr.fit`, :func:`pyro_kr.amortized.fit_amortized` and
    :meth:`pyro_kr.flow_matching.COTFlowMatching.fit`, so an interrupt loses at most a tenth
    of the run (checkpoints resume exactly, so the interval never changes a result).

    Example:
        >>> checkpoint_interval(None, 1000), checkpoint_interval(None, 5)
        (100, 1)
        >>> checkpoint_interval(7, 50)
        7
    """
    if checkpoint_every is None:
        return max(int(CHECKPOINT_FRACTION * steps), 1)
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or (
        checkpoint_every < 1
    ):
        raise ValueError(
            f"checkpoint_every must be >= 1 (or None: 10 % of the steps), got "
            f"{checkpoint_every!r}"
        )
    return checkpoint_every


def check_writable(path: str | os.PathLike) -> None:
    """Raise ``ValueError`` now if a checkpoint cannot be written at ``path`` later.

    Creates the folder if needed and writes (then removes) a temporary file in it, which is
    exactly what :func:`atomic_save` will do.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {os.fspath(path)!r} is a folder; pass a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name + ".", suffix=".tmp"):
            pass
    except OSError as exc:
        raise ValueError(
            f"cannot write checkpoint {os.fspath(path)!r} ({type(exc).__name__}: "
            f"{exc.strerror or exc}); choose a file in a writable folder"
        ) from exc


def atomic_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``.

    An interrupted save leaves the previous checkpoint intact, never a half-written file.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint written by :func:`atomic_save`; a clear error if it is unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - re-raised with the path and the fix
        raise RuntimeError(
            f"checkpoint {os.fspath(path)!r} cannot be read ({exc}); delete it to start over"
        ) from exc


def get_rng_state() -> dict:
    """Torch (CPU and CUDA), NumPy and Python RNG states."""
    state = {
        "torch": torch.get_rng_state(),
        # The global legacy RNG is what user code may draw from: save it, not a Generator.
        "numpy": np.random.get_state(),  # noqa: NPY002
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def snapshot_params() -> dict[str, torch.Tensor]:
    """Detached copies of every parameter in Pyro's param store (unconstrained values)."""
    store = pyro.get_param_store()
    return {name: p.detach().clone() for name, p in store.named_parameters()}


def restore_params(snapshot: dict[str, torch.Tensor], *, strict: bool = False) -> None:
    """Copy saved unconstrained values into the live parameters, in place.

    In place matters: modules (e.g. a guide's transforms) hold the same tensor objects as the
    param store, and replacing the store's tensors would silently detach them.
    """
    params = dict(pyro.get_param_store().named_parameters())
    missing = sorted(set(snapshot) - set(params))
    if strict and missing:
        raise RuntimeError(
            f"checkpoint has parameters {missing} that the model and guide do not create; "
            "was it written by a different model or guide?"
        )
    mismatched = [
        f"{name}: checkpoint {tuple(snapshot[name].shape)}, now {tuple(p.shape)}"
        for name, p in params.items()
        if name in snapshot and snapshot[name].shape != p.shape
    ]
    if strict and mismatched:
        raise RuntimeError(
            f"checkpoint parameters have other shapes than the model and guide create "
            f"({'; '.join(mismatched)}); was it written by a different model or guide?"
        )
    with torch.no_grad():
        for name, p in params.items():
            if name in snapshot:
                p.copy_(snapshot[name])
