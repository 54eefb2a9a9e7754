"""The four 2-D joint distributions of Kerrigan et al. 2024, Table 1 (appendix F.1).

Each generator returns a pair ``(u, y)`` of float32 tensors of shape ``(n, 1)``: ``y`` is the
conditioning variable (the data) and ``u`` the variable whose conditional ``nu(u | y)`` is
learned. The layout follows the paper's public code (github GavinKerrigan/cot_fm,
``data/synthetic.py``, which stores samples "in (u, y) format" and conditions on coordinate 1):
column 0 of each 2-D point is ``u`` and column 1 is ``y``.

* ``checkerboard``: the generator of Hosseini et al. (2023), used by Kerrigan et al. 2024: ``u ~
  U[-1, 1]``;
  given the column of ``u`` the point lies uniformly in one of the two squares of that column.
* ``moons``: scikit-learn's ``make_moons(noise=0.05)``, then ``(x - (0.5, 0.25)) / sqrt((0.75,
  0.25))``. The paper's text calls ``(0.75, 0.25)`` a standard deviation, but its code divides by
  the square root (they are variances); we follow the code, which produced the reported numbers.
* ``circles``: ``make_circles(factor=0.5, noise=0.05)``.
* ``swissroll``: ``make_swiss_roll(noise=0.75)``, coordinates 0 and 2 kept, divided by 12.

scikit-learn's formulas are reimplemented in torch (no scikit-learn dependency); draws are
seeded through a :class:`torch.Generator`, so they match scikit-learn in distribution, not
number for number.

Example:
    >>> from pyro_kr.bench.problems.joint2d import DATASETS
    >>> u, y = DATASETS["moons"](1000, seed=0)
    >>> u.shape, y.shape
    (torch.Size([1000, 1]), torch.Size([1000, 1]))
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from pyro_kr._validation import check_dim

__all__ = ["DATASETS", "checkerboard", "circles", "moons", "swissroll"]


def _generator(seed: int) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return torch.Generator().manual_seed(seed)


def _split(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n, 2)`` float64 points in (u, y) layout -> ``(u, y)``, float32, each ``(n, 1)``."""
    points = points.to(torch.float32)
    return points[:, :1].contiguous(), points[:, 1:].contiguous()


