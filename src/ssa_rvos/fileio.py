"""Writing files and folders so that a reader never sees half of one.

Every output of the package (checkpoints, configs, prediction folders, SynthRef splits, videos, JSON)
is written under a temporary hidden name beside its final name and renamed into place when complete:

* :func:`atomic_write` for a file (``save(tmp)`` writes it);
* :func:`atomic_dir` for a folder (the block fills it; an older folder of that name is replaced);
* :func:`temporary_path` names a temporary file for writers that open their own file (a video encoder).

Temporary names are ``.<final name>.<random>.partial[<suffix>]`` (``.old`` for a folder being replaced):
:func:`is_temporary` recognises them, so readers of output folders skip what an interrupted run left, and
:func:`remove_temporaries` clears them before a rerun writes there again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_dir", "atomic_write", "atomic_write_text", "exchange_dirs", "is_temporary", "link_tree",
           "remove_temporaries", "replace_dir", "temporary_path"]

PARTIAL = ".partial"
OLD = ".old"


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def temporary_path(path: str | os.PathLike, *, suffix: str = "") -> Path:
    """A fresh hidden name beside ``path`` for writing it: ``.<name>.<random>.partial<suffix>``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{_tag()}{PARTIAL}{suffix}")


def is_temporary(name: str) -> bool:
    """Whether a file or folder name is one of our temporary names (:func:`temporary_path`, :func:`atomic_dir`,
    :func:`atomic_write`): left behind only by an interrupted writer, never a finished output."""
    return name.startswith(".") and (PARTIAL in name or name.endswith((OLD, ".tmp")))


def atomic_write(path: str | os.PathLike, save: Callable[[str], object], *, mode: int = 0o644) -> None:
    """Call ``save(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    An exception (or an interrupt) leaves ``path`` as it was and removes the temporary file. The file
    gets ``mode`` (mkstemp creates files readable by their owner only; outputs are meant to be shared).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f"{PARTIAL}.tmp")
    os.close(fd)
    try:
        save(tmp)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of a UTF-8 text."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing a folder of that name: the old one is first
    renamed aside (``.<name>.<random>.old``), so ``final`` always names a complete folder, then removed."""
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.is_dir() and not final.is_symlink():
        old = final.with_name(f".{final.name}.{_tag()}{OLD}")
        os.replace(final, old)
    elif final.exists() or final.is_symlink():
        final.unlink()
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(path: str | os.PathLike, *, mode: int = 0o755) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; when the block ends without an error it becomes
    ``path`` (:func:`replace_dir`), else it is removed and ``path`` is left as it was.

    mode: the folder's permissions (mkdtemp makes it private; outputs are meant to be shared).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=PARTIAL))
    try:
        tmp.chmod(mode)
        yield tmp
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_temporaries(folder: str | os.PathLike, *, names: Callable[[str], bool] | None = None) -> list[str]:
    """Remove the temporary files and folders (:func:`is_temporary`) directly inside ``folder`` that an
    interrupted earlier run left; ``names`` narrows which (e.g. only those of one output). Call it only
    where no other process writes at the same time. Returns the names removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        if is_temporary(entry.name) and (names is None or names(entry.name)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one system call (Linux ``renameat2(RENAME_EXCHANGE)``); False where the C library,
    the kernel or the file system does not offer it."""
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def exchange_dirs(new: str | os.PathLike, final: str | os.PathLike) -> None:
    """Make the folder ``new`` the folder ``final`` in one step; what ``final`` held is then at ``new``
    (for the caller to remove). Where the system cannot swap two folders atomically, ``final`` is renamed
    aside first: for that instant it is missing, but never half old and half new."""
    new, final = Path(new), Path(final)
    if not final.exists():
        os.replace(new, final)
        return
    if _renameat2_exchange(new, final):
        return
    old = final.with_name(f".{final.name}.{_tag()}{OLD}")
    os.replace(final, old)
    os.replace(new, final)
    os.replace(old, new)


def link_tree(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Recreate ``src`` at ``dst`` with hard links to its files (copies where links are impossible, e.g.
    across file systems) and its symbolic links as they are: the same bytes, no copy, ``src`` untouched."""
    src, dst = Path(src), Path(dst)
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        dst.mkdir()
        for entry in src.iterdir():
            link_tree(entry, dst / entry.name)
        shutil.copystat(src, dst)
    else:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
