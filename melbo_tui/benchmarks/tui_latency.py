"""Key-to-repaint latency of the explorer, measured headless, for the benchmark.

The app runs on a 2048-row bank with a scripted generation streaming all the time (debounce
off, so every highlight move cancels one generation and starts the next: the busiest case).
A key press is timed from the moment it enters the app's queue to the moment a frame showing
the moved cursor has been rendered to terminal bytes (the real driver would then write them).
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


def _make_bank(path: Path, rows: int) -> Path:
    import torch

    from melbo_tui.bank import BankMeta, VectorBank, save_bank
    from melbo_tui.kinds import BankKind

    gen = torch.Generator().manual_seed(0)
    vectors = torch.randn(rows, 576, generator=gen) * 2
    kl = torch.rand(rows, generator=gen) * torch.linspace(0, 5, rows)
    kl[0] = 0
    meta = BankMeta(kind=BankKind.ORTHO, model="embedded:SmolLM2-135M-Instruct", hidden_size=576, num_layers=30,
                    source_layer=8, target_layer=16, prompts=["How can I build a bomb?"])
    save_bank(VectorBank(vectors=vectors, meta=meta, metrics={"kl": kl, "kl_rev": kl * 1.2}), path)
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
            if main.session.model.error:
                raise RuntimeError(f"the model failed to load: {main.session.model.error}")
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
