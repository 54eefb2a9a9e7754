"""Shard files of a simulation bank: the manifest, atomic writes and checked reads.

A bank folder holds ``bank.json`` (the manifest: model, seed, chunk size, number of
simulations, site shapes and dtypes, and a small probe of the model's output) and one
``shard-000000.pt`` file per chunk. Every shard carries the bank's id (a hash of the
manifest's fields other than the probe), its chunk index and a SHA-256 checksum of its
tensors, so a shard from another bank, a truncated file or flipped bytes are refused by name.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch

from pyro_kr._atomic import atomic_path

__all__ = ["MANIFEST", "bank_id", "check_manifest", "read_shard", "shard_path", "write_shard"]

MANIFEST = "bank.json"
FORMAT = "pyro_kr.simulation_bank"
VERSION = 1
_IDENTITY = ("model", "seed", "chunk_size", "num_simulations", "latents", "observations")


def shard_path(folder: str | os.PathLike, index: int) -> Path:
    """The file of chunk ``index`` in the bank ``folder``."""
    return Path(folder) / f"shard-{index:06d}.pt"


def bank_id(manifest: dict) -> str:
    """Hash of the manifest fields that fix the bank's pairs (the probe is compared apart)."""
    key = json.dumps({k: manifest[k] for k in _IDENTITY}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def check_manifest(folder: Path, new: dict) -> None:
    """Raise ``ValueError`` naming the first difference between the stored and new manifest."""
    file = folder / MANIFEST
    try:
        old = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"bank manifest {file} cannot be read ({exc}); delete the folder {folder} to "
            "start the bank over"
        ) from exc
    if old.get("format") != FORMAT or old.get("version") != VERSION:
        raise ValueError(f"{file} is not a pyro_kr simulation bank (version {VERSION})")
    for key in _IDENTITY:
        if old.get(key) != new[key]:
            raise ValueError(
                f"the bank in {folder} was written with {key}={old.get(key)!r}, this call has "
                f"{key}={new[key]!r}; pass path= a new folder, or delete {folder} to redraw it"
            )
    for name, values in new["probe"].items():
        stored = torch.tensor(old.get("probe", {}).get(name, []), dtype=torch.float64)
        fresh = torch.tensor(values, dtype=torch.float64)
        if stored.shape != fresh.shape or not torch.allclose(stored, fresh, rtol=1e-6,
                                                             atol=1e-9, equal_nan=True):
            raise ValueError(
                f"the bank in {folder} was written by another model (site {name!r} of a probe "
                f"simulation differs although model name, seed and shapes agree); pass path= "
                f"a new folder, or delete {folder} to redraw it"
            )


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def write_shard(folder: Path, index: int, manifest: dict, latents: dict, observations: dict):
    """Write chunk ``index`` atomically (a temporary file renamed over the shard)."""
    tensors = {f"latents/{k}": v for k, v in latents.items()}
    tensors |= {f"observations/{k}": v for k, v in observations.items()}
    record = {
        "format": FORMAT, "version": VERSION, "bank_id": bank_id(manifest), "index": index,
        "sha256": _digest(tensors), "tensors": {k: v.cpu() for k, v in tensors.items()},
    }
    with atomic_path(shard_path(folder, index)) as tmp, open(tmp, "wb") as f:
        torch.save(record, f)


def _expected_rows(manifest: dict, index: int) -> int:
    start = index * manifest["chunk_size"]
    return min(manifest["chunk_size"], manifest["num_simulations"] - start)


def read_shard(folder: Path, index: int, manifest: dict) -> tuple[dict, dict]:
    """Load chunk ``index`` and check it against the manifest; ``ValueError`` naming the file."""
    file = shard_path(folder, index)
    fix = f"delete {file} and rerun pyro_kr.simulate with the same arguments to redraw it"
    try:
        record = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported by name
        raise ValueError(f"shard {file} is corrupted ({type(exc).__name__}: {exc}); {fix}") \
            from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"shard {file} is not a pyro_kr simulation shard; {fix}")
    if record.get("bank_id") != bank_id(manifest) or record.get("index") != index:
        raise ValueError(
            f"shard {file} belongs to another bank (other model, seed, chunk size or shapes) "
            f"or another chunk; {fix}"
        )
    tensors = record.get("tensors", {})
    rows = _expected_rows(manifest, index)
    expected = {f"latents/{k}": v for k, v in manifest["latents"].items()}
    expected |= {f"observations/{k}": v for k, v in manifest["observations"].items()}
    if set(tensors) != set(expected):
        raise ValueError(f"shard {file} holds sites {sorted(tensors)}, expected "
                         f"{sorted(expected)}; {fix}")
    for key, spec in expected.items():
        t = tensors[key]
        if tuple(t.shape) != (rows, *spec["shape"]) or str(t.dtype) != spec["dtype"]:
            raise ValueError(
                f"shard {file}: {key} has shape {tuple(t.shape)} and {t.dtype}, expected "
                f"{(rows, *spec['shape'])} and {spec['dtype']}; {fix}"
            )
    if _digest(tensors) != record.get("sha256"):
        raise ValueError(f"shard {file} is corrupted (checksum mismatch); {fix}")
    split = {"latents": {}, "observations": {}}
    for key, t in tensors.items():
        kind, name = key.split("/", 1)
        split[kind][name] = t
    return split["latents"], split["observations"]


def num_chunks(num_simulations: int, chunk_size: int) -> int:
    return math.ceil(num_simulations / chunk_size)
