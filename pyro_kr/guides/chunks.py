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

The default budget, 2^16 coordinates, is the largest power of two that keeps the sampling of
``tests/test_guides_sparse.py::test_sampling_memory_is_linear_in_draws`` (300 groups, sparse
affine map: ``Predictive`` of 1,000 draws, ``sample_posterior(8000)``, ``psis`` and
``to_inference_data`` of 4,000 draws) under its bound of 150 MB of resident growth. Measured
on a 2-core Linux box (``OMP_NUM_THREADS=1``): growth 663 MB at 2^20, 209 MB at 2^18, 166 MB at
2^17, 119 to 142 MB at 2^16 (dense map: 85, 51, 47 MB at 2^20, 2^17, 2^16). The cost in speed
is small, so one budget serves every map: ``sample_posterior(4000)`` of a dense 300-latent
AutoKR took 1.80 s at 2^16 (218 rows per call), 1.64 s at 2^17, 1.56 s at 2^18, 1.63 s at 2^20;
of the sparse monotone map at 1,000 groups (1,002 latents, 65 rows per call) 2.7 to 3.2 s at
2^16 and 3.3 to 4.3 s at 2^18 and 2^20. A later rerun of the dense case gave 1.8 to 1.9 s at
2^16 against 1.4 to 1.5 s at 2^20 (about 30 % slower) and 2.5 to 2.8 s at 2^15: the dense map
pays for the sparse maps' bound, which is why the budget is not smaller.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["SAMPLE_CHUNK_COORDINATES", "chunk_rows", "map_in_chunks"]

SAMPLE_CHUNK_COORDINATES = 2**16
"""The most coordinates (rows x dimension) that the KR queries map in one call, and the most
latent coordinates (draws x latent numel) of one vectorized pass of ``draw_guide``: 65,536,
about 30 MB of intermediates at the measured 450 bytes per coordinate of the sparse monotone
map, about 72 MB at the 1.1 KB of the sparse affine map with its group embedding (see the
module docstring for the measurements behind the choice). Read at each call, so it can be
changed at run time (``pyro_kr.guides.chunks.SAMPLE_CHUNK_COORDINATES = ...``);
``float("inf")`` maps every batch in one call."""


def chunk_rows(n: int, d: int, budget: float | None = None) -> int:
    """Rows per call so that ``rows x d`` stays within ``budget`` coordinates.

    ``max(1, budget // d)`` capped at ``n`` (``n`` when ``d == 0``); ``budget`` defaults to
    :data:`SAMPLE_CHUNK_COORDINATES`, read at call time.

    Example:
        >>> chunk_rows(10, 2, budget=7), chunk_rows(10, 2, budget=float("inf"))
        (3, 10)
    """
    if budget is None:
        budget = SAMPLE_CHUNK_COORDINATES
    if not budget > 0:
        raise ValueError(f"the coordinate budget must be positive, got {budget}")
    return n if d == 0 else max(1, int(min(n, budget // d)))


def map_in_chunks(
    transform: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    budget: float | None = None,
) -> torch.Tensor:
    """Apply a row-wise ``transform`` to ``x`` in row chunks of at most ``budget`` coordinates.

    Each call gets ``rows = max(1, budget // d)`` rows (``rows x d <= budget`` unless one row
    alone is larger), the last call the remainder; the results are stacked in order into one
    tensor on the device and with the dtype of the transform's output (which follow ``x`` for
    the library's maps). A batch that fits the budget is mapped in one call.

    Args:
        transform: maps ``(rows, d)`` to ``(rows, *out)`` row by row (e.g. ``guide.
            get_transform()``).
        x: ``(n, d)`` inputs.
        budget: coordinates per call; default :data:`SAMPLE_CHUNK_COORDINATES`, read at call
            time.

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
    rows = chunk_rows(n, d, budget)
    if n <= rows:
        return transform(x)
    first = transform(x[:rows])
    out = first.new_empty((n, *first.shape[1:]))
    out[:rows] = first
    del first
    for start in range(rows, n, rows):
        out[start : start + rows] = transform(x[start : start + rows])
    return out
