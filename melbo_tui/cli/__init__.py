"""The `melbo-tui` command: a thin typer face over the engine.

One module per group of commands (`engine_cmds`: train, calibrate, generate, info, import;
`ortho_cmds`: ortho, eval, dump, label, export, bench; `explore_cmds`: open and the default
no-argument start). Errors a user can cause are rendered once, here, as one line on stderr
with exit code 2; anything unexpected also stays one line (exit 1), never a traceback.
"""

from __future__ import annotations

import os
import sys

from melbo_tui.cli.app import app
from melbo_tui.errors import MelboError


def _register() -> None:
    # imported for their @app.command side effects; each module owns its commands
    import importlib

    for name in ("engine_cmds", "ortho_cmds", "explore_cmds"):
        try:
            importlib.import_module(f"melbo_tui.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"melbo_tui.cli.{name}":
                raise


_register()


def main() -> None:
    """Console-script entry point."""
    try:
        app(standalone_mode=False)
    except MelboError as exc:
        _fail(str(exc), 2)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except SystemExit:
        raise
    except Exception as exc:  # usage errors and real bugs alike stay one line
        # typer vendors its own click, so usage errors are recognised by shape, not by class
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            _fail(exc.format_message(), int(exc.exit_code))
        if type(exc).__name__ == "Abort":
            _fail("aborted", 1)
        if os.environ.get("MELBO_TUI_DEBUG"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (set MELBO_TUI_DEBUG=1 for a traceback)", 1)


def _fail(message: str, code: int) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    print(f"melbo-tui: error: {first}", file=sys.stderr)
    sys.exit(code)
