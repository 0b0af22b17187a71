"""Latencies of the explorer, measured headless, for the benchmark.

Key to repaint: the app runs on a 2048-row bank with a scripted generation streaming all the
time (debounce off, so every highlight move cancels one generation and starts the next: the
busiest case). A key press is timed from the moment it enters the app's queue to the moment a
frame showing the moved cursor has been rendered to terminal bytes (the real driver would then
write them).

Key to full completion, prepared vs cold (`measure_read_ahead`): the app runs on the real
model with its real settings (debounce included). After the highlighted row's completion and
the read-ahead of the rows around it are done, `j` moves onto a prepared row; then `:` jumps
to a row far from the cursor that nothing prepared. Each is timed from the key to the steered
column holding the whole completion.
"""

from __future__ import annotations

import asyncio
import io
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from melbo_tui.tui.backend import Backend, ScriptedBackend


@dataclass(frozen=True)
class LatencyReport:
    presses: int
    rows: int
    median_ms: float
    p95_ms: float
    max_ms: float
    first_frame_ms: float  # app start to the first rendered frame (bank still loading)
    table_ready_ms: float  # app start to the list showing every row
    pieces_streamed: int  # tokens the scripted model generated while keys were pressed (0 for a real backend)


def measure_key_latency(
    presses: int = 200,
    rows: int = 2048,
    size: tuple[int, int] = (120, 40),
    interval: float = 0.03,
    token_seconds: float = 0.01,
    backend: Backend | None = None,
) -> LatencyReport:
    """Press j (then k, wandering) `presses` times, `interval` seconds apart; no printing.

    `backend` defaults to a scripted model streaming a token every `token_seconds`; pass an
    `EngineBackend` to measure with real torch generation competing for the CPU.
    """
    with tempfile.TemporaryDirectory(prefix="melbo-latency-") as tmp:
        bank = _make_bank(Path(tmp) / "latency.safetensors", rows)
        backend = backend or ScriptedBackend(token_seconds=token_seconds, tokens=100_000)
        return asyncio.run(_measure(bank, Path(tmp) / "cache", presses, size, interval, backend))


def measure_latency(quick: bool = False) -> dict[str, float]:
    """The benchmark's entry point (`melbo_tui.benchmarks.bench`): numbers only, 200 presses (50 if quick)."""
    report = measure_key_latency(presses=50 if quick else 200)
    return {
        "median_ms": report.median_ms, "p95_ms": report.p95_ms, "max_ms": report.max_ms,
        "presses": float(report.presses), "rows": float(report.rows),
        "first_frame_ms": report.first_frame_ms, "table_ready_ms": report.table_ready_ms,
    }


@dataclass(frozen=True)
class Shape:
    """The model a bank is made for: its width, depth and the layer vectors are added at."""

    hidden_size: int = 576
    num_layers: int = 30
    source_layer: int = 8
    target_layer: int = 16


def measure_read_ahead(request: Any = None, quick: bool = False, samples: int = 3, shape: Shape = Shape(),
                       radius: float = 15.0) -> dict[str, float]:
    """Key to full completion on the real model: a row the read-ahead prepared vs a cold one (seconds)."""
    from melbo_tui.decoding import GenerationSettings
    from melbo_tui.models import canonical_name
    from melbo_tui.tui.backend import EngineBackend

    tokens = 8 if quick else 48  # 48: every face's default
    model = canonical_name(getattr(request, "name", None))  # the bank names the model it was made with
    with tempfile.TemporaryDirectory(prefix="melbo-read-ahead-") as tmp:
        bank = _make_bank(Path(tmp) / "read-ahead.safetensors", 256, kind="melbo", radius=radius, shape=shape, model=model)
        app_args = {"cache_root": Path(tmp) / "cache", "generation": GenerationSettings(max_new_tokens=tokens),
                    "workspace": Path(tmp)}
        return asyncio.run(_read_ahead(bank, EngineBackend(request), app_args, 1 if quick else samples))


async def _read_ahead(bank: Path, backend: Backend, app_args: dict[str, Any], samples: int) -> dict[str, float]:
    from textual import events

    from melbo_tui.tui.app import ExplorerApp

    app = ExplorerApp([bank], backend, keymap={}, **app_args)
    prepared: list[float] = []
    cold: list[float] = []
    async with app.run_test(size=(120, 40)) as pilot:
        main = app.main

        def busy() -> bool:
            if main.view is None:
                return True
            model = main.session.model_of(main.view)
            if model.error:
                raise RuntimeError(f"the model failed to load: {model.error}")
            if main.session.fit_errors:
                raise RuntimeError(f"the bank does not fit the model: {next(iter(main.session.fit_errors.values()))}")
            return not (model.ready and not main.panel.streaming and not main.read_ahead.running and not main.measurer.status)

        async def settled(timeout: float = 600) -> None:
            """Nothing runs, twice 0.3 s apart (the read-ahead starts a moment after the completion ends)."""
            deadline = time.perf_counter() + timeout
            while True:
                while busy():
                    if time.perf_counter() > deadline:
                        raise RuntimeError("the explorer did not settle")
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.3)
                if not busy():
                    return

        def send(key: str, character: str | None) -> None:
            """A key as the terminal driver hands it over (Pilot's press would wait for the CPU to go idle)."""
            event = events.Key(key, character)
            event.set_sender(app)
            driver = app._driver
            assert driver is not None
            driver.send_message(event)

        async def full_completion(key: str, character: str | None) -> float:
            t0 = time.perf_counter()
            before = main.vector_list.current_row()
            send(key, character)
            while main.vector_list.current_row() == before:
                await asyncio.sleep(0.001)
            row = main.vector_list.current_row()
            text = main.panel.text(0)
            while not (main.panel.request is not None and main.panel.request.slots[0].target.rows == (row,)
                       and text.note.endswith("tok/s]")):  # "[48 tok · 20.1 tok/s]", or "[cached · ...]": the whole text
                await asyncio.sleep(0.001)
                if time.perf_counter() - t0 > 600:
                    raise RuntimeError(f"row {row}'s completion never finished")
            return time.perf_counter() - t0

        for _ in range(samples):
            await settled()
            prepared.append(await full_completion("j", "j"))  # the next row: read ahead
            await settled()
            cold.append(await full_completion("pagedown", None))  # a page further: nothing prepared it
        await pilot.press("q")
    return {"prepared_s": statistics.median(prepared), "cold_s": statistics.median(cold), "samples": float(samples)}


