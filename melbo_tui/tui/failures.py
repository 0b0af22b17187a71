"""How a failure reads in the explorer: one line, never a traceback."""

from __future__ import annotations

from melbo_tui.errors import MelboError


def error_line(exc: BaseException | None) -> str:
    """A user's mistake as the engine worded it; anything else as a bug, still on one line."""
    if isinstance(exc, MelboError):
        return str(exc)
    return f"internal error: {type(exc).__name__}: {exc}"
