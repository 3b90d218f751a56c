"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike, save: Callable[[str], object], *, mode: int = 0o644) -> None:
    """Call ``save(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    An exception (or an interrupt) leaves ``path`` as it was and removes the temporary file. The file
    gets ``mode`` (mkstemp creates files readable by their owner only; outputs are meant to be shared).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
