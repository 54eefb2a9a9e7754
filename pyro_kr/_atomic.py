"""Atomic file writes: a temporary file in the target's folder, then ``os.replace``.

Every file pyro_kr writes for later use (checkpoints, reference caches, benchmark results,
reports, plots) goes through :func:`atomic_path`, so an interrupt (Ctrl-C, a crash, a full
disk) leaves either the previous file or the new one, never half a file.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path"]


def _target_mode(path: Path) -> int:
    if path.exists():
        return stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` when the block succeeds.

    On any exception (``KeyboardInterrupt`` included) the temporary file is removed and
    ``path`` is left as it was. ``suffix`` lets writers that choose a format from the file
    name (``np.savez`` appends ``.npz``, matplotlib reads ``.png``) see the right extension.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates the file 0600; give it the mode a plain open() would have (or the
        # mode of the file it replaces), so shipped data and reports stay readable by others
        os.chmod(tmp, _target_mode(path))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
