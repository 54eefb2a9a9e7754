"""Input checks shared by every public entry point.

User errors raise ``ValueError``/``TypeError`` naming what was expected and what came
(STYLE.md, convention 7); nothing here uses ``assert``.
"""

from __future__ import annotations

import torch


def check_dim(name: str, value: int, *, minimum: int = 1) -> int:
    """Return ``value`` as an int if it is an integer ``>= minimum``, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_event(owner: str, x: torch.Tensor, dim: int, *, what: str = "input") -> None:
    """Check that ``x`` has shape ``(..., dim)`` and finite entries."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner} expected a torch.Tensor {what}, got {type(x).__name__}")
    if x.dim() == 0 or x.shape[-1] != dim:
        raise ValueError(
            f"{owner} expected {what} of shape (..., {dim}), got shape {tuple(x.shape)}"
        )
    check_finite(owner, x, what=what)


def check_finite(owner: str, x: torch.Tensor, *, what: str = "input") -> None:
    """Raise ``ValueError`` if ``x`` holds NaN or infinite entries."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{owner} received {what} with {bad} non-finite entries (NaN or inf); "
            "check the data and the model's parameters before calling it"
        )


def check_dtype(owner: str, x: torch.Tensor, reference: torch.Tensor, *, what: str = "input"):
    """Raise ``TypeError`` when ``x`` and the module's parameters disagree in dtype."""
    if x.dtype != reference.dtype:
        raise TypeError(
            f"{owner} received {what} of dtype {x.dtype} but its parameters are "
            f"{reference.dtype}; convert the module with .to({x.dtype}) or the input with "
            f".to({reference.dtype})"
        )
