"""Where the explorer writes: the workspace (the working directory, or `--workspace DIR`), never
beside a bank it did not make.

Banks of jobs (`o`, `T`) and exports (`x`) go there under a free name; a name the user types is
taken relative to the workspace, as the CLI takes `--out` relative to the working directory, and
refused in one line before anything runs (the CLI's rule for `--out`, and an existing file). Paths are shown relative to
the workspace when they are inside it.
"""

from __future__ import annotations

from pathlib import Path

from melbo_tui.atomic import check_writable
from melbo_tui.errors import OutputError


def free_path(directory: Path, stem: str, suffixes: tuple[str, ...] = (".safetensors",)) -> Path:
    """`directory/stem` + the first suffix, or `stem-2`, `stem-3`... while any of the suffixes is taken."""
    name, n = stem, 2
    while any((directory / f"{name}{suffix}").exists() for suffix in suffixes):
        name, n = f"{stem}-{n}", n + 1
    return directory / f"{name}{suffixes[0]}"


def output_path(workspace: Path, text: str, *, may_exist: bool = False) -> Path:
    """The file a user named, relative to the workspace (an absolute path stays as it is).

    The CLI's rule for `--out` (`atomic.check_writable`: missing folders are made, a directory,
    a read-only folder or a full disk is refused), and a file that exists is refused too: a
    job never continues or overwrites a bank from inside the explorer.
    """
    if not text.strip():
        raise OutputError("give a file name")
    path = workspace / Path(text.strip()).expanduser()
    check_writable(path, "output")
    if path.exists() and not may_exist:
        raise OutputError(f"{show_path(path, workspace)} exists: give another name")
    return path


def show_path(path: Path, workspace: Path) -> str:
    """`./name` inside the workspace, else the absolute path."""
    try:
        return "./" + str(path.resolve().relative_to(workspace.resolve()))
    except ValueError:
        return str(path.resolve())
