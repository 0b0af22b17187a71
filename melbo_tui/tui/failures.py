"""How a failure reads in the explorer: one line, never a traceback."""

from __future__ import annotations

from melbo_tui.errors import MelboError, spell


def error_line(exc: BaseException | None) -> str:
    """A user's mistake as the engine worded it (parameter names plain, without the engine's
    backticks); anything else as a bug, still on one line."""
    if isinstance(exc, MelboError):
        return spell(exc)
    return f"internal error: {type(exc).__name__}: {exc}"
