"""Turn user draws (tensors, arrays, dicts of them) into checked ``(n, d)`` float64 tensors.

Every metric in :mod:`pyro_kr.metrics` goes through :func:`as_draws` (one set) or
:func:`as_pair` (two sets that must share the coordinate layout), so the validation and the
flattening order are the same everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from pyro_kr._validation import check_finite

#: What the metrics accept as a set of draws: an ``(n, d)`` (or ``(n,)``) tensor or array, or a
#: mapping ``name -> (n, ...)`` array whose entries are flattened and concatenated.
Draws = torch.Tensor | np.ndarray | Mapping[str, Any]


def _to_tensor(owner: str, value: Any, *, what: str, device=None) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value.detach()
    elif isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        t = torch.as_tensor(np.asarray(value))
    else:
        raise TypeError(
            f"{owner} expected {what} as a torch.Tensor, a numpy array or a dict of them, "
            f"got {type(value).__name__}"
        )
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.bool)):
        raise TypeError(f"{owner} expected real-valued {what}, got dtype {t.dtype}")
    if device is not None:
        t = t.to(device)
    return t.to(torch.float64)


def flatten_names(draws: Mapping[str, Any], order: list[str] | None = None) -> list[str]:
    """Return coordinate labels ``name`` or ``name[i]`` for a dict of draws, in flattening order.

    Example:
        >>> flatten_names({"a": np.zeros((5,)), "b": np.zeros((5, 2))})
        ['a', 'b[0]', 'b[1]']
    """
    names: list[str] = []
    for key in order if order is not None else list(draws):
        shape = np.shape(draws[key])[1:]
        size = int(np.prod(shape)) if shape else 1
        if not shape:
            names.append(str(key))
        else:
            names.extend(f"{key}[{i}]" for i in range(size))
    return names


def as_draws(
    owner: str,
    draws: Draws,
    *,
    what: str = "draws",
    order: list[str] | None = None,
    device=None,
) -> torch.Tensor:
    """Return ``draws`` as a finite float64 tensor of shape ``(n, d)``.

    Args:
        owner: name of the calling function, used in error messages.
        draws: tensor or array of shape ``(n, d)`` or ``(n,)`` (read as ``d = 1``), or a mapping
            ``name -> (n, ...)``; a mapping is flattened per entry and concatenated in the order
            ``order`` (default: the mapping's own order).
        what: how the error messages name this argument.
        order: key order for a mapping input; its key set must match exactly.
        device: move the result to this device (default: where it is).

    Returns:
        Tensor of shape ``(n, d)``, dtype float64.

    Example:
        >>> as_draws("demo", {"a": np.zeros(4), "b": np.ones((4, 2))}).shape
        torch.Size([4, 3])
    """
    if isinstance(draws, Mapping):
        keys = list(draws) if order is None else list(order)
        if set(keys) != set(draws):
            raise ValueError(
                f"{owner} expected {what} with sites {sorted(keys)}, got sites {sorted(draws)}"
            )
        if not keys:
            raise ValueError(f"{owner} received {what} as an empty mapping")
        parts = []
        for key in keys:
            t = _to_tensor(owner, draws[key], what=f"{what}[{key!r}]", device=device)
            if t.dim() == 0:
                raise ValueError(f"{owner} expected {what}[{key!r}] of shape (n, ...), got ()")
            parts.append(t.reshape(t.shape[0], -1))
        sizes = {p.shape[0] for p in parts}
        if len(sizes) != 1:
            raise ValueError(
                f"{owner} expected every entry of {what} to hold the same number of draws, "
                f"got {dict(zip(keys, (p.shape[0] for p in parts), strict=True))}"
            )
        if device is None:
            device = parts[0].device
        x = torch.cat([p.to(device) for p in parts], dim=-1)
    else:
        x = _to_tensor(owner, draws, what=what, device=device)
        if x.dim() == 1:
            x = x.unsqueeze(-1)
        if x.dim() != 2:
            raise ValueError(
                f"{owner} expected {what} of shape (n, d) or (n,), got shape {tuple(x.shape)}"
            )
    if x.shape[0] < 2:
        raise ValueError(f"{owner} needs at least 2 {what}, got shape {tuple(x.shape)}")
    check_finite(owner, x, what=what)
    return x


def as_pair(
    owner: str, x: Draws, y: Draws, *, names: tuple[str, str] = ("x", "y")
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return two draw sets as ``(n, d)`` and ``(m, d)`` float64 tensors on ``x``'s device.

    Mappings are flattened in ``x``'s key order (``y`` must have the same keys); plain arrays
    must agree in their number of coordinates ``d``.

    Raises:
        ValueError: when the coordinates disagree (the message names both shapes), or on NaN.

    Example:
        >>> a, b = as_pair("demo", np.zeros((3, 2)), torch.ones(5, 2))
        >>> a.shape, b.shape
        (torch.Size([3, 2]), torch.Size([5, 2]))
    """
    if isinstance(x, Mapping) != isinstance(y, Mapping):
        raise TypeError(
            f"{owner} expected {names[0]} and {names[1]} both as arrays or both as dicts, "
            f"got {type(x).__name__} and {type(y).__name__}"
        )
    order = list(x) if isinstance(x, Mapping) else None
    xt = as_draws(owner, x, what=names[0], order=order)
    yt = as_draws(owner, y, what=names[1], order=order, device=xt.device)
    if xt.shape[1] != yt.shape[1]:
        raise ValueError(
            f"{owner} expected {names[0]} and {names[1]} with the same number of coordinates, "
            f"got {names[0]} of shape {tuple(xt.shape)} and {names[1]} of shape "
            f"{tuple(yt.shape)}"
        )
    return xt, yt


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """Return a ``torch.Generator`` on ``device`` seeded with ``seed`` (no global RNG use)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def subsample(x: torch.Tensor, n: int | None, gen: torch.Generator) -> torch.Tensor:
    """Return ``n`` rows of ``x`` drawn without replacement (all of them, shuffled, if None)."""
    perm = torch.randperm(x.shape[0], generator=gen, device=gen.device).to(x.device)
    if n is not None:
        if n > x.shape[0]:
            raise ValueError(f"asked for {n} draws but only {x.shape[0]} are available")
        perm = perm[:n]
    return x[perm]
