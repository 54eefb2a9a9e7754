"""Where reference posteriors are cached and how a cache entry is named.

The key is a SHA-256 of a canonical JSON document holding the problem name, the observation
values (as float64 bytes, hashed) and every sampler setting, so changing any of them gives a
new file and never silently reuses an old one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

ENV_VAR = "PYRO_KR_CACHE"
"""Environment variable overriding the default cache directory."""


def default_cache_dir() -> Path:
    """Return the reference cache directory.

    ``$PYRO_KR_CACHE`` if set, else ``~/.cache/pyro_kr/references``.

    Example:
        >>> default_cache_dir().name in ("references", default_cache_dir().name)
        True
    """
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "pyro_kr" / "references"


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """Return ``cache_dir`` as a ``Path``, or the default when it is ``None``."""
    if cache_dir is None:
        return default_cache_dir()
    if not isinstance(cache_dir, (str, os.PathLike)):
        raise TypeError(f"cache_dir must be a str or path, got {type(cache_dir).__name__}")
    return Path(cache_dir).expanduser()


def array_digest(values: Any) -> str:
    """Return a SHA-256 hex digest of ``values`` as a contiguous float64 array (with shape)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    arr = np.ascontiguousarray(np.asarray(values, dtype=np.float64))
    h = hashlib.sha256()
    h.update(str(arr.shape).encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def cache_key(name: str, observation_digest: str, settings: Mapping[str, Any]) -> str:
    """Return the cache key (24 hex characters) for a problem, observation and settings.

    Example:
        >>> a = cache_key("demo", "abc", {"draws": 100})
        >>> a == cache_key("demo", "abc", {"draws": 100}), a == cache_key("demo", "abc", {})
        (True, False)
    """
    doc = {"name": str(name), "observation": str(observation_digest), "settings": dict(settings)}
    text = json.dumps(doc, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_path(cache_dir: Path, name: str, key: str) -> Path:
    """Return the netCDF path of a cache entry: ``<dir>/<safe name>-<key>.nc``."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(name)) or "model"
    return cache_dir / f"{safe}-{key}.nc"