def checkerboard(n: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` points of the checkerboard joint (Hosseini et al., 2023; Kerrigan et al. 2024
    F.1).

    ``u ~ U[-1, 1]``. For ``u`` in ``[-1, -0.5]`` or ``[0, 0.5]``, ``y`` is uniform on
    ``[0, 0.5]`` or ``[-1, -0.5]`` (probability 1/2 each); for ``u`` in ``[-0.5, 0]`` or
    ``[0.5, 1]``, ``y`` is uniform on ``[0.5, 1]`` or ``[-0.5, 0]``.

    Args:
        n: number of points.
        seed: seed of the torch generator.

    Returns:
        ``(u, y)``, each of shape ``(n, 1)``, float32.

    Example:
        >>> u, y = checkerboard(10, seed=1)
        >>> bool((u.abs() <= 1).all() and (y.abs() <= 1).all())
        True
    """
    check_dim("n", n)
    gen = _generator(seed)
    u = 2.0 * torch.rand(n, generator=gen, dtype=torch.float64) - 1.0
    pattern1 = (u <= -0.5) | ((u >= 0.0) & (u <= 0.5))
    upper = torch.randint(2, (n,), generator=gen).bool()
    base = torch.rand(n, generator=gen, dtype=torch.float64) * 0.5
    # pattern 1: upper square [0, 0.5], lower square [-1, -0.5]
    # pattern 2: upper square [0.5, 1], lower square [-0.5, 0]
    offset1 = torch.where(upper, 0.0, -1.0)
    offset2 = torch.where(upper, 0.5, -0.5)
    y = base + torch.where(pattern1, offset1, offset2)
    return _split(torch.stack([u, y], dim=-1))


def _shuffle_and_noise(points: torch.Tensor, noise: float, gen: torch.Generator) -> torch.Tensor:
    points = points[torch.randperm(points.shape[0], generator=gen)]
    return points + noise * torch.randn(points.shape, generator=gen, dtype=points.dtype)


def make_moons(n: int, *, noise: float, gen: torch.Generator) -> torch.Tensor:
    """scikit-learn's ``make_moons`` in torch: ``(n, 2)`` float64 points (shuffled)."""
    n_out = n // 2
    n_in = n - n_out
    s_out = torch.linspace(0.0, math.pi, n_out, dtype=torch.float64)
    s_in = torch.linspace(0.0, math.pi, n_in, dtype=torch.float64)
    outer = torch.stack([torch.cos(s_out), torch.sin(s_out)], dim=-1)
    inner = torch.stack([1.0 - torch.cos(s_in), 1.0 - torch.sin(s_in) - 0.5], dim=-1)
    return _shuffle_and_noise(torch.cat([outer, inner]), noise, gen)


def make_circles(n: int, *, factor: float, noise: float, gen: torch.Generator) -> torch.Tensor:
    """scikit-learn's ``make_circles`` in torch: ``(n, 2)`` float64 points (shuffled)."""
    n_out = n // 2
    n_in = n - n_out
    s_out = torch.arange(n_out, dtype=torch.float64) * (2.0 * math.pi / max(n_out, 1))
    s_in = torch.arange(n_in, dtype=torch.float64) * (2.0 * math.pi / max(n_in, 1))
    outer = torch.stack([torch.cos(s_out), torch.sin(s_out)], dim=-1)
    inner = factor * torch.stack([torch.cos(s_in), torch.sin(s_in)], dim=-1)
    return _shuffle_and_noise(torch.cat([outer, inner]), noise, gen)


def make_swiss_roll(n: int, *, noise: float, gen: torch.Generator) -> torch.Tensor:
    """scikit-learn's ``make_swiss_roll`` in torch: ``(n, 3)`` float64 points."""
    t = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, generator=gen, dtype=torch.float64))
    height = 21.0 * torch.rand(n, generator=gen, dtype=torch.float64)
    points = torch.stack([t * torch.cos(t), height, t * torch.sin(t)], dim=-1)
    return points + noise * torch.randn(points.shape, generator=gen, dtype=torch.float64)


def moons(n: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` points of the scaled two-moons joint (Kerrigan et al. 2024 F.1).

    Args:
        n: number of points.
        seed: seed of the torch generator.

    Returns:
        ``(u, y)``, each of shape ``(n, 1)``, float32.

    Example:
        >>> u, y = moons(100, seed=0)
        >>> u.dtype
        torch.float32
    """
    check_dim("n", n)
    points = make_moons(n, noise=0.05, gen=_generator(seed))
    shift = torch.tensor([0.5, 0.25], dtype=torch.float64)
    scale = torch.tensor([0.75, 0.25], dtype=torch.float64).sqrt()
    return _split((points - shift) / scale)


def circles(n: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` points of the two-circles joint (``factor=0.5, noise=0.05``; Kerrigan et al.
    2024 F.1).

    Args:
        n: number of points.
        seed: seed of the torch generator.

    Returns:
        ``(u, y)``, each of shape ``(n, 1)``, float32.

    Example:
        >>> u, y = circles(100, seed=0)
        >>> float((u**2 + y**2).max()) < 1.5
        True
    """
    check_dim("n", n)
    return _split(make_circles(n, factor=0.5, noise=0.05, gen=_generator(seed)))


def swissroll(n: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` points of the 2-D swiss roll (``noise=0.75``, coordinates 0 and 2, / 12).

    Args:
        n: number of points.
        seed: seed of the torch generator.

    Returns:
        ``(u, y)``, each of shape ``(n, 1)``, float32.

    Example:
        >>> u, y = swissroll(100, seed=0)
        >>> u.shape
        torch.Size([100, 1])
    """
    check_dim("n", n)
    points = make_swiss_roll(n, noise=0.75, gen=_generator(seed))
    return _split(points[:, [0, 2]] / 12.0)


DATASETS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "checkerboard": checkerboard,
    "moons": moons,
    "circles": circles,
    "swissroll": swissroll,
}
"""``name -> generator(n, *, seed) -> (u, y)``, each ``(n, 1)`` float32 (Kerrigan et al. 2024,
Table 1)."""
