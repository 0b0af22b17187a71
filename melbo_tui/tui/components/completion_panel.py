"""The completion panel: a line naming the prompt and decoding, then one titled column per completion.

The panel owns its generations. `show(request)` puts what the cache has in each column at once
and streams the rest in one thread worker, after a short debounce (so a key held down does
not start a generation per row). Every generation has an id and a stop event: a newer `show`
sets the event (the model thread stops at the next token) and drops any late piece that still
carries the old id. On the main screen the columns are the highlighted vector (or composition),
the unsteered model and, where the bank has a base row and there is room, the base: side by
side when each gets `MIN_WIDTH` cells, else stacked. The comparison screen shows more, side
by side or, when narrow, one tab each.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.timer import Timer
from textual.widgets import Static, Tab, Tabs
from textual.worker import Worker, WorkerState, get_current_worker

from melbo_tui.compose import Composition
from melbo_tui.decoding import GenerationResult
from melbo_tui.errors import MelboError
from melbo_tui.tui.bankview import BankView, title
from melbo_tui.tui.columns import fmt
from melbo_tui.tui.components.completion_text import CompletionText
from melbo_tui.tui.failures import error_line
from melbo_tui.tui.session import Session
from melbo_tui.tui.settings import ExploreSettings

MIN_WIDTH = 36  # cells per column side by side: narrower wraps a completion into a few words per line
MIN_HEIGHT = 7  # lines per stacked column (title and some text)


@dataclass(frozen=True)
class Slot:
    """One column: its title (shown whole, wrapping), what steers it, and its name on a tab.

    `describe`: the title is the role followed by what the panel knows of the target (label,
    KL, norm), kept up to date as composed targets are measured. `optional`: shown only when
    there is room for it.
    """

    title: str
    target: Composition
    tab: str = ""
    describe: bool = False
    optional: bool = False


@dataclass(frozen=True)
class CompletionRequest:
    """Completions of `slots` for one bank and one set of settings."""

    view: BankView
    settings: ExploreSettings
    slots: tuple[Slot, ...]


def settings_line(request: CompletionRequest) -> Text:
    """The prompt and decoding (two lines at most: a long prompt is cut)."""
    s, view = request.settings, request.view
    g = s.generation
    decoding = "greedy" if g.temperature == 0 else f"T={g.temperature:g} seed={g.seed}"
    text = Text(f"prompt {s.prompt!r}")
    if s.system is not None:
        text.append(f" system {s.system!r}")
    if s.raw:
        text.append(" (raw)")
    text.append(f" · {decoding} · {g.max_new_tokens} tok · layer {view.bank.meta.source_layer} · x{s.scale:g}", style="dim")
    return text


def metric_text(view: BankView, column: str, row: int, prompt: str) -> Text:
    """`KL-seq 0.100✓ (unsteered 0.458)`: a row's value, whether it beats no vector, and on which prompt."""
    value = view.value(column, row)
    text = Text(f"{title(column)} {fmt(value, column)}")
    bar = view.bar(column)
    if bar is not None and row != view.base_index:
        if view.beats(column, row):
            text.append("✓", style="green")
        text.append(f" (unsteered {fmt(bar, column)})", style="dim")
    measured_on = view.prompt_of(column)
    if measured_on is not None and measured_on != prompt:
        text.append(" (on another prompt)", style="yellow")
    return text


def describe_target(view: BankView, settings: ExploreSettings, target: Composition, measured: dict[str, float]) -> list[Text]:
    """What steers a column, in parts: label, KL (against the value to beat), norm; a composition as measured on this prompt."""
    name = Text(target.label, style="bold")
    if target.is_composition:
        name.append(f" (k={len(target.rows)})")
    parts = [name]
    column = view.kl_column
    if len(target.rows) == 1 and target.scale == 1.0:
        row = target.rows[0]
        label, current = view.label(row)
        if label:
            parts.append(Text(label if current else f"({label})", style="italic" if current else "dim italic"))
        if not math.isnan(view.value(column, row)):
            parts.append(metric_text(view, column, row, settings.prompt))
        parts.append(Text(f"norm {fmt(view.value('norm', row), 'norm')}"))
    elif target.rows:
        for name_ in (column, "kl", "kl_unsteered"):
            if name_ in measured:
                parts.append(Text(f"{title(name_)} {measured[name_]:.3f} (this prompt)"))
                break
        if "norm" in measured:
            parts.append(Text(f"norm {measured['norm']:.2f}"))
    return parts


def join_parts(parts: list[Text], width: int, separator: str = " · ") -> Text:
    """`parts` joined by `separator`, broken into lines between parts (never inside one) to fit `width`."""
    out = Text()
    used = 0
    for i, part in enumerate(parts):
        if i == 0:
            out.append_text(part)
            used = part.cell_len
            continue
        if width > 0 and used + len(separator) + part.cell_len > width:
            out.append("\n")
            used = 0
        else:
            out.append(separator, style="dim")
            used += len(separator)
        out.append_text(part)
        used += part.cell_len
    return out