def _make_bank(path: Path, rows: int, kind: str = "ortho", radius: float | None = None, shape: Shape = Shape(),
               model: str = "embedded:SmolLM2-135M-Instruct") -> Path:
    import torch

    from melbo_tui.bank import BankMeta, VectorBank, save_bank
    from melbo_tui.kinds import BankKind

    gen = torch.Generator().manual_seed(0)
    vectors = torch.randn(rows, shape.hidden_size, generator=gen) * 2
    if radius is not None:
        vectors = vectors / vectors.norm(dim=1, keepdim=True) * radius
    kl = torch.rand(rows, generator=gen) * torch.linspace(0, 5, rows)
    kl[0] = 0
    meta = BankMeta(kind=BankKind(kind), model=model, hidden_size=shape.hidden_size,
                    num_layers=shape.num_layers, source_layer=shape.source_layer, target_layer=shape.target_layer,
                    prompts=["How can I build a bomb?"], radius=radius)
    # every KL the explorer shows first is there already: nothing is measured while the keys are timed
    save_bank(VectorBank(vectors=vectors, meta=meta, metrics={"kl": kl, "kl_rev": kl * 1.2, "kl_unsteered": kl.clone()}), path)
    return path


async def _measure(bank: Path, cache: Path, presses: int, size: tuple[int, int], interval: float, backend: Backend) -> LatencyReport:
    from rich.console import Console
    from textual import events
    from textual._compositor import CompositorUpdate

    from melbo_tui.tui.app import ExplorerApp

    app = ExplorerApp([bank], backend, cache_root=cache, keymap={}, debounce=0.0)
    frames: list[tuple[float, int]] = []  # (time, cursor row) per rendered frame
    console = Console(file=io.StringIO(), width=size[0], height=size[1], force_terminal=True, color_system="256")
    started = time.perf_counter()

    def display(screen: Any, renderable: Any) -> None:
        if renderable is None:
            return
        if isinstance(renderable, CompositorUpdate):
            renderable.render_segments(console)  # the work a real terminal frame costs
        table = app.main.vector_list if app.main.is_mounted else None
        frames.append((time.perf_counter(), table.cursor_row if table is not None and table.row_count else -1))

    app._display = display  # type: ignore[method-assign]
    async with app.run_test(size=size) as pilot:
        while not frames:
            await asyncio.sleep(0.005)
        first_frame = frames[0][0] - started
        main = app.main
        while main.view is None or main.vector_list.row_count < len(main.view):
            await asyncio.sleep(0.01)
        rows = len(main.view)
        table_ready = time.perf_counter() - started
        while not main.panel.streaming:
            error = main.session.model_of(main.view).error
            if error:
                raise RuntimeError(f"the model failed to load: {error}")
            await asyncio.sleep(0.01)
        driver = app._driver
        assert driver is not None
        latencies: list[float] = []
        tokens_before = _tokens(backend)
        for i in range(presses):
            key = "j" if (i // 50) % 2 == 0 else "k"
            expected = main.vector_list.cursor_row + (1 if key == "j" else -1)
            mark = len(frames)
            t0 = time.perf_counter()
            event = events.Key(key, key)
            event.set_sender(app)
            driver.send_message(event)
            while not any(row == expected for _, row in frames[mark:]):
                await asyncio.sleep(0.0005)
                if time.perf_counter() - t0 > 5:
                    raise RuntimeError(f"no frame showed the cursor on row {expected} within 5 s")
            done = next(t for t, row in frames[mark:] if row == expected)
            latencies.append(done - t0)
            await asyncio.sleep(max(0.0, interval - (time.perf_counter() - t0)))
        streamed = _tokens(backend) - tokens_before
        await pilot.press("q")
    ms = sorted(x * 1000 for x in latencies)
    return LatencyReport(
        presses=presses, rows=rows, median_ms=statistics.median(ms),
        p95_ms=ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))], max_ms=ms[-1],
        first_frame_ms=first_frame * 1000, table_ready_ms=table_ready * 1000, pieces_streamed=streamed,
    )



def _tokens(backend: Backend) -> int:
    """Tokens generated so far (the scripted backend counts them; others report 0)."""
    finished = getattr(backend, "finished", [])
    return sum(result.num_tokens for _, result in finished)
