"""The typer application object and the options every command shares."""

from __future__ import annotations

import shlex
import sys
from typing import Annotated

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

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model: 'embedded' (default, SmolLM2-135M-Instruct), a hub id, a local HF directory or a .gguf file."),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto (bf16 on cuda, fp32 elsewhere), float32, bfloat16, float16.")]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow a hub model's own Python code to run.")]
SystemOpt = Annotated[str | None, typer.Option("--system", help="System prompt for the chat template (default: the model's own).")]
RawOpt = Annotated[bool, typer.Option("--raw", help="Feed prompts as raw text, no chat template (base models).")]


def command_line() -> str:
    """The exact command line, recorded in every bank this run writes."""
    return shlex.join(["melbo-tui", *sys.argv[1:]])
