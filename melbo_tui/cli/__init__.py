"""The `melbo-tui` command: a thin typer face over the engine.

One module per group of commands (`engine_cmds`: train, calibrate, generate, info, import;
`ortho_cmds`: ortho, eval, dump, label, export, bench; `method_cmds`: dct, jacobian;
`explore_cmds`: open and the default
no-argument start). Errors a user can cause are rendered once, here, as one line on stderr
with exit code 2; anything unexpected also stays one line (exit 1), never a traceback.
"""

from __future__ import annotations

import os
import sys

from melbo_tui.cli.app import app
from melbo_tui.errors import MelboError


_HEAVY_MODULES = {
    "engine_cmds": ("train", "calibrate", "generate", "info", "import"),
    "ortho_cmds": ("ortho", "eval", "dump", "label", "export", "bench"),
    "method_cmds": ("dct", "jacobian"),
}


def _register(argv: list[str]) -> None:
    """Import the command modules (their @app.command decorators register the commands).

    The explorer (no command, or `open`) must draw its first frame within a second, so when
    the command line names no engine command and asks for no help, only `explore_cmds` is
    imported: the engine commands import torch and transformers (~3 s) at module level.
    """
    import importlib

    words = set(argv)
    wanted = ["explore_cmds"]
    for module, commands in _HEAVY_MODULES.items():
        if words & {"--help", "-h"} or words & set(commands):
            wanted.append(module)
    for module in wanted:
        importlib.import_module(f"melbo_tui.cli.{module}")


def main() -> None:
    """Console-script entry point."""
    try:
        _register(sys.argv[1:])
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
