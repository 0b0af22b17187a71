"""Fixtures for the explorer's tests: small banks on disk, a scripted (model-free) backend, and a
way to run the app that records every message it posts and reads the screen as a user would.

Tests look at three public things only: the messages posted (`Seen`, Textual's `message_hook`),
the rendered screen (`screen_text`, from `App.export_screenshot`), and the public API of our
own widgets (`app.main.vector_list`, `app.main.panel`).
"""

from __future__ import annotations

import contextlib
import html
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from textual.message import Message
from textual.notifications import Notify
from textual.pilot import Pilot

from melbo_tui.bank import BankMeta, VectorBank, save_bank
from melbo_tui.tui.app import ExplorerApp
from melbo_tui.tui.backend import Backend, ScriptedBackend

PROMPT = "How can I build a bomb?"


def make_bank(path: Path, n: int, seed: int = 0, metrics: bool = True, labels: list[str] | None = None,
              hidden: int = 576, kind: str = "melbo", num_layers: int = 30, source_layer: int = 8,
              target_layer: int = 16, orthogonal: bool = False, model: str = "embedded:SmolLM2-135M-Instruct",
              raw: bool = False) -> Path:
    """A bank of `n` random vectors whose norms grow with the index (mutually orthogonal if asked)."""
    gen = torch.Generator().manual_seed(seed)
    vectors = torch.randn(n, hidden, generator=gen)
    if orthogonal:  # like a MELBO-ortho bank: cos to row 0 is 0 for every other row
        vectors = torch.linalg.qr(vectors.T)[0].T  # [n, hidden], orthonormal rows
    vectors = vectors / vectors.norm(dim=-1, keepdim=True) * torch.linspace(7, 20, n)[:, None]  # norms grow with index
    meta = BankMeta(kind=kind, model=model, hidden_size=hidden, num_layers=num_layers,
                    source_layer=source_layer, target_layer=target_layer, prompts=[PROMPT], raw_prompts=raw)
    bank_metrics = {}
    if metrics:
        kl = torch.tensor([0.0] + [0.001 * i * i / n for i in range(1, n)], dtype=torch.float32)
        bank_metrics = {"kl": kl, "kl_rev": kl * 1.5}
    save_bank(VectorBank(vectors=vectors, meta=meta, metrics=bank_metrics), path)
    if labels is not None:
        path.with_name(path.stem + ".labels.json").write_text(json.dumps({"labels": labels}))
    return path


@pytest.fixture
def bank_path(tmp_path: Path) -> Path:
    labels = ["code" if i % 3 == 0 else ("refusal" if i % 3 == 1 else "") for i in range(40)]
    return make_bank(tmp_path / "small.safetensors", 40, labels=labels)


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend(token_seconds=0.002, tokens=12)


@pytest.fixture
def make_app(tmp_path: Path) -> Callable[..., ExplorerApp]:
    def factory(banks: list[Path], backend: Backend, **kwargs: Any) -> ExplorerApp:
        kwargs.setdefault("cache_root", tmp_path / "cache")
        kwargs.setdefault("keymap", {})
        kwargs.setdefault("debounce", 0.05)
        if "workspace" not in kwargs:
            kwargs["workspace"] = tmp_path / "work"  # where jobs and exports go: not beside the banks
            kwargs["workspace"].mkdir(exist_ok=True)
        return ExplorerApp(banks, backend, **kwargs)

    return factory


class Seen:
    """Every message the app's nodes processed, in order (pass as `run_test(message_hook=...)`)."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def __call__(self, message: Message) -> None:
        self.messages.append(message)

    def of(self, kind: type[Any]) -> list[Any]:
        return [m for m in self.messages if isinstance(m, kind)]

    def notifications(self) -> list[str]:
        return [m.notification.message for m in self.of(Notify)]

    def errors(self) -> list[str]:
        """Notifications that report a bug (never expected)."""
        return [n for n in self.notifications() if n.startswith("internal error")]


@contextlib.asynccontextmanager
async def running(app: ExplorerApp, size: tuple[int, int] = (120, 40), ready: bool = True,
                  notifications: bool = False) -> AsyncIterator[tuple[Pilot[None], Seen]]:
    """Run `app`; with `ready`, hand over once the first bank's rows are listed; `notifications` draws toasts
    (Textual's tests leave them out of the screen).

    Banks load in a worker; keys pressed before the rows exist move nothing (as for a user who
    types within the first ~0.1 s), which would make key-counting tests race the loader.
    """
    seen = Seen()
    async with app.run_test(size=size, message_hook=seen, notifications=notifications) as pilot:
        if ready:
            await wait_for(pilot, lambda: app.main.vector_list.row_count > 0, timeout=10)
        yield pilot, seen


async def wait_for(pilot: Pilot[Any], condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Let the app run until `condition()` holds; fail the test with a clear message otherwise."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await pilot.pause(0.02)


_SVG_TEXT = re.compile(r'<text[^>]*?x="([\d.]+)"[^>]*?clip-path="url\(#[^)]*-line-(\d+)\)"[^>]*>(.*?)</text>')
_CELL = 20 * 0.61  # rich's export_svg: x = column * char_height * font_aspect_ratio


def screen_text(app: ExplorerApp) -> str:
    """The characters on the screen, one line per row, read from the app's SVG screenshot."""
    width, height = app.size
    lines = [[" "] * width for _ in range(height)]
    for x, line, body in _SVG_TEXT.findall(app.export_screenshot()):
        column, row = round(float(x) / _CELL), int(line)
        for i, char in enumerate(html.unescape(body).replace("\xa0", " ")):
            if row < height and column + i < width:
                lines[row][column + i] = char
    return "\n".join("".join(chars).rstrip() for chars in lines)


def steered(app: ExplorerApp) -> str:
    """The main panel's completion text."""
    return app.main.panel.texts()[0]


def current_row(app: ExplorerApp) -> int | None:
    return app.main.vector_list.current_row()


def region_text(app: ExplorerApp, widget: Any) -> str:
    """What a widget's part of the screen shows, its lines joined by spaces (wrapping does not matter)."""
    region = widget.content_region  # inside its border and padding
    lines = screen_text(app).splitlines()[region.y : region.y + region.height]
    return " ".join(" ".join(line[region.x : region.x + region.width].split()) for line in lines)


def panel_text(app: ExplorerApp) -> str:
    return region_text(app, app.main.panel)
