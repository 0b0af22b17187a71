"""`w`: the seed's composition experiment: the first k non-base vectors composed, for growing k.

Rows stream one after another (k = 1, 2, 3, 5, 10, 20, ...), each from the cache when it was
generated before. The sweep runs in a worker of this screen and reaches its rows only through
messages to the screen, so leaving the screen stops it (the worker is cancelled with the
screen) and a late piece has nowhere to land.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Static
from textual.worker import Worker, WorkerState, get_current_worker

from melbo_tui.compose import ComposeMode, Composition
from melbo_tui.errors import MelboError
from melbo_tui.tui.bankview import BankView
from melbo_tui.tui.components.footer import ExplorerFooter
from melbo_tui.tui.failures import error_line
from melbo_tui.tui.keymap import SWEEP_KEYS, bindings
from melbo_tui.tui.session import Session
from melbo_tui.tui.settings import ExploreSettings

KS = (1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 800, 1000, 1500, 2000)


def sweep_targets(n: int, base_index: int, mode: ComposeMode, scale: float) -> list[Composition]:
    rows = [r for r in range(n) if r != base_index]
    return [Composition(tuple(rows[:k]), mode, scale) for k in KS if k <= len(rows)]


class SweepScreen(Screen[None]):
    DEFAULT_CSS = (Path(__file__).with_suffix(".tcss")).read_text(encoding="utf-8")
    BINDINGS = bindings(SWEEP_KEYS)

    @dataclass
    class _Text(Message):
        k: int
        text: str

    def __init__(self, session: Session, view: BankView, settings: ExploreSettings, targets: list[Composition],
                 caption: str) -> None:
        super().__init__()
        self._session, self._view, self._settings = session, view, settings
        self.targets = targets
        self.caption = caption
        self._stop = threading.Event()
        self.texts: dict[int, str] = {}  # k -> what its row shows

    def compose(self) -> ComposeResult:
        yield Static(self.caption, id="sweep-caption", markup=False)
        with VerticalScroll(id="sweep-rows"):
            for t in self.targets:
                k = len(t.rows)
                yield Static(f"k={k:<5}…", id=f"sweep-k{k}", classes="sweep-row", markup=False)
        yield ExplorerFooter()

    def on_mount(self) -> None:
        self.run_worker(self._sweep, name="sweep", group="sweep", description="composition sweep", thread=True,
                        exclusive=True, exit_on_error=False)

    def _sweep(self) -> None:
        worker = get_current_worker()

        def should_stop() -> bool:
            return self._stop.is_set() or worker.is_cancelled

        for target in self.targets:
            if should_stop():
                return
            k = len(target.rows)
            cached = self._session.cached(self._view, target, self._settings)
            if cached is not None:
                self.post_message(self._Text(k, cached.text))
                continue
            pieces: list[str] = []

            def on_text(piece: str, k: int = k, pieces: list[str] = pieces) -> None:
                pieces.append(piece)
                self.post_message(self._Text(k, "".join(pieces) + " ▌"))

            try:
                result = self._session.stream(self._view, target, self._settings, on_text, should_stop)
            except MelboError as exc:  # the model is loading, the bank does not fit: this row says so
                self.post_message(self._Text(k, f"⚠ {error_line(exc)}"))
                continue
            self.post_message(self._Text(k, result.text + (" [stopped]" if result.stopped else "")))

    @on(_Text)
    def _show(self, message: _Text) -> None:
        self.texts[message.k] = message.text
        flat = " ".join(message.text.split())
        for row in self.query(f"#sweep-k{message.k}").results(Static):
            row.update(f"k={message.k:<5}{flat}")

    @on(Worker.StateChanged)
    def _worker_state(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            line = error_line(event.worker.error)
            self.query_one("#sweep-caption", Static).update(f"{self.caption}\n⚠ the sweep stopped: {line}")
            self.notify(line, severity="error", timeout=6)

    def action_scroll_rows(self, where: str) -> None:
        rows = self.query_one("#sweep-rows", VerticalScroll)
        getattr(rows, f"scroll_{where}")(animate=False)

    def action_close(self) -> None:
        self._stop.set()
        if self.is_active:
            self.dismiss(None)

    def on_unmount(self) -> None:
        self._stop.set()
