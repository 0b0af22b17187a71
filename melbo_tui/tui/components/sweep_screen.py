"""`w`: the seed's composition experiment: the first k non-base vectors composed, for growing k.

Rows stream one after another (k = 1, 2, 3, 5, 10, 20, ...), each from the cache when it was
generated before. Leaving the screen stops the sweep.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from melbo_tui.errors import MelboError
from melbo_tui.tui.backend import StreamResult
from melbo_tui.tui.settings import Target

KS = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 800, 1000, 1500, 2000)
Generate = Callable[[Target, Callable[[str], None], Callable[[], bool]], StreamResult]


def sweep_targets(n: int, base_index: int, mode: str, scale: float) -> list[Target]:
    rows = [r for r in range(n) if r != base_index]
    return [Target(tuple(rows[:k]), mode, scale) for k in KS if k <= len(rows)]


class SweepScreen(Screen[None]):
    DEFAULT_CSS = (Path(__file__).with_suffix(".tcss")).read_text(encoding="utf-8")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,w", "close", "Back (stops the sweep)", show=True),
        Binding("j,down", "scroll_rows('down')", "Scroll down", show=False),
        Binding("k,up", "scroll_rows('up')", "Scroll up", show=False),
        Binding("pagedown", "scroll_rows('page_down')", "Page down", show=False),
        Binding("pageup", "scroll_rows('page_up')", "Page up", show=False),
        Binding("g,home", "scroll_rows('home')", "Top", show=False),
        Binding("G,end", "scroll_rows('end')", "Bottom", show=False),
    ]

    def __init__(self, targets: list[Target], caption: str, generate: Generate) -> None:
        super().__init__()
        self.targets = targets
        self.caption = caption
        self._generate_fn = generate
        self._stop = threading.Event()
        self.texts: dict[int, str] = {}

    def compose(self) -> ComposeResult:
        yield Static(self.caption, id="sweep-caption", markup=False)
        with VerticalScroll(id="sweep-rows"):
            for t in self.targets:
                k = len(t.rows)
                yield Static(f"k={k:<5}…", id=f"sweep-k{k}", classes="sweep-row", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.run_sweep()

    @work(thread=True, exclusive=True, group="sweep")
    def run_sweep(self) -> None:
        for target in self.targets:
            if self._stop.is_set():
                return
            k = len(target.rows)
            self.texts[k] = ""

            def on_text(piece: str, k: int = k) -> None:
                self.texts[k] += piece
                self.app.call_from_thread(self._show, k, self.texts[k] + " ▌")

            try:
                result = self._generate_fn(target, on_text, self._stop.is_set)
            except MelboError as exc:
                self.app.call_from_thread(self._show, k, f"⚠ {exc}")
                continue
            self.app.call_from_thread(self._show, k, result.text if not result.stopped else result.text + " [stopped]")

    def _show(self, k: int, text: str) -> None:
        flat = " ".join(text.split())
        self.query_one(f"#sweep-k{k}", Static).update(f"k={k:<5}{flat}")

    def action_scroll_rows(self, where: str) -> None:
        rows = self.query_one("#sweep-rows", VerticalScroll)
        getattr(rows, f"scroll_{where}")(animate=False)

    def action_close(self) -> None:
        self._stop.set()
        self.dismiss(None)

    def on_unmount(self) -> None:
        self._stop.set()
