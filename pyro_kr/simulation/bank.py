"""``SimulationBank``: simulated ``(latents, observations)`` pairs, in memory or in shard files."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from pyro_kr.simulation.shards import MANIFEST, num_chunks, read_shard, shard_path

__all__ = ["SimulationBank"]

Pairs = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]


class SimulationBank:
    """Prior-predictive pairs ``(u_i, y_i)``, ``i < len(bank)``, stored in chunks (shards).

    Returned by :func:`pyro_kr.simulate`; pass it to ``fit_amortized(..., mode="forward",
    simulations=bank)``. A bank written with ``path=`` lives on disk: ``shard(i)`` and
    ``shards()`` load one chunk at a time (what training streams), while ``latents`` and
    ``observations`` load everything into memory.

    Attributes:
        latents: ``name -> (N, *site_shape)`` constrained latent values (all chunks).
        observations: ``name -> (N, *site_shape)`` simulated observed values.
        path: the bank folder, or ``None`` for a bank held in memory.
        seed, chunk_size: the arguments that fixed the pairs (chunk ``i`` is drawn from a
            seed derived from ``(seed, i)``).

    Example:
        >>> import pyro, pyro.distributions as dist, torch, pyro_kr
        >>> def model(y=None):
        ...     z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        ...     return pyro.sample("y", dist.Normal(z, 0.5).to_event(1), obs=y)
        >>> bank = pyro_kr.simulate(model, 10, observed="y", chunk_size=4)
        >>> len(bank), bank.num_shards, tuple(bank.latents["z"].shape)
        (10, 3, (10, 2))
    """

    def __init__(self, manifest: dict, *, path: str | os.PathLike | None = None,
                 chunks: list[Pairs] | None = None) -> None:
        if (path is None) == (chunks is None):
            raise ValueError("a SimulationBank needs either path= or chunks=")
        self.manifest = manifest
        self.path = None if path is None else Path(path)
        self._chunks = chunks

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike) -> SimulationBank:
        """Open a complete bank folder written by ``pyro_kr.simulate(..., path=path)``.

        Raises:
            ValueError: no manifest, or some shards are missing (rerun ``simulate`` with the
                same arguments to finish the bank).
        """
        folder = Path(path)
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{folder} is not a readable simulation bank ({exc})") from exc
        bank = cls(manifest, path=folder)
        missing = [i for i in range(bank.num_shards) if not shard_path(folder, i).exists()]
        if missing:
            raise ValueError(
                f"the bank in {folder} misses {len(missing)} of {bank.num_shards} shards "
                f"(first: {shard_path(folder, missing[0]).name}); rerun pyro_kr.simulate with "
                "the same arguments to finish it"
            )
        return bank

    # -- sizes -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.manifest["num_simulations"])

    def __repr__(self) -> str:
        where = f"path={str(self.path)!r}" if self.path is not None else "in memory"
        return (f"SimulationBank({len(self)} pairs, {self.num_shards} shards, seed={self.seed}, "
                f"{where})")

    @property
    def seed(self) -> int:
        return int(self.manifest["seed"])

    @property
    def chunk_size(self) -> int:
        return int(self.manifest["chunk_size"])

    @property
    def num_shards(self) -> int:
        return num_chunks(len(self), self.chunk_size)

    @property
    def shard_sizes(self) -> list[int]:
        """Number of pairs in each shard."""
        n, c = len(self), self.chunk_size
        return [min(c, n - i * c) for i in range(self.num_shards)]

    @property
    def latent_shapes(self) -> dict[str, torch.Size]:
        return {k: torch.Size(v["shape"]) for k, v in self.manifest["latents"].items()}

    @property
    def observation_shapes(self) -> dict[str, torch.Size]:
        return {k: torch.Size(v["shape"]) for k, v in self.manifest["observations"].items()}

    # -- data ------------------------------------------------------------------------------
    def shard(self, index: int) -> Pairs:
        """``(latents, observations)`` of chunk ``index`` (read and checked from disk)."""
        if not 0 <= index < self.num_shards:
            raise IndexError(f"shard index {index} out of range 0..{self.num_shards - 1}")
        if self._chunks is not None:
            return self._chunks[index]
        return read_shard(self.path, index, self.manifest)

    def shards(self) -> Iterator[Pairs]:
        """Iterate over the chunks in order, one in memory at a time."""
        for i in range(self.num_shards):
            yield self.shard(i)

    def _concat(self, part: int) -> dict[str, torch.Tensor]:
        pieces = [pair[part] for pair in self.shards()]
        return {k: torch.cat([p[k] for p in pieces]) for k in pieces[0]}

    @property
    def latents(self) -> dict[str, torch.Tensor]:
        """``name -> (N, *shape)`` latent values (loads every shard of an on-disk bank)."""
        return self._concat(0)

    @property
    def observations(self) -> dict[str, torch.Tensor]:
        """``name -> (N, *shape)`` observed values (loads every shard of an on-disk bank)."""
        return self._concat(1)
