"""The completion panel: a header naming what steers and how, then one column per completion.

The panel owns its generations. `show(request)` puts what the cache has in each column at once
and streams the rest in one thread worker, after a short debounce (so a key held down does
not start a generation per row). Every generation has an id and a stop event: a newer `show`
sets the event (the model thread stops at the next token) and drops any late piece that still
carries the old id. The main screen shows one column (the highlighted vector or composition);
the comparison screen shows several, side by side or, when narrow, one tab each.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.timer import Timer
from textual.widgets import Static, Tab, Tabs
from textual.worker import Worker, WorkerState, get_current_worker

from melbo_tui.compose import Composition
from melbo_tui.decoding import GenerationResult
from melbo_tui.tui.bankview import BankView, title
from melbo_tui.tui.components.completion_text import CompletionText
from melbo_tui.tui.failures import error_line
from melbo_tui.tui.session import Session
from melbo_tui.tui.settings import ExploreSettings


@dataclass(frozen=True)
class Slot:
    """One column: its title (shown whole, wrapping) and what steers it."""

    title: str
    target: Composition


@dataclass(frozen=True)
class CompletionRequest:
    """Completions of `slots` for one bank and one set of settings; slot 0 is the one the header describes."""

    view: BankView
    settings: ExploreSettings
    slots: tuple[Slot, ...]


def settings_line(request: CompletionRequest) -> Text:
    """The prompt and decoding, as one wrapping paragraph."""
    s, view = request.settings, request.view
    text = Text(f"prompt: {s.prompt!r}")
    if s.system is not None:
        text.append(f"  system: {s.system!r}")
    if s.raw:
        text.append("  (raw)")
    g = s.generation
    text.append(f"\nT={g.temperature:g}  seed={g.seed}  max={g.max_new_tokens} tok  layer {view.bank.meta.source_layer}"
                f"  scale x{s.scale:g}")
    return text


def describe_target(request: CompletionRequest, measured: dict[str, float]) -> Text:
    """What steers slot 0: label, norm, KL (saying when it was measured on another prompt), row label."""
    view, s, target = request.view, request.settings, request.slots[0].target
    text = Text(target.label, style="bold")
    if target.is_composition:
        text.append(f" (k={len(target.rows)})")
    column = view.kl_column
    if len(target.rows) == 1 and target.scale == 1.0:
        row = target.rows[0]
        text.append(f"  norm {view.value('norm', row):.2f}")
        kl = view.value(column, row)
        if not math.isnan(kl):
            text.append(f"  {title(column)} {kl:.4f}")
            measured_on = view.prompt_of(column)
            if measured_on is not None and measured_on != s.prompt:
                text.append(f" (measured on {measured_on!r}; M re-measures)", style="yellow")
        if view.labels[row]:
            text.append(f"  [{view.labels[row]}]", style="italic")
    elif target.rows:
        if "norm" in measured:
            text.append(f"  norm {measured['norm']:.2f}")
        for name in (column, "kl", "kl_unsteered"):
            if name in measured:
                text.append(f"  {title(name)} {measured[name]:.4f} (this prompt)")
                break
    return text


class CompletionColumn(Vertical):
    """A column: its title, then its text."""

    def __init__(self, index: int) -> None:
        super().__init__(id=f"col-{index}", classes="completion-column")
        self.index = index
        self._title = ""

    def compose(self) -> ComposeResult:
        yield Static("", classes="column-title", markup=False)
        yield CompletionText(id=f"text-{self.index}")

    def set_title(self, text: str) -> None:
        if text != self._title:  # an update lays the screen out again: only when it changes
            self._title = text
            self.query_one(".column-title", Static).update(text)


class CompletionPanel(Vertical):
    DEFAULT_CSS = (Path(__file__).with_suffix(".tcss")).read_text(encoding="utf-8")

    streaming: reactive[bool] = reactive(False)  # a generation is running (the status bar shows it)
    tabbed: reactive[bool] = reactive(False)  # one column at a time, chosen by tabs (narrow screens)

    @dataclass
    class _Piece(Message):
        gen: int
        slot: int
        text: str

    @dataclass
    class _Finished(Message):
        gen: int
        slot: int
        result: GenerationResult

    @dataclass
    class _Measured(Message):
        gen: int
        values: dict[str, float]

    def __init__(self, session: Session, columns: int = 1, debounce: float = 0.25, describe: bool = True,
                 tabs: tuple[str, ...] = (), id: str | None = None) -> None:
        super().__init__(id=id)
        self._session = session
        self._columns = columns
        self._tabs = tabs or tuple(str(i + 1) for i in range(columns))  # tab labels (several columns only)
        self.debounce = debounce
        self._describe = describe  # the header names slot 0 (main screen); the comparison titles its columns
        self._gen = 0
        self._request: CompletionRequest | None = None
        self._shown: tuple[object, ...] | None = None
        self._stop: threading.Event | None = None
        self._timer: Timer | None = None
        self._worker: Worker[None] | None = None
        self._pending: set[int] = set()
        self._measured: dict[str, float] = {}
        self._started = 0.0
        self._tokens = 0
        self._header = Text()

    def compose(self) -> ComposeResult:
        yield Static("", id="completion-header", markup=False)
        if self._columns > 1:
            yield Tabs(*[Tab(label, id=f"tab-{i}") for i, label in enumerate(self._tabs)], id="completion-tabs")
        with Horizontal(id="completion-columns"):
            for i in range(self._columns):
                yield CompletionColumn(i)

    def on_mount(self) -> None:
        self.watch_tabbed(self.tabbed)

    # ----- what is shown ------------------------------------------------------------------

    def text(self, slot: int) -> CompletionText:
        return self.query_one(f"#text-{slot}", CompletionText)

    def texts(self) -> list[str]:
        """What each column shows now."""
        return [self.text(i).text for i in range(self._columns)]

    @property
    def request(self) -> CompletionRequest | None:
        return self._request

    def set_message(self, header: str, note: str = "") -> None:
        """No completion to show (no bank, nothing matches): say why."""
        self.stop()
        self._request, self._shown = None, None
        self.query_one("#completion-header", Static).update(header)
        for i in range(self._columns):
            self.text(i).reset("", note)

    def refresh_header(self, tps: float | None = None, note: str = "") -> None:
        request = self._request
        if request is None:
            return
        text = describe_target(request, self._measured) if self._describe else Text()
        if self._describe:
            text.append("\n")
        text.append_text(settings_line(request))
        if tps is not None:
            text.append(f"  {tps:.1f} tok/s")
        if note:
            text.append(f"  {note}", style="dim")
        if text != self._header:  # an update lays the screen out again: only when it changes
            self._header = text
            self.query_one("#completion-header", Static).update(text)

    def watch_tabbed(self, tabbed: bool) -> None:
        if not self.is_mounted or self._columns == 1:
            return
        tabs = self.query_one(Tabs)
        tabs.display = tabbed
        active = tabs.active_tab.id if tabs.active_tab is not None else "tab-0"
        for column in self.query(CompletionColumn):
            column.display = not tabbed or f"tab-{column.index}" == active

    @on(Tabs.TabActivated, "#completion-tabs")
    def _tab_activated(self, event: Tabs.TabActivated) -> None:
        event.stop()
        self.watch_tabbed(self.tabbed)
        if self.tabbed:
            self.text(self.active_column()).focus()

    def show_column(self, delta: int) -> None:
        """Next/previous tab when tabbed; else move the focus to the next/previous column."""
        if self.tabbed:
            tabs = self.query_one(Tabs)
            tabs.action_next_tab() if delta > 0 else tabs.action_previous_tab()
            return
        focused = next((i for i in range(self._columns) if self.text(i).has_focus), -1)
        self.text((focused + delta) % self._columns).focus()

    def active_column(self) -> int:
        if not self.tabbed or self._columns == 1:
            return 0
        tabs = self.query_one(Tabs)
        return int(str(tabs.active_tab.id).split("-")[1]) if tabs.active_tab is not None else 0

    # ----- generating ---------------------------------------------------------------------

    def show(self, request: CompletionRequest | None, *, immediate: bool = False, force: bool = False) -> None:
        """Show `request`: cached columns at once, the rest streamed (after the debounce unless `immediate`)."""
        if request is None:
            return
        session, view = self._session, request.view
        # the cache stands for the bank: it stays the same object while a job's bank grows, so a
        # checkpoint does not restart the completion of a row that was already there
        key = (session.cache_for(view), request.settings, tuple(s.target for s in request.slots),
               session.blocked(view))
        if key == self._shown and not force:
            self._request = request
            self.refresh_header()
            return
        self.stop()
        self._shown, self._request = key, request
        self._gen += 1
        self._measured = {}
        missing: list[int] = []
        for i, slot in enumerate(request.slots[: self._columns]):
            self.query_one(f"#col-{i}", CompletionColumn).set_title(slot.title)
            entry = None if force else session.cached(view, slot.target, request.settings)
            if entry is not None:
                self.text(i).reset(entry.text, f"[cached · {entry.num_tokens} tok · {entry.tokens_per_second:.1f} tok/s]")
            else:
                missing.append(i)
                self.text(i).reset("", session.blocked(view) or "…")
        self.refresh_header(note="(from cache)" if not missing else "")
        if not missing or session.blocked(view) is not None:
            return
        start = functools.partial(self._start, self._gen, request, tuple(missing))
        if immediate or self.debounce <= 0:
            start()
        else:
            self._timer = self.set_timer(self.debounce, start)

    def forget(self) -> None:
        """The next `show` streams again even if it asks for what is shown (after a stop)."""
        self._shown = None

    def stop(self, quiet: bool = True) -> bool:
        """Stop the debounce timer and the running generation; True if something was streaming."""
        running = bool(self._pending)
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        if self._stop is not None:
            self._stop.set()
        self.workers.cancel_group(self, "generate")
        if not quiet:
            for slot in self._pending:
                self.text(slot).set_note("[stopped]")
        self._pending = set()
        self.streaming = False
        return running

    def _start(self, gen: int, request: CompletionRequest, slots: tuple[int, ...]) -> None:
        if gen != self._gen:
            return
        self._stop = stop = threading.Event()
        self._pending = set(slots)
        self._started, self._tokens = time.perf_counter(), 0
        self.streaming = True
        self._worker = self.run_worker(
            functools.partial(self._generate, gen, request, slots, stop), name="completion", group="generate",
            description=f"completion of {request.slots[slots[0]].target.label}", thread=True, exclusive=True,
            exit_on_error=False,
        )

    def _generate(self, gen: int, request: CompletionRequest, slots: tuple[int, ...], stop: threading.Event) -> None:
        """Worker thread: measure a composed or scaled target, then stream each missing slot in turn."""
        worker = get_current_worker()

        def should_stop() -> bool:
            return stop.is_set() or worker.is_cancelled

        view, settings = request.view, request.settings
        target = request.slots[0].target
        if self._describe and 0 in slots and target.rows and (target.is_composition or target.scale != 1.0):
            self.post_message(self._Measured(gen, self._session.backend.target_metrics(view.bank, target, settings)))
        for slot in slots:
            if should_stop():
                return

            def post(piece: str, slot: int = slot) -> None:
                self.post_message(self._Piece(gen, slot, piece))

            result = self._session.stream(view, request.slots[slot].target, settings, post, should_stop)
            self.post_message(self._Finished(gen, slot, result))

    @on(_Piece)
    def _piece(self, message: _Piece) -> None:
        if message.gen != self._gen:
            return
        self.text(message.slot).append(message.text)
        self._tokens += 1
        if message.slot == 0 and self._tokens % 4 == 0:
            elapsed = time.perf_counter() - self._started
            self.refresh_header(self._tokens / elapsed if elapsed > 0 else None, "streaming…")

    @on(_Finished)
    def _finished(self, message: _Finished) -> None:
        if message.gen != self._gen:
            return
        self._pending.discard(message.slot)
        result = message.result
        self.text(message.slot).set_note(
            f"[stopped after {result.num_tokens} tok]" if result.stopped
            else f"[{result.num_tokens} tok · {result.tokens_per_second:.1f} tok/s]"
        )
        if message.slot == 0:
            self.refresh_header(result.tokens_per_second)
        if not self._pending:
            self.streaming = False

    @on(_Measured)
    def _measured_values(self, message: _Measured) -> None:
        if message.gen == self._gen:
            self._measured = dict(message.values)
            self.refresh_header(note="streaming…" if self._pending else "")

    @on(Worker.StateChanged)
    def _worker_state(self, event: Worker.StateChanged) -> None:
        """The one place a failed generation is reported: in its columns and as a notification."""
        if event.worker is not self._worker or event.state != WorkerState.ERROR:
            return
        line = error_line(event.worker.error)
        for slot in self._pending:
            self.text(slot).set_note(f"⚠ {line}")
        self._pending = set()
        self.streaming = False
        self.notify(line, severity="error", timeout=6)