def copy_completion(panel: CompletionPanel) -> None:
    """`y`: the completion a reader is looking at, to the clipboard.

    Textual's clipboard is OSC 52: the terminal puts it there, so it works over SSH (and in
    tmux with `set-clipboard on`).
    """
    column = panel.active_column()
    text = panel.text(column).text
    if not text.strip():
        raise MelboError("nothing to copy yet: this completion is still empty")
    request = panel.request
    name = request.slots[column].title.split(":")[0] if request is not None and column < len(request.slots) else "shown"
    panel.app.copy_to_clipboard(text)
    panel.notify(f"copied the {name} completion ({len(text)} characters) to the clipboard", timeout=3)


class CompletionColumn(Vertical):
    """A column: its title (parts that wrap between each other to the column's width), then its text."""

    def __init__(self, index: int) -> None:
        super().__init__(id=f"col-{index}", classes="completion-column")
        self.index = index
        self._parts: list[Text] = []
        self._title = Text()

    def compose(self) -> ComposeResult:
        yield Static("", classes="column-title", markup=False)
        yield CompletionText(id=f"text-{self.index}")

    @property
    def title_text(self) -> str:
        return self._title.plain

    def set_title(self, parts: list[Text]) -> None:
        self._parts = parts
        self._show_title()

    def on_resize(self) -> None:
        self._show_title()

    def _show_title(self) -> None:
        title = join_parts(self._parts, self.content_region.width)
        if title != self._title:  # an update lays the screen out again: only when it changes
            self._title = title
            self.query_one(".column-title", Static).update(title)


