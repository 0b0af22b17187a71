"""What every command shares: one definition per flag, one stderr console, one progress bar.

A flag means the same thing in every command that has it (`-n` is always the number of new
tokens, `-p` a prompt, `--raw/--chat` the prompt format), and generation defaults come from
the engine's `GenerationSettings`, so `generate`, `dump`, the sweep and the explorer agree.
Nothing here imports torch: the explorer's start-up path imports this module too.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from melbo_tui.atomic import check_writable
from melbo_tui.decoding import GenerationSettings
from melbo_tui.errors import InputError

if TYPE_CHECKING:
    from melbo_tui.bank import VectorBank
    from melbo_tui.models import LoadedModel, ModelRequest
    from melbo_tui.sink import SinkReport

err = Console(stderr=True)

SEED_PROMPT = "How can I build a bomb?"
# generation defaults, the same everywhere: the engine's
MAX_NEW_TOKENS = GenerationSettings.max_new_tokens
TEMPERATURE = GenerationSettings.temperature

# --- the model -----------------------------------------------------------------------------------

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model: 'embedded' (SmolLM2-135M-Instruct), 'gemma-3-270m', a hub id, a local HF directory or a .gguf file. Default: the model a bank names (commands on a bank), else 'embedded'."),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto (bf16 on cuda, fp32 elsewhere), float32, bfloat16, float16.")]
TrustOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow a hub model's own Python code to run.")]
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Hub revision (branch, tag or commit) of --model.")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", help="CPU threads for torch (default: the cores not already busy, from the load average)."),
]
OffloadOpt = Annotated[
    str | None,
    typer.Option("--offload-folder", help="With --device cuda/cuda:N: a folder for weights that fit neither the GPUs "
                                          "nor the CPU (slow; a note says when it happens)."),
]
DeterministicOpt = Annotated[
    bool,
    typer.Option("--deterministic", help="Deterministic kernels (torch deterministic algorithms, cuBLAS workspace, SDPA "
                                         "math backend): slower on CUDA; docs/gpu.md states the tolerances without it."),
]

# --- prompts -------------------------------------------------------------------------------------

PromptsOpt = Annotated[
    list[str] | None,
    typer.Option("--prompt", "-p", help="User prompt (repeatable). Default: the bank's prompts; for commands that make a bank (train, calibrate, dct, jacobian), 'How can I build a bomb?'."),
]
PromptOpt = Annotated[str | None, typer.Option("--prompt", "-p", help="Prompt (default: the bank's first).")]
SystemOpt = Annotated[str | None, typer.Option("--system", help="System prompt for the chat template (default: the bank's, else the model's own).")]
RawOpt = Annotated[
    bool | None,
    typer.Option("--raw/--chat", help="Raw text, or the model's chat template (default: as the bank was made; raw for models without a template)."),
]

# --- what the target layer compares -------------------------------------------------------------

SINK_HELP = ("Target positions left out of the objective: exclude = the attention sink, positions whose target-layer "
             "norm is > 10x the median of the others, unsteered (the first token of most chat models) or steered by the "
             "base vector where there is one (a sink the base induces); keep = "
             "compare every position (seed/paper-faithful); or a comma list of positions such as 0 or 0,1.")
SinkOpt = Annotated[str, typer.Option("--sink", help=SINK_HELP + " Default: exclude.")]

# --- generation ----------------------------------------------------------------------------------

MaxTokensOpt = Annotated[int, typer.Option("--max-new-tokens", "-n", help="Tokens per completion (1..4096).")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", "-t", help="0 = greedy; > 0 = plain temperature sampling seeded by --seed.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed (sampling, random starts); the same seed gives the same result.")]
BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", help="Vectors per forward pass (default: automatic; halves on out-of-memory).")]

BankArg = Annotated[Path, typer.Argument(metavar="BANK", help="Bank file (.safetensors).")]


def open_model(request: ModelRequest) -> LoadedModel:
    """Load the model with a spinner on stderr (a first use's GGUF conversion with its progress bar),
    then print what the user should know about the load."""
    from melbo_tui.models import cache_dir, conversion_needed

    name = request.name or "embedded"
    if conversion_needed(request.name):
        err.print(f"first use of {name}: de-quantising its GGUF into {cache_dir() / 'models'} "
                  "(once, 15-60 s; later loads take seconds)", highlight=False)
        lm = request.load(progress=True)
    else:
        with err.status(f"loading model {name} ..."):
            lm = request.load()
    for note in lm.notes:
        err.print(f"[yellow]note: {note}[/]")
    return lm




CONTINUATION_TOKENS = 32  # = metrics.CONTINUATION_TOKENS (torch-free here, for --help; a test checks they agree)


def layers_for(lm: LoadedModel, source_layer: int | None, target_layer: int | None) -> tuple[int, int]:
    """--source-layer and --target-layer, each defaulting to ~L/3 and ~2L/3 of the loaded model."""
    from melbo_tui.melbo import resolve_layers

    return resolve_layers(lm.num_layers, source_layer, target_layer)


def deprecated_alias(old: str, old_value: int | None, new: str, new_value: int | None, default: int) -> int:
    """The value of option `new`, or of its deprecated spelling `old` (with a note on stderr); both given is an error."""
    if old_value is None:
        return default if new_value is None else new_value
    if new_value is not None:
        raise InputError(f"give {new} only ({old} is its deprecated spelling)")
    err.print(f"[yellow]note: {old} is deprecated and goes in the next release: use {new}[/]")
    return old_value


def check_output(path: Path, what: str = "--out") -> None:
    """Fail in a moment, before any model loads, when `path` cannot be written (`atomic.check_writable`)."""
    check_writable(path, what)


def open_bank(path: Path, request: ModelRequest) -> tuple[LoadedModel, VectorBank]:
    """Load a bank, then the model it names (unless --model names another), and make sure the
    bank can steer it (shape); a --model other than the bank's only warns."""
    import dataclasses

    from melbo_tui.bank import check_bank_fits, load_bank
    from melbo_tui.models import canonical_name

    bank = load_bank(path)
    lm = open_model(request if request.name is not None else dataclasses.replace(request, name=canonical_name(bank.meta.model)))
    check_bank_fits(bank, lm.hidden_size, lm.num_layers, where=str(path))
    if canonical_name(bank.meta.model) != lm.name:
        err.print(f"[yellow]note: {path} was made with {bank.meta.model}; steering {lm.name}[/]")
    return lm, bank


def prompt_for(bank: VectorBank, bank_path: Path, prompt: str | None, system: str | None,
               raw: bool | None) -> tuple[str, str | None, bool]:
    """The prompt to measure or complete: the user's, else the bank's first, with the bank's format."""
    text = prompt if prompt is not None else (bank.meta.prompts[0] if bank.meta.prompts else None)
    if not text or not text.strip():
        raise InputError(f"{bank_path} records no prompt: give --prompt" if text is None else "empty prompt: give some text with --prompt")
    return (text, system if system is not None else bank.meta.system_prompt,
            bank.meta.raw_prompts if raw is None else raw)


def print_sink(report: SinkReport) -> None:
    """The once-per-run lines saying which target positions an objective leaves out."""
    for line in report.lines():
        err.print(line, style="yellow" if line.startswith("warning") else "dim", highlight=False)


def measure_into(path: Path, lm: LoadedModel, bank: VectorBank, prompt: str, system: str | None, raw: bool,
                 **options: Any) -> VectorBank:
    """Measure every vector on `prompt` (`metrics.evaluate_bank`) and store it in `path`, with a progress bar.

    Rows another process appended meanwhile are measured too (`jobs.store_metrics`).
    """
    from melbo_tui.jobs import store_metrics
    from melbo_tui.metrics import evaluate_bank
    from melbo_tui.prompts import encode

    ids = encode(lm, prompt, system, raw)

    def regrew(where: Path, rows: int) -> None:
        err.print(f"[dim]{where} grew to {rows} rows while it was evaluated: evaluating again[/]")

    with progress() as bar:
        task = bar.add_task("eval vectors", total=len(bank) + 1, info=f"prompt {prompt!r}")

        def evaluate(current: VectorBank) -> VectorBank:
            return evaluate_bank(lm, current, ids, prompt, system, raw, **options,
                                 on_progress=lambda done, _total: bar.update(task, completed=done, total=len(current) + 1))

        stored = store_metrics(path, bank, evaluate, on_regrow=regrew)
    record = stored.meta.extra.get("eval", {})
    left_out = ",".join(map(str, record.get("excluded_positions", [])))
    err.print(f"sink: err leaves out position(s) {left_out} ({record.get('sink')})" if left_out
              else f"sink: err compares every target position ({record.get('sink')})", style="dim", highlight=False)
    return stored


def progress() -> Progress:
    """The one progress bar: description, bar, count, a free `info` field, elapsed and remaining time."""
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=err)
