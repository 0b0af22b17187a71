"""Atomic file writes: a reader (or a crash) never sees half a file.

Write to a temporary file in the same directory, fsync it, rename it over the target, fsync
the directory. Long jobs checkpoint through this, so Ctrl-C or a power cut leaves either the
previous complete file or the new complete file. An operating-system error on the way (a full
disk, a read-only directory) becomes one `OutputError` line saying the previous file is intact.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from melbo_tui.errors import OutputError

MIN_FREE_BYTES = 1 << 20  # a disk with less free is refused before a long run, not after it


def check_writable(path: Path, what: str) -> None:
    """Fail in a moment, before any work, when `path` cannot be written; `what` names it in the message.

    Refused: a directory, a parent that is a file, a directory we cannot create a file in
    (permissions, a read-only mount), a disk with less than 1 MiB free. Missing parent
    directories are fine: writes create them (checked: the nearest existing one is writable).
    A disk that fills up during the run still fails at the write, with one line and the
    previous file intact (`atomic_write`). One rule for every face: the CLI's `--out` and the
    explorer's job and export paths.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputError(f"{what} {path} is a directory: give a file name")
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{what} {path}: {ancestor} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".melbo-write-check-", dir=ancestor)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{what} {path}: cannot write in {ancestor} ({exc.strerror or exc})") from None
    if shutil.disk_usage(ancestor).free < MIN_FREE_BYTES:
        raise OutputError(f"{what} {path}: no space left on the disk of {ancestor}")


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any thread starts
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` then move `tmp_path` onto `path` atomically."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; a bank is as shareable as any file
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        kept = "the previous file is unchanged" if path.exists() else "nothing was written"
        raise OutputError(f"cannot write {path}: {_reason(exc)} ({kept})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    atomic_write(path, write)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
