"""One writer at a time per bank: an advisory lock on a hidden sidecar `.<bank>.lock` file.

Why: `ortho --resume` appends a vector and rewrites the bank every few seconds while `eval`,
`dump` (labels), `label` or the explorer may load the same bank, work for minutes and write
it back. Atomic writes keep every file whole, but a writer holding a stale copy still replaced
the newer file: measured, a concurrent eval removed 3 ortho vectors. Every bank write
(`bank.save_bank`) takes this lock, and every read-modify-write (`update_bank`, the labels
sidecar) re-reads the file under it, so a change made by another process is merged, not lost.

The lock is `fcntl.flock` on `.<bank>.lock` (the bank file itself is replaced on every write,
so it cannot carry the lock). It is re-entrant within a thread (a read-modify-write calls
`save_bank`, which locks again), it is released by the kernel when a process dies, and the
lock file stays behind on purpose: removing it would let two processes lock two different
files. A writer waits for the lock (others hold it for milliseconds: one file write); after
`timeout` seconds it gives up with one line naming the holder. Where `fcntl` does not exist
(Windows), there is no lock.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from melbo_tui.errors import BankError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_SUFFIX = ".lock"
DEFAULT_TIMEOUT = float(os.environ.get("MELBO_TUI_LOCK_TIMEOUT", "300"))
_POLL = 0.05


class BankBusyError(BankError):
    """Another process held the bank's lock for longer than we were willing to wait."""


def lock_path(path: Path) -> Path:
    """`.<bank>.lock` beside the bank (`b.safetensors` -> `.b.safetensors.lock`)."""
    path = Path(path)
    return path.with_name(f".{path.name}{LOCK_SUFFIX}")


_held: dict[tuple[Path, int], int] = {}  # (lock file, thread id) -> depth, for re-entry
_held_guard = threading.Lock()


@contextlib.contextmanager
def bank_lock(path: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the exclusive write lock of bank `path` for the `with` block (waiting up to `timeout` s)."""
    target = lock_path(path).resolve()
    key = (target, threading.get_ident())
    with _held_guard:
        depth = _held.get(key, 0)
        if depth:
            _held[key] = depth + 1
    if depth:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _acquire(fd, target, DEFAULT_TIMEOUT if timeout is None else timeout)
        _write_owner(fd)
        with _held_guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _held_guard:
                del _held[key]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, target: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                bank = target.with_name(target.name.removeprefix(".").removesuffix(LOCK_SUFFIX))
                raise BankBusyError(f"{bank} is being written by another process ({_owner(target)}) "
                                    f"and stayed locked for {timeout:g} s; try again when it is done") from None
            time.sleep(_POLL)


def _write_owner(fd: int) -> None:
    """Who holds the lock, for the other side's error message (informative only)."""
    text = f"pid {os.getpid()}: {' '.join(sys.argv)[:200]}\n".encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, text, 0)
    except OSError:
        pass


def _owner(target: Path) -> str:
    try:
        text = target.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "unknown holder"
