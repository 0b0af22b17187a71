"""The typer application object and the options every command shares."""

from __future__ import annotations

import shlex
import sys

import typer

app = typer.Typer(
    name="melbo-tui",
    help=(
        "Train, measure and explore banks of MELBO / MELBO-ortho steering vectors.\n\n"
        "Layer convention: layer S = the residual stream at the OUTPUT of decoder block S "
        "(0-based), i.e. TransformerLens blocks.S.hook_resid_post = HF hidden_states[S+1]. "
        "Vectors are added there at every position, prompt and generated tokens alike."
    ),
    no_args_is_help=False,
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

def short_help(app: typer.Typer) -> None:
    """Give each command its docstring's whole first line in the top-level help (click cuts it at 45 characters)."""
    for command in app.registered_commands:
        doc = command.help or (command.callback.__doc__ if command.callback else None) or ""
        if command.short_help is None and doc.strip():
            command.short_help = doc.strip().splitlines()[0]


def print_version(value: bool) -> None:
    """`--version`: the package's version, before anything else is parsed or imported."""
    if value:
        from melbo_tui import __version__

        print(f"melbo-tui {__version__}")
        raise typer.Exit()


def command_line() -> str:
    """The exact command line, recorded in every bank this run writes."""
    return shlex.join(["melbo-tui", *sys.argv[1:]])
