"""Bounded-memory sampling: push a batch of reference draws through a map in row chunks.

The KR queries (``AutoKR.sample_posterior``, ``KRQueries.marginal``,
``ConditionalPosterior.sample``) draw all ``(num_samples, d)`` reference points at once and map
them through ``T``. Mapped in one call, the intermediate tensors of the map's conditioner
networks grow with ``num_samples * d`` (measured: about 450 bytes per coordinate for the
sparse monotone map of ``AutoKR(structure="plates")``; 40,000 draws of a 1,000-group model
would need about 18 GB). :func:`map_in_chunks` maps at most
:data:`SAMPLE_CHUNK_COORDINATES` coordinates per call and writes each chunk's result into the
output, so the peak is the output plus one chunk's intermediates.

The map acts row by row, so the result equals one un-chunked call (up to the last bits of
floating point where a matrix product's kernel depends on the batch size), and the random
stream is unchanged: the reference draws are drawn once, before mapping.

``pyro_kr.diagnostics.draw_guide`` (behind ``psis`` and ``to_inference_data``) runs its
vectorized pass (guide and model under one plate of draws) in chunks of :func:`chunk_rows`
draws under the same budget, counting the latent sites' numel per draw. There the random
stream does change with the chunking (each chunk draws its own base sample), so a batch that
fits the budget runs in one pass, exactly as without chunking.

The budget is in coordinates times the map's :func:`sampling_cost`: the sparse map of
``structure="plates"`` declares 8 (its conditioner runs per draw and group), a dense map 1.
Measured on a 2-core Linux box (``OMP_NUM_THREADS=1``) with the slow test
``tests/test_guides_sparse.py::test_sampling_memory_is_linear_in_draws`` (300 groups, sparse
affine map: ``Predictive`` of 1,000 draws, ``sample_posterior(8000)``, ``psis`` and
``to_inference_data`` of 4,000 draws; bound 150 MB of resident growth): growth 663 MB with
2^20 sparse coordinates per call, 209 MB at 2^18, 166 MB at 2^17, 119 to 142 MB at 2^16, 88 to
105 MB at 2^15; the dense map grows 85 MB at 2^20. So the sparse map gets 2^16 (2^19 / 8) and
the dense one 2^19, where it samples as fast as in one call: ``sample_posterior(4000)`` of a
dense 300-latent ``AutoKR`` took 1.4 to 1.6 s at 2^20 and 2^19 against 1.7 to 2.0 s at 2^16 and
2.5 to 2.8 s at 2^15 (one budget for every map had cost the dense map 30 %). The sparse
monotone map at 1,000 groups (65 rows per call at 2^16) samples faster chunked than in one call
(2.7 to 3.4 s against 5.4 to 6.7 s for 4,000 draws).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["SAMPLE_CHUNK_COORDINATES", "chunk_rows", "map_in_chunks", "sampling_cost"]

SAMPLE_CHUNK_COORDINATES = 2**19
"""The most coordinates (rows x dimension, times the map's :func:`sampling_cost`) that the KR
queries map in one call, and the same for the latent coordinates (draws x latent numel) of one
vectorized pass of ``draw_guide``: 524,288. A dense map (cost 1, about 80 bytes per
coordinate) maps that many per call; the sparse map of ``structure="plates"`` (cost 8: its
conditioner runs per draw and group, 450 bytes per coordinate for the monotone map, 1.1 KB for
the affine map with its group embedding) maps 65,536, about 30 to 72 MB of intermediates (see
the module docstring for the measurements behind the choice). Read at each call, so it can be
changed at run time (``pyro_kr.guides.chunks.SAMPLE_CHUNK_COORDINATES = ...``);
``float("inf")`` maps every batch in one call."""


def sampling_cost(obj) -> float:
    """The relative memory per mapped coordinate that a map or guide declares (its
    ``sampling_cost`` attribute; ``1`` for a dense map and for objects without one): the
    budget :data:`SAMPLE_CHUNK_COORDINATES` is divided by it.

    Example:
        >>> sampling_cost(object())
        1.0
    """
    cost = float(getattr(obj, "sampling_cost", 1.0))
    if not cost > 0:
        raise ValueError(f"sampling_cost must be positive, got {cost} for {type(obj).__name__}")
    return cost


def chunk_rows(n: int, d: int, budget: float | None = None, cost: float = 1.0) -> int:
    """Rows per call so that ``rows x d x cost`` stays within ``budget`` coordinates.

    ``max(1, budget // (d * cost))`` capped at ``n`` (``n`` when ``d == 0``); ``budget``
    defaults to :data:`SAMPLE_CHUNK_COORDINATES`, read at call time; ``cost`` is the map's
    :func:`sampling_cost`.

    Example:
        >>> chunk_rows(10, 2, budget=7), chunk_rows(10, 2, budget=float("inf"))
        (3, 10)
        >>> chunk_rows(10, 2, budget=16, cost=4.0)
        2
    """
    if budget is None:
        budget = SAMPLE_CHUNK_COORDINATES
    if not budget > 0:
        raise ValueError(f"the coordinate budget must be positive, got {budget}")
    return n if d == 0 else max(1, int(min(n, budget // (d * cost))))


def map_in_chunks(
    transform: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    budget: float | None = None,
) -> torch.Tensor:
    """Apply a row-wise ``transform`` to ``x`` in row chunks of at most ``budget`` coordinates.

    Each call gets ``rows = max(1, budget // (d * cost))`` rows, ``cost`` the transform's
    :func:`sampling_cost` (``rows x d x cost <= budget`` unless one row alone is larger), the
    last call the remainder; the results are stacked in order into one
    tensor on the device and with the dtype of the transform's output (which follow ``x`` for
    the library's maps). A batch that fits the budget is mapped in one call.

    Args:
        transform: maps ``(rows, d)`` to ``(rows, *out)`` row by row (e.g. ``guide.
            get_transform()``).
        x: ``(n, d)`` inputs.
        budget: coordinates (times the transform's :func:`sampling_cost`) per call; default
            :data:`SAMPLE_CHUNK_COORDINATES`, read at call time.

    Returns:
        ``(n, *out)``: the same values as ``transform(x)``.

    Example:
        >>> import torch
        >>> from pyro_kr.guides.chunks import map_in_chunks
        >>> sizes = []
        >>> def double(x):
        ...     sizes.append(x.shape[0])
        ...     return 2 * x
        >>> x = torch.arange(20.0).reshape(10, 2)
        >>> y = map_in_chunks(double, x, budget=7)  # 3 rows (6 coordinates) per call
        >>> sizes, bool((y == 2 * x).all())
        ([3, 3, 3, 1], True)
    """
    if x.dim() != 2:
        raise ValueError(f"map_in_chunks needs x of shape (n, d), got {tuple(x.shape)}")
    n, d = x.shape
    rows = chunk_rows(n, d, budget, sampling_cost(transform))
    if n <= rows:
        return transform(x)
    first = transform(x[:rows])
    out = first.new_empty((n, *first.shape[1:]))
    out[:rows] = first
    del first
    for start in range(rows, n, rows):
        out[start : start + rows] = transform(x[start : start + rows])
    return out