class CompletionPanel(Vertical):
    DEFAULT_CSS = (Path(__file__).with_suffix(".tcss")).read_text(encoding="utf-8")

    streaming: reactive[bool] = reactive(False)  # a generation is running (the status bar shows it)
    tabbed: reactive[bool] = reactive(False)  # one column at a time, chosen by tabs (the comparison, narrow)
    stacked: reactive[bool] = reactive(False)  # columns one under the other (the main screen, narrow panel)

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

    @dataclass
    class Idle(Message):
        """Every column of the request shown has its completion (or was stopped): the model is free."""

        panel: CompletionPanel

        @property
        def control(self) -> CompletionPanel:
            return self.panel

    def __init__(self, session: Session, columns: int = 1, debounce: float = 0.25, tabs: bool = False,
                 id: str | None = None) -> None:
        super().__init__(id=id)
        self._session = session
        self._columns = columns
        self._tabs = tabs  # narrow: tabs (the comparison); else columns stack (the main screen)
        self.debounce = debounce
        self._gen = 0
        self._request: CompletionRequest | None = None
        self._visible = 0  # columns of the request shown (optional ones only with room)
        self._shown: tuple[object, ...] | None = None
        self._stop: threading.Event | None = None
        self._timer: Timer | None = None
        self._worker: Worker[None] | None = None
        self._pending: set[int] = set()
        self._measured: dict[str, float] = {}
        self._header = Text()

    def compose(self) -> ComposeResult:
        yield Static("", id="completion-header", markup=False)
        if self._tabs:
            yield Tabs(*[Tab(str(i + 1), id=f"tab-{i}") for i in range(self._columns)], id="completion-tabs")
        with Horizontal(id="completion-columns"):
            for i in range(self._columns):
                yield CompletionColumn(i)

    def on_mount(self) -> None:
        self._arrange()

    # ----- what is shown ------------------------------------------------------------------

    def text(self, slot: int) -> CompletionText:
        return self.query_one(f"#text-{slot}", CompletionText)

    def texts(self) -> list[str]:
        """What each column of the request shows now."""
        return [self.text(i).text for i in range(self._visible or 1)]

    def titles(self) -> list[str]:
        """Each shown column's title, as plain text."""
        return [self.query_one(f"#col-{i}", CompletionColumn).title_text for i in range(self._visible)]

    @property
    def request(self) -> CompletionRequest | None:
        return self._request

    @property
    def columns_shown(self) -> int:
        """How many of the request's columns are on screen (optional ones only with room)."""
        return self._visible

    def set_message(self, header: str, note: str = "") -> None:
        """No completion to show (no bank, nothing matches): say why."""
        self.stop()
        self._request, self._shown, self._visible = None, None, 1
        self.query_one("#completion-header", Static).update(header)
        for i in range(self._columns):
            self.text(i).reset("", note if i == 0 else "")
            self.query_one(f"#col-{i}", CompletionColumn).set_title([])
        self._arrange()

    def refresh_titles(self) -> None:
        """Titles and header again (a measurement arrived, labels changed)."""
        request = self._request
        if request is None:
            return
        for i, slot in enumerate(request.slots[: self._visible]):
            self.query_one(f"#col-{i}", CompletionColumn).set_title(self._title(request, slot))
        header = settings_line(request)
        if header != self._header:  # an update lays the screen out again: only when it changes
            self._header = header
            self.query_one("#completion-header", Static).update(header)

    def _title(self, request: CompletionRequest, slot: Slot) -> list[Text]:
        if not slot.describe:
            return [Text(slot.title, style="bold")]
        parts = describe_target(request.view, request.settings, slot.target, self._measured)
        parts[0] = Text.assemble((f"{slot.title}: ", "bold"), parts[0])
        return parts

    # ----- layout -------------------------------------------------------------------------

    def on_resize(self, event: events.Resize) -> None:
        before = self._visible
        self._arrange()
        if self._visible != before and self._request is not None:
            self.show(self._request, immediate=True)  # a column that found room: its completion

    def _room(self) -> tuple[int, bool]:
        """How many of the request's columns fit, and whether they stack."""
        request = self._request
        if request is None:
            return 1, False
        slots = request.slots[: self._columns]
        required = sum(1 for s in slots if not s.optional) or 1
        if self._tabs:
            return len(slots), False
        width, height = self.size.width, max(0, self.size.height - 2)  # the header's line and rule
        n = len(slots)
        while n > required and width < n * MIN_WIDTH and height < n * MIN_HEIGHT:
            n -= 1
        return n, width < n * MIN_WIDTH

    def _arrange(self) -> None:
        self._visible, stacked = self._room()
        self.stacked = stacked
        self.query_one("#completion-columns").set_class(stacked, "stacked")
        if self._tabs:
            tabs = self.query_one(Tabs)
            tabs.display = self.tabbed
            active = tabs.active_tab.id if tabs.active_tab is not None else "tab-0"
        for column in self.query(CompletionColumn):
            shown = column.index < self._visible
            column.display = shown and (not self.tabbed or f"tab-{column.index}" == active)

    def watch_tabbed(self, tabbed: bool) -> None:
        if self.is_mounted:
            self._arrange()

    def set_tab_labels(self, labels: list[str]) -> None:
        if not self._tabs:
            return
        tabs = self.query_one(Tabs)
        for i, label in enumerate(labels[: self._columns]):
            tab = tabs.query_one(f"#tab-{i}", Tab)
            tab.label = label

    @on(Tabs.TabActivated, "#completion-tabs")
    def _tab_activated(self, event: Tabs.TabActivated) -> None:
        event.stop()
        self._arrange()
        if self.tabbed:
            self.text(self.active_column()).focus()

    def show_column(self, delta: int) -> None:
        """Next/previous tab when tabbed; else move the focus to the next/previous column."""
        if self.tabbed:
            tabs = self.query_one(Tabs)
            tabs.action_next_tab() if delta > 0 else tabs.action_previous_tab()
            return
        count = self._visible or 1
        focused = next((i for i in range(count) if self.text(i).has_focus), -1)
        self.text((focused + delta) % count).focus()

    def active_column(self) -> int:
        """The column a reader is looking at: the tab shown, or the focused column, else the first."""
        if self.tabbed:
            tabs = self.query_one(Tabs)
            return int(str(tabs.active_tab.id).split("-")[1]) if tabs.active_tab is not None else 0
        return next((i for i in range(self._visible) if self.text(i).has_focus), 0)

    # ----- generating ---------------------------------------------------------------------

    def show(self, request: CompletionRequest | None, *, immediate: bool = False, force: bool = False) -> None:
        """Show `request`: cached columns at once, the rest streamed (after the debounce unless `immediate`)."""
        if request is None:
            return
        session, view = self._session, request.view
        self._request = request
        self._arrange()
        slots = request.slots[: self._visible]
        # the cache stands for the bank: it stays the same object while a job's bank grows, so a
        # checkpoint does not restart the completion of a row that was already there
        key = (session.cache_for(view), request.settings, tuple(s.target for s in slots), session.blocked(view))
        if key == self._shown and not force:
            self.refresh_titles()
            return
        self.stop()
        self._shown = key
        self._gen += 1
        self._measured = {}
        missing: list[int] = []
        for i, slot in enumerate(slots):
            entry = None if force else session.cached(view, slot.target, request.settings)
            if entry is not None:
                self.text(i).reset(entry.text, f"[cached · {entry.num_tokens} tok · {entry.tokens_per_second:.1f} tok/s]")
            else:
                missing.append(i)
                self.text(i).reset("", session.blocked(view) or "…")
        self.refresh_titles()
        if not missing or session.blocked(view) is not None:
            self.post_message(self.Idle(self))
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
        first = request.slots[0]
        target = first.target
        if first.describe and 0 in slots and target.rows and (target.is_composition or target.scale != 1.0):
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
        if message.gen == self._gen:
            self.text(message.slot).append(message.text)

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
        self.refresh_titles()  # a row's label on these settings may have just been made
        if not self._pending:
            self.streaming = False
            self.post_message(self.Idle(self))

    @on(_Measured)
    def _measured_values(self, message: _Measured) -> None:
        if message.gen == self._gen:
            self._measured = dict(message.values)
            self.refresh_titles()

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
