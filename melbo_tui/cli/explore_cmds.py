"""`melbo-tui` (no arguments) and `melbo-tui open BANK...`: start the explorer TUI.

Only file existence is checked here; the bank is read and the model loaded inside the app,
in background workers, so the first frame appears before torch has even been imported.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from melbo_tui.cli.app import app, print_version
from melbo_tui.cli.options import (
    MAX_NEW_TOKENS,
    TEMPERATURE,
    DeterministicOpt,
    DeviceOpt,
    DtypeOpt,
    MaxTokensOpt,
    ModelOpt,
    OffloadOpt,
    PromptOpt,
    RawOpt,
    RevisionOpt,
    SeedOpt,
    SystemOpt,
    TemperatureOpt,
    ThreadsOpt,
    TrustOpt,
)
from melbo_tui.errors import BankError, InputError

if TYPE_CHECKING:
    from melbo_tui.models import ModelRequest

BanksArg = Annotated[list[Path], typer.Argument(help="One or more bank files (.safetensors); n switches between them.")]
WorkspaceOpt = Annotated[Path | None, typer.Option("--workspace", help="Where the explorer writes job banks (o, T) and exports (x). Default: the working directory; never beside a bank it did not make.")]


def shipped_vectors_dir() -> Path:
    """The shipped banks: `vectors/` of a clone, or the package data of an installed melbo-tui."""
    from importlib.resources import files

    return Path(str(files("melbo_tui.vectors")))


def default_banks() -> list[Path]:
    """Every shipped bank in the repository's `vectors/` directory, MELBO-ortho banks first.

    The app opens on the first (the seed's experiment, `ortho-*.safetensors`); `n` goes to the
    next. MELBO-ortho banks come first, the embedded model's before another model's (named
    `MODEL-ortho-*`, `MODEL-melbo-*`), each group by name without the extension (so `ortho-x`
    comes before its variants `ortho-x-l2-...`); no file is read before the first frame.
    """
    directory = shipped_vectors_dir()
    banks = sorted(directory.glob("*.safetensors")) if directory.is_dir() else []
    if not banks:
        raise BankError(f"no shipped bank in {directory}: open one with 'melbo-tui open BANK.safetensors'")
    return sorted(banks, key=_shipped_order)


def _shipped_order(path: Path) -> tuple[bool, str, str]:
    words = path.stem.split("-")
    kind = next((i for i, word in enumerate(words) if word in ("ortho", "melbo")), 0)
    return (words[kind] != "ortho", "-".join(words[:kind]), path.stem)


def run_explorer(
    banks: list[Path],
    request: ModelRequest | None = None,
    prompt: str | None = None,
    system: str | None = None,
    raw: bool | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    temperature: float = TEMPERATURE,
    seed: int = 0,
    workspace: Path | None = None,
) -> None:
    workspace = Path.cwd() if workspace is None else workspace
    if not workspace.is_dir():
        raise InputError(f"--workspace {workspace} is not a directory")
    if not os.access(workspace, os.W_OK):
        raise InputError(f"--workspace {workspace} is not writable: give a directory the explorer may write in")
    for path in banks:
        if not path.exists():
            raise BankError(f"bank file not found: {path}")
        if path.is_dir():
            raise BankError(f"bank path is a directory, expected a .safetensors file: {path}")
    if prompt is not None and not prompt.strip():
        raise InputError("empty prompt: give some text with --prompt")
    if request is not None and request.threads is not None and request.threads <= 0:
        raise InputError(f"--threads must be positive, got {request.threads}")
    from melbo_tui.decoding import GenerationSettings  # no torch: the first frame stays fast

    generation = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    generation.check()
    from melbo_tui.tui.app import ExplorerApp
    from melbo_tui.tui.backend import EngineBackend

    app = ExplorerApp(banks, EngineBackend(request), prompt=prompt, system=system, raw=raw, generation=generation,
                      workspace=workspace.resolve())
    loop = asyncio.new_event_loop()  # asyncio.run() would wait for every worker thread at exit
    app.run(loop=loop)
    _leave_without_waiting_for_workers(app.return_code or 0)


def _leave_without_waiting_for_workers(code: int, grace: float = 1.0) -> None:
    """Quit now even if a worker thread is inside a model call that cannot be interrupted.

    A model load or a forward pass can take seconds and Python would wait for it at exit. Every
    file the app writes is written atomically (banks) or line by line (the completion cache,
    whose torn last line is skipped on load), so after a short grace period we leave at once.
    """
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
            return
        time.sleep(0.05)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@app.callback(invoke_without_command=True)
def start(
    ctx: typer.Context,
    model: ModelOpt = None, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", trust_remote_code: TrustOpt = False,
    revision: RevisionOpt = None, threads: ThreadsOpt = None, offload_folder: OffloadOpt = None,
    deterministic: DeterministicOpt = False, workspace: WorkspaceOpt = None,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=print_version, help="Print the version and exit.")] = False,
) -> None:
    """With no command: open the shipped banks (MELBO-ortho first) in the explorer with the embedded model."""
    if ctx.invoked_subcommand is None:
        from melbo_tui.models import ModelRequest

        run_explorer(default_banks(), ModelRequest(model, device, dtype, trust_remote_code, revision, threads, offload_folder, deterministic),
                     workspace=workspace)


@app.command("open")
def open_cmd(
    banks: BanksArg,
    prompt: PromptOpt = None, system: SystemOpt = None, raw: RawOpt = None,
    max_new_tokens: MaxTokensOpt = MAX_NEW_TOKENS, temperature: TemperatureOpt = TEMPERATURE, seed: SeedOpt = 0,
    model: ModelOpt = None, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", trust_remote_code: TrustOpt = False,
    revision: RevisionOpt = None, threads: ThreadsOpt = None, offload_folder: OffloadOpt = None,
    deterministic: DeterministicOpt = False, workspace: WorkspaceOpt = None,
) -> None:
    """Browse banks and stream steered completions (keys: ? in the app)."""
    from melbo_tui.models import ModelRequest

    request = ModelRequest(model, device, dtype, trust_remote_code, revision, threads, offload_folder, deterministic)
    run_explorer(list(banks), request, prompt, system, raw, max_new_tokens, temperature, seed, workspace)
