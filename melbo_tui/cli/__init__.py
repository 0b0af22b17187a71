"""The `melbo-tui` command: a thin typer face over the engine.

One module per group of commands (`engine_cmds`: train, calibrate, generate, info, import;
`ortho_cmds`: ortho, eval, dump, label, export, bench; `method_cmds`: dct, jacobian; `doctor_cmds`:
doctor; `explore_cmds`: open and the default no-argument start). Errors a user can cause are
rendered once, here, as one line on stderr with exit code 2 (out of memory too, with a hint);
anything unexpected also stays one line (exit 1), never a traceback.
"""

from __future__ import annotations

import os
import sys

from melbo_tui.cli.app import app, short_help
from melbo_tui.errors import MelboError, spell

_HEAVY_MODULES = {
    "engine_cmds": ("train", "calibrate", "generate", "info", "import"),
    "ortho_cmds": ("ortho", "eval", "dump", "label", "export", "bench"),
    "method_cmds": ("dct", "jacobian"),
    "doctor_cmds": ("doctor",),
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
        short_help(app)
        app(standalone_mode=False)
    except MelboError as exc:
        _fail(as_flags(exc), 2)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except SystemExit:
        raise
    except Exception as exc:  # usage errors and real bugs alike stay one line
        if _out_of_memory(exc):
            _fail(f"out of memory ({_first(str(exc)) or type(exc).__name__}): try a smaller --batch-size, "
                  "--dtype bfloat16 or float16, or a smaller model", 2)
        # typer vendors its own click, so usage errors are recognised by shape, not by class
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            _fail(_plain(exc.format_message()), int(exc.exit_code))
        if type(exc).__name__ == "Abort":
            _fail("aborted", 1)
        if os.environ.get("MELBO_TUI_DEBUG"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (set MELBO_TUI_DEBUG=1 for a traceback)", 1)


def _out_of_memory(exc: BaseException) -> bool:
    """CUDA's torch.OutOfMemoryError, MPS's and the CPU allocator's RuntimeErrors, Python's MemoryError."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _plain(message: str) -> str:
    """A usage error without the wrapper typer's pydantic coercion puts in front of a choice's message.

    typer >= 0.29 validates enum options through pydantic, which renders a ValueError as
    "Value error, 'x' is not one of ...": the user needs the second half only.
    """
    return message.replace(": Value error, ", ": ")


def _first(message: str) -> str:
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return lines[0][:200] if lines else ""


# engine parameters whose flag is not `--` + the name with dashes
_FLAGS = {"base_index": "--base", "prompts": "--prompt", "out": "--out"}


def as_flag(parameter: str) -> str:
    return _FLAGS.get(parameter, "--" + parameter.replace("_", "-"))


def as_flags(exc: MelboError) -> str:
    """The engine's message with its parameter names spelled as command-line flags."""
    return spell(exc, as_flag)


def _fail(message: str, code: int) -> None:
    first = message.strip().splitlines()[0] if message.strip() else "error"
    print(f"melbo-tui: error: {first}", file=sys.stderr)
    sys.exit(code)
