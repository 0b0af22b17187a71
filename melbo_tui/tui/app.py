"""The explorer App: a vector list on the left, the highlighted vector's completion on the right.

Work that blocks (bank files, the model, generation, KL) runs in thread workers that report
back with typed messages (`messages.py`); the UI thread only renders. Every generation has an
id and a stop event: moving the highlight sets the event (the model thread stops at the next
token) and drops any late piece that still carries the old id.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Static
from textual.worker import get_current_worker

from melbo_tui.errors import MelboError
from melbo_tui.tui.backend import Backend, GenerationRequest, JobProgress, MelboJob, StreamResult
from melbo_tui.tui.bankview import BankView, open_bank_view
from melbo_tui.tui.cache import CachedCompletion, CompletionCache, completion_key
from melbo_tui.tui.components.bank_sparklines import BankSparklines
from melbo_tui.tui.components.completion_panel import CompletionPanel
from melbo_tui.tui.components.help_screen import HelpScreen
from melbo_tui.tui.components.line_input import LineInputScreen
from melbo_tui.tui.components.plots_screen import PlotsScreen
from melbo_tui.tui.components.settings_screen import SettingsScreen
from melbo_tui.tui.components.sweep_screen import SweepScreen, sweep_targets
from melbo_tui.tui.components.vector_table import SORTABLE, VectorTable
from melbo_tui.tui.filters import SORT_KEYS, Predicate, parse_filter, visible_rows
from melbo_tui.tui.keymap import APP_KEYS, bindings, load_keymap
from melbo_tui.tui.messages import (
    BanksLoaded,
    Finished,
    JobCheckpoint,
    JobDone,
    JobUpdate,
    MetricsIdle,
    MetricsProgress,
    MetricsReady,
    ModelLoaded,
    Piece,
    TargetMeasured,
)
from melbo_tui.tui.settings import COMPOSE_MODES, UNSTEERED, ExploreSettings, Target

NARROW = 110  # below this many columns the panel goes under the list
F = TypeVar("F", bound=Callable[..., Any])
W = TypeVar("W", bound=Widget)


def guarded(method: F) -> F:
    """Turn any exception escaping a UI handler into a notification: never a traceback."""

    @functools.wraps(method)
    def wrapper(self: ExplorerApp, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except MelboError as exc:
            self.notify(str(exc), severity="error", timeout=6)
        except Exception as exc:  # noqa: BLE001  a bug: still one line, and the app keeps working
            self.notify(f"internal error: {type(exc).__name__}: {exc}", severity="error", timeout=8)
        return None

    return wrapper  # type: ignore[return-value]


def error_line(exc: BaseException) -> str:
    if isinstance(exc, MelboError):
        return str(exc)
    return f"internal error: {type(exc).__name__}: {exc}"


def ortho_output_path(parent: Path, row: int) -> Path:
    """`bank.safetensors` -> `bank.ortho-from7.safetensors` beside it (or in the cwd), never overwriting."""
    return _free_path(parent, f"{parent.stem}.ortho-from{row}")


def melbo_output_path(parent: Path, source_layer: int, radius: float) -> Path:
    """`bank.safetensors` -> `bank.melbo-L8-R40.safetensors` beside it (or in the cwd), never overwriting."""
    return _free_path(parent, f"{parent.stem}.melbo-L{source_layer}-R{radius:g}")


def _free_path(parent: Path, stem: str) -> Path:
    """`stem.safetensors` beside `parent` (cwd if that is read-only), `stem-2`, `-3`... if taken."""
    directory = parent.parent if os.access(parent.parent, os.W_OK) else Path.cwd()
    candidate = directory / f"{stem}.safetensors"
    n = 2
    while candidate.exists():
        candidate = directory / f"{stem}-{n}.safetensors"
        n += 1
    return candidate


# The list's actions: screens drawn over the list (plots, sweep, help) own their keys, so these
# are off there (a `j` on the plots screen must not move the list hidden underneath).
LIST_ACTIONS = frozenset(spec.action.split("(")[0] for spec in APP_KEYS) - {"quit", "help"}
OWN_KEYS_SCREENS = (PlotsScreen, SweepScreen, HelpScreen)

MELBO_RADIUS = 40.0  # when the bank records none
MELBO_STEPS = 300


class ExplorerApp(App[None]):
    CSS_PATH = Path(__file__).with_name("app.tcss")
    TITLE = "melbo-tui"
    BINDINGS = bindings(APP_KEYS)

    def __init__(
        self,
        bank_paths: list[Path],
        backend: Backend,
        prompt: str | None = None,
        system: str | None = None,
        raw: bool | None = None,
        max_new_tokens: int = 48,
        temperature: float = 0.0,
        seed: int = 0,
        cache_root: Path | None = None,
        keymap: dict[str, str] | None = None,
        debounce: float = 0.25,
    ) -> None:
        super().__init__()
        self.bank_paths = [Path(p) for p in bank_paths]
        self.backend = backend
        self._prompt, self._system, self._raw = prompt, system, raw
        self._sampling = (max_new_tokens, temperature, seed)
        self._cache_root = cache_root
        self.debounce = debounce
        self.keymap_overrides, self._keymap_warnings = (keymap, []) if keymap is not None else load_keymap()
        self.views: list[BankView] = []
        self.view_index = 0
        self.selections: list[set[int]] = []
        self.caches: dict[str, CompletionCache] = {}
        self._cache_moved: dict[str, str] = {}  # digest of a superseded checkpoint -> digest of its successor
        self.settings: ExploreSettings | None = None
        self.composition: Target | None = None  # set by `compose`, cleared when the highlight moves
        self._composed_at: int | None = None  # the row highlighted when `compose` was pressed
        self.baselines = False
        self.filter_text = ""
        self._predicate: Predicate | None = None
        self.sort_key = "idx"
        self.sort_reverse = False
        self.range_anchor: int | None = None
        self.model_status = "loading model…"
        self.model_ready = False
        self.model_error: str | None = None
        self.fit_errors: dict[str, str] = {}
        self.metrics_status = ""
        self.gen = 0
        self._stop_event: threading.Event | None = None
        self._debounce_timer: Timer | None = None
        self._shown_key: tuple[Any, ...] | None = None
        self._streaming: set[str] = set()
        self._stream_started = 0.0
        self._stream_tokens = 0
        self._target_values: dict[str, float] = {}
        self._quitting = threading.Event()
        self.mounted_at = 0.0
        self.banks_done = False
        self.job_status = ""
        self.job_running = False
        self.job_name = "ortho"  # the status line's name of the running job
        self.job_out: Path | None = None
        self._metrics_running = False
        self._metrics_again = False
        self._job_stop = threading.Event()
        self._widgets: dict[str, Any] = {}

    # ----- layout -------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield BankSparklines(id="sparklines")
                yield VectorTable(id="vectors")
            yield CompletionPanel(id="panel")
        yield Static("", id="status", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.mounted_at = time.perf_counter()
        if self.keymap_overrides:
            self.set_keymap(self.keymap_overrides)
        for warning in self._keymap_warnings:
            self.notify(warning, severity="warning", timeout=8)
        self.panel.set_header("loading bank…")
        self.panel.clear(note="the completion of the highlighted vector streams here")
        self._apply_width(self.size.width)
        self.refresh_status()
        self.load_banks()
        self.load_model()

    def on_resize(self, event: Any) -> None:
        self._apply_width(event.size.width)

    def _apply_width(self, width: int) -> None:
        self._widget("#main", Horizontal).set_class(width < NARROW, "narrow")

    def _widget(self, selector: str, kind: type[W]) -> W:
        """A widget of the main screen; `query_one` on the App would search the *active* screen."""
        found = self._widgets.get(selector)
        if found is None:
            found = self._widgets[selector] = self.screen_stack[0].query_one(selector, kind)
        return found  # type: ignore[no-any-return]

    @property
    def table(self) -> VectorTable:
        return self._widget("#vectors", VectorTable)

    @property
    def panel(self) -> CompletionPanel:
        return self._widget("#panel", CompletionPanel)

    @property
    def view(self) -> BankView | None:
        return self.views[self.view_index] if self.views else None

    @property
    def selected(self) -> set[int]:
        return self.selections[self.view_index] if self.selections else set()

    def cache_for(self, view: BankView) -> CompletionCache:
        digest = view.digest
        while digest in self._cache_moved:  # a late result for an earlier checkpoint of a growing bank
            digest = self._cache_moved[digest]
        if digest not in self.caches:
            self.caches[digest] = CompletionCache(digest, self._cache_root)
        return self.caches[digest]

    def _carry_cache(self, old: BankView, new: BankView) -> None:
        """A job's bank grew: its file hash changed, but every row it had is still there, bit for bit.

        The completions cached for the old checkpoint then hold for the new one too (a target names
        rows, and those rows are the same vectors at the same layer), so the cache moves along.
        """
        if old.digest == new.digest or old.digest in self._cache_moved:
            return
        a, b = old.bank, new.bank
        n = len(a)
        if (len(b) < n or a.meta.base_index != b.meta.base_index or a.meta.source_layer != b.meta.source_layer
                or a.vectors.shape[1:] != b.vectors.shape[1:] or not bool((a.vectors == b.vectors[:n]).all())):
            return
        cache = self.cache_for(old)
        if new.digest in self.caches:
            return  # already open under its own digest: keep that one
        cache.move_to(new.digest)
        self.caches.pop(old.digest, None)
        self.caches[new.digest] = cache
        self._cache_moved[old.digest] = new.digest

    # ----- loading ------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="banks", exit_on_error=False)
    def load_banks(self) -> None:
        views: list[BankView] = []
        errors: list[str] = []
        for path in self.bank_paths:
            try:
                views.append(open_bank_view(path))
            except Exception as exc:  # noqa: BLE001  shown as a notification, never a traceback
                errors.append(error_line(exc))
        self.post_message(BanksLoaded(views, errors))

    @work(thread=True, exclusive=True, group="model", exit_on_error=False)
    def load_model(self) -> None:
        try:
            description = self.backend.load()
        except Exception as exc:  # noqa: BLE001  shown as a notification, never a traceback
            self.post_message(ModelLoaded(None, error_line(exc)))
            return
        self.post_message(ModelLoaded(description, None))

    @on(BanksLoaded)
    @guarded
    def _banks_loaded(self, message: BanksLoaded) -> None:
        self.banks_done = True
        for error in message.errors:
            self.notify(error, severity="error", timeout=10)
        if not message.views:
            self.panel.set_header("no bank could be opened")
            self.panel.clear(note="\n".join(message.errors) or "no bank given")
            self.refresh_status()
            return
        self.views = message.views
        self.selections = [set() for _ in self.views]
        meta = self.views[0].bank.meta
        max_new_tokens, temperature, seed = self._sampling
        self.settings = ExploreSettings(
            prompt=self._prompt if self._prompt is not None else (meta.prompts[0] if meta.prompts else "Hello"),
            system=self._system if self._system is not None else meta.system_prompt,
            raw=self._raw if self._raw is not None else meta.raw_prompts,
            max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
        )
        if self.model_ready:
            self._check_fits()
        self.show_view(0)
        if self.model_ready:
            self.request_metrics()

    @on(ModelLoaded)
    @guarded
    def _model_loaded(self, message: ModelLoaded) -> None:
        if message.error is not None:
            self.model_error = message.error
            self.model_status = "model failed to load"
            self.notify(f"model failed to load: {message.error}", severity="error", timeout=12)
            self.schedule_generation()
            self.refresh_status()
            return
        self.model_ready = True
        self.model_status = f"model: {message.description}"
        self.refresh_status()
        if self.views:
            self._after_model_and_banks()

    def _after_model_and_banks(self) -> None:
        self._check_fits()
        self.request_metrics()
        self._shown_key = None
        self.schedule_generation(immediate=True)

    def _check_fits(self) -> None:
        for view in self.views:
            try:
                self.backend.check_bank(view.bank)
            except MelboError as exc:
                self.fit_errors[view.digest] = str(exc)
                self.notify(f"{view.name}: {exc}", severity="error", timeout=10)

    # ----- metrics on demand --------------------------------------------------------------

    def request_metrics(self) -> None:
        """Measure KL for every open bank lacking it; one pass at a time, never restarting a running one."""
        if self._metrics_running:
            self._metrics_again = True
            return
        self._metrics_running, self._metrics_again = True, False
        self.compute_missing_metrics()

    @on(MetricsIdle)
    def _metrics_idle(self) -> None:
        self._metrics_running = False
        if self._metrics_again:
            self.request_metrics()

    @work(thread=True, exclusive=True, group="metrics", exit_on_error=False)
    def compute_missing_metrics(self) -> None:
        worker = get_current_worker()
        for view in list(self.views):
            if view.has("kl") or view.digest in self.fit_errors:
                continue
            def progress(done: int, total: int, view: BankView = view, last: list[float] = [0.0]) -> None:  # noqa: B006
                now = time.perf_counter()
                if now - last[0] > 0.3 or done == total:
                    last[0] = now
                    self.post_message(MetricsProgress(view, done, total))

            try:
                values = self.backend.metrics(view.bank, lambda: worker.is_cancelled or self._quitting.is_set(), progress)
            except Exception as exc:  # noqa: BLE001  shown as a notification
                self.post_message(MetricsReady(view, None, error_line(exc)))
                continue
            self.post_message(MetricsReady(view, values, None))
        self.post_message(MetricsIdle())

    @on(MetricsProgress)
    def _metrics_progress(self, message: MetricsProgress) -> None:
        self.metrics_status = f"measuring KL {message.done}/{message.total}"
        self.refresh_status()

    @on(MetricsReady)
    @guarded
    def _metrics_ready(self, message: MetricsReady) -> None:
        if message.error is not None:
            self.metrics_status = "KL unavailable"
            self.notify(f"KL not computed for {message.view.name}: {message.error}", severity="warning", timeout=8)
        elif message.values is not None and len(message.values.get("kl", [])) == len(message.view):
            for name, values in message.values.items():
                message.view.set_metric(name, values)
            self.metrics_status = ""
            self.notify(f"KL measured for {message.view.name}", timeout=3)
            if message.view is self.view:
                self.refill_table()
                self._widget("#sparklines", BankSparklines).set_view(message.view)
        self.refresh_status()

    # ----- the list -----------------------------------------------------------------------

    def show_view(self, index: int) -> None:
        self.view_index = index
        self.composition = None
        self.range_anchor = None
        view = self.views[index]
        self._widget("#sparklines", BankSparklines).set_view(view)
        self.sub_title = view.name
        self.refill_table(keep=view.base_index if self.table.row_count == 0 else None)
        self.table.focus()
        self._shown_key = None
        self.schedule_generation()
        self.refresh_status()

    def refill_table(self, keep: int | None = None) -> None:
        view = self.view
        if view is None:
            return
        if keep is None:
            keep = self.table.current_row() if self.table.view is view else None
        rows = visible_rows(view, self._predicate, self.sort_key, self.sort_reverse, self.selected)
        self.table.show(view, rows, self.selected, keep=keep if keep is not None else (rows[0] if rows else None))
        if not rows:
            self.panel.set_header("no row matches the filter")
        self.refresh_status()

    def current_row(self) -> int | None:
        return self.table.current_row()

    @on(DataTable.RowHighlighted, "#vectors")
    @guarded
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        row = self.current_row()
        if row is None:
            return
        self._widget("#sparklines", BankSparklines).cursor = row
        if self.composition is not None and row == self._composed_at:
            return  # a late event for the move that came before `compose`: the composition stays
        self.composition = None
        self.schedule_generation()

    @on(DataTable.HeaderSelected, "#vectors")
    @guarded
    def _header_selected(self, event: DataTable.HeaderSelected) -> None:
        key = SORTABLE.get(str(event.column_key.value))
        if key is None:
            return
        if key == self.sort_key:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_key, self.sort_reverse = key, False
        self.refill_table()

    # ----- generation ---------------------------------------------------------------------

    def current_target(self) -> Target | None:
        if self.composition is not None:
            return self.composition
        row = self.current_row()
        if row is None or self.settings is None:
            return None
        return Target((row,), scale=self.settings.scale)

    def header(self, target: Target, tps: float | None = None, note: str = "") -> Text:
        view, s = self.view, self.settings
        assert view is not None and s is not None
        text = Text()
        text.append(target.label, style="bold")
        if not target.is_composition and target.rows:
            row = target.rows[0]
            text.append(f"  norm {abs(target.scale) * view.value('norm', row):.2f}")
            kl = view.value("kl", row)
            text.append(f"  KL {kl:.4f}" if not math.isnan(kl) and target.scale == 1.0 else "")
            if view.labels[row]:
                text.append(f"  [{view.labels[row]}]", style="italic")
        else:
            if "norm" in self._target_values:
                text.append(f"  norm {self._target_values['norm']:.2f}")
            if "kl" in self._target_values:
                text.append(f"  KL to base {self._target_values['kl']:.4f}")
        text.append(f"\nprompt: {s.prompt!r}")
        if s.system is not None:
            text.append(f"  system: {s.system!r}")
        if s.raw:
            text.append("  (raw)")
        text.append(f"\nT={s.temperature:g}  seed={s.seed}  max={s.max_new_tokens} tok  layer {view.bank.meta.source_layer}")
        if tps is not None:
            text.append(f"  {tps:.1f} tok/s")
        if note:
            text.append(f"  {note}", style="dim")
        return text

    def schedule_generation(self, immediate: bool = False, force: bool = False) -> None:
        """Show what the cache has for the current target; stream the rest after the debounce."""
        view, settings, target = self.view, self.settings, self.current_target()
        if view is None or settings is None or target is None:
            return
        slots = ("steered", "unsteered", "base") if self.baselines else ("steered",)
        cache = self.cache_for(view)
        # the cache stands for the bank: it stays the same object while a job's bank grows, so a
        # checkpoint does not restart the completion of a row that was already there
        key = (cache, target, settings, slots, self.model_ready)
        if key == self._shown_key and not force:
            return
        self.stop_generation(quiet=True)
        self._shown_key = key
        self.gen += 1
        self._target_values = {}
        missing: list[str] = []
        for slot in slots:
            entry = None if force else cache.get(completion_key(self.backend.model_name, self.slot_target_for(view, slot, target), settings))
            column = self.panel.column(slot)
            if entry is not None:
                column.set_text(entry.text, f"[cached · {entry.num_tokens} tok · {entry.tokens_per_second:.1f} tok/s]")
            else:
                missing.append(slot)
                column.set_text("", self._waiting_note())
        self.panel.set_header(self.header(target, note="(from cache)" if not missing else ""))
        if not missing or not self.model_ready or view.digest in self.fit_errors:
            self.refresh_status()
            return
        gen = self.gen
        start = functools.partial(self._start_worker, gen, view, target, settings, tuple(missing))
        if immediate or self.debounce <= 0:
            start()
        else:
            self._debounce_timer = self.set_timer(self.debounce, start)

    def _waiting_note(self) -> str:
        view = self.view
        if self.model_error is not None:
            return f"⚠ no completions: the model failed to load ({self.model_error})"
        if view is not None and view.digest in self.fit_errors:
            return f"⚠ {self.fit_errors[view.digest]}"
        if not self.model_ready:
            return "model loading… the completion streams as soon as it is ready"
        return "…"

    def _start_worker(self, gen: int, view: BankView, target: Target, settings: ExploreSettings, slots: tuple[str, ...]) -> None:
        if gen != self.gen:
            return
        stop = threading.Event()
        self._stop_event = stop
        self._streaming = set(slots)
        self._stream_started = time.perf_counter()
        self._stream_tokens = 0
        self.generate_worker(gen, view, target, settings, slots, stop)
        self.refresh_status()

    @work(thread=True, exclusive=True, group="generate", exit_on_error=False)
    def generate_worker(
        self, gen: int, view: BankView, target: Target, settings: ExploreSettings, slots: tuple[str, ...], stop: threading.Event
    ) -> None:
        worker = get_current_worker()

        def should_stop() -> bool:
            return stop.is_set() or worker.is_cancelled or self._quitting.is_set()

        if target.is_composition:
            try:
                self.post_message(TargetMeasured(gen, self.backend.target_metrics(view.bank, target)))
            except Exception as exc:  # noqa: BLE001  shown in the panel
                self.post_message(TargetMeasured(gen, {"error": 0.0}))
                self.post_message(Finished(gen, "steered", None, error_line(exc)))
                return
        for slot in slots:
            if should_stop():
                return
            slot_target = self.slot_target_for(view, slot, target)
            try:
                result = self.backend.stream(GenerationRequest(view.bank, slot_target, settings), self._poster(gen, slot), should_stop)
            except Exception as exc:  # noqa: BLE001  shown in the panel
                self.post_message(Finished(gen, slot, None, error_line(exc)))
                continue
            if not result.stopped:
                self._remember(view, slot_target, settings, result)
            self.post_message(Finished(gen, slot, result))

    def _poster(self, gen: int, slot: str) -> Callable[[str], None]:
        def post(piece: str) -> None:
            self.post_message(Piece(gen, slot, piece))

        return post

    @staticmethod
    def slot_target_for(view: BankView, slot: str, target: Target) -> Target:
        if slot == "unsteered":
            return UNSTEERED
        if slot == "base":
            return Target((view.base_index,))
        return target

    def _remember(self, view: BankView, target: Target, settings: ExploreSettings, result: StreamResult) -> None:
        entry = CachedCompletion(
            key=completion_key(self.backend.model_name, target, settings), target=target.label, text=result.text,
            num_tokens=result.num_tokens, seconds=result.seconds, model=self.backend.model_name,
            prompt=settings.prompt, system=settings.system, raw=settings.raw, temperature=settings.temperature,
            max_new_tokens=settings.max_new_tokens, seed=settings.seed,
        )
        try:
            self.cache_for(view).put(entry)
        except OSError:
            pass  # a read-only cache dir only costs persistence

    @on(Piece)
    def _piece(self, message: Piece) -> None:
        if message.gen != self.gen or self._quitting.is_set():
            return
        try:
            self.panel.column(message.slot).append(message.text)
        except NoMatches:  # the app is shutting down under a late piece
            return
        self._stream_tokens += 1
        if message.slot == "steered" and self._stream_tokens % 4 == 0:
            target = self.current_target()
            elapsed = time.perf_counter() - self._stream_started
            if target is not None and elapsed > 0:
                self.panel.set_header(self.header(target, self._stream_tokens / elapsed, "streaming…"))

    @on(Finished)
    @guarded
    def _finished(self, message: Finished) -> None:
        if message.gen != self.gen or self._quitting.is_set():
            return
        self._streaming.discard(message.slot)
        column = self.panel.column(message.slot)
        result = message.result
        if message.error is not None:
            column.set_note(f"⚠ {message.error}")
            self.notify(message.error, severity="error", timeout=6)
        elif result is not None:
            column.set_note(
                f"[stopped after {result.num_tokens} tok]" if result.stopped
                else f"[{result.num_tokens} tok · {result.tokens_per_second:.1f} tok/s]"
            )
            target = self.current_target()
            if message.slot == "steered" and target is not None:
                self.panel.set_header(self.header(target, result.tokens_per_second))
        self.refresh_status()

    @on(TargetMeasured)
    def _target_measured(self, message: TargetMeasured) -> None:
        if message.gen != self.gen:
            return
        self._target_values = {k: v for k, v in message.values.items() if k != "error"}
        target = self.current_target()
        if target is not None:
            self.panel.set_header(self.header(target, note="streaming…"))

    def stop_generation(self, quiet: bool = False) -> bool:
        """Stop the debounce timer and the running generation; True if something was running."""
        running = bool(self._streaming)
        if self._debounce_timer is not None:
            self._debounce_timer.stop()
            self._debounce_timer = None
        if self._stop_event is not None:
            self._stop_event.set()
        self.workers.cancel_group(self, "generate")
        if not quiet:
            for slot in self._streaming:
                self.panel.column(slot).set_note("[stopped]")
        self._streaming = set()
        return running

    def generate_blocking(self, target: Target, on_text: Callable[[str], None], should_stop: Callable[[], bool]) -> StreamResult:
        """For the sweep screen's thread: cached text at once, else stream and remember."""
        view, settings = self.view, self.settings
        if view is None or settings is None:
            raise MelboError("no bank open")
        entry = self.cache_for(view).get(completion_key(self.backend.model_name, target, settings))
        if entry is not None:
            on_text(entry.text)
            return StreamResult(entry.text, entry.num_tokens, entry.seconds, False)
        if not self.model_ready:
            raise MelboError(self.model_error or "the model is still loading")
        if view.digest in self.fit_errors:
            raise MelboError(self.fit_errors[view.digest])
        result = self.backend.stream(GenerationRequest(view.bank, target, settings), on_text, should_stop)
        if not result.stopped:
            self._remember(view, target, settings, result)
        return result

    # ----- status line --------------------------------------------------------------------

    def refresh_status(self) -> None:
        view = self.view
        parts = [self.model_status]
        if self._streaming:
            parts.append("generating…")
        if self.metrics_status:
            parts.append(self.metrics_status)
        if self.job_status:
            parts.append(self.job_status)
        if view is None:
            parts.append("loading bank…" if not self.banks_done else "no bank opened")
        else:
            bank = f"bank {self.view_index + 1}/{len(self.views)} {view.name}" if len(self.views) > 1 else view.name
            parts.append(f"{bank} ({self.table.row_count}/{len(view)} rows)")
            if self.filter_text:
                parts.append(f"filter: {self.filter_text}")
            if self.selected:
                parts.append(f"selected {len(self.selected)}")
            if self.range_anchor is not None:
                parts.append(f"range from {self.range_anchor}")
            parts.append(f"sort: {self.sort_key}{' ↓' if self.sort_reverse else ''}")
            if self.settings is not None:
                parts.append(f"compose: {self.settings.mode} x{self.settings.scale:g}")
        self._widget("#status", Static).update(" │ ".join(p for p in parts if p))

    # ----- actions ------------------------------------------------------------------------

    @guarded
    def action_cursor_down(self) -> None:
        self.table.action_cursor_down()

    @guarded
    def action_cursor_up(self) -> None:
        self.table.action_cursor_up()

    @guarded
    def action_top(self) -> None:
        if self.table.row_count:
            self.table.move_cursor(row=0, animate=False)

    @guarded
    def action_bottom(self) -> None:
        if self.table.row_count:
            self.table.move_cursor(row=self.table.row_count - 1, animate=False)

    @guarded
    def action_stop(self) -> None:
        if self.stop_generation():
            self.notify("generation stopped", timeout=2)
        self._shown_key = None  # moving back here (or pressing r) streams again

    @guarded
    def action_select(self) -> None:
        row = self.current_row()
        if row is None:
            return
        selected = self.selected
        if row in selected:
            selected.discard(row)
        else:
            selected.add(row)
        self.table.set_selected(row, row in selected)
        self.table.action_cursor_down()
        self.refresh_status()

    @guarded
    def action_range(self) -> None:
        row = self.current_row()
        if row is None:
            return
        if self.range_anchor is None:
            self.range_anchor = row
            self.notify(f"range starts at vector {row}: move, then press v again", timeout=3)
        else:
            shown = [int(k.value) for k in self.table.rows if k.value is not None]
            a, b = sorted((shown.index(self.range_anchor) if self.range_anchor in shown else 0, shown.index(row)))
            for r in shown[a : b + 1]:
                self.selected.add(r)
                self.table.set_selected(r, True)
            self.notify(f"selected {b - a + 1} vectors ({len(self.selected)} in all)", timeout=3)
            self.range_anchor = None
        self.refresh_status()

    @guarded
    def action_clear_selection(self) -> None:
        for r in list(self.selected):
            self.table.set_selected(r, False)
        self.selected.clear()
        self.range_anchor = None
        self.refresh_status()

    @guarded
    def action_compose(self) -> None:
        if self.settings is None:
            return
        if not self.selected:
            raise MelboError("nothing selected: press space on vectors (or v for a range) first")
        self.composition = Target(tuple(sorted(self.selected)), self.settings.mode, self.settings.scale)
        self._composed_at = self.current_row()
        self.schedule_generation(immediate=True)

    @guarded
    def action_mode(self) -> None:
        if self.settings is None:
            return
        mode = COMPOSE_MODES[(COMPOSE_MODES.index(self.settings.mode) + 1) % len(COMPOSE_MODES)]
        self.settings = self.settings.with_mode(mode)
        if self.composition is not None:
            self.composition = replace(self.composition, mode=mode)
            self.schedule_generation()
        self.notify(f"composition mode: {mode}", timeout=2)
        self.refresh_status()

    @guarded
    def action_scale(self, delta: float) -> None:
        if self.settings is None:
            return
        self.settings = replace(self.settings, scale=round(self.settings.scale + delta, 4))
        if self.composition is not None:
            self.composition = replace(self.composition, scale=self.settings.scale)
        self.schedule_generation()
        self.refresh_status()

    @guarded
    def action_baselines(self) -> None:
        self.baselines = not self.baselines
        self.panel.show_baselines(self.baselines)
        self.schedule_generation(immediate=True)

    @guarded
    def action_regenerate(self) -> None:
        self.schedule_generation(immediate=True, force=True)

    @guarded
    def action_settings(self) -> None:
        if self.settings is None:
            raise MelboError("no bank open yet")

        def apply(settings: ExploreSettings | None) -> None:
            if settings is not None and settings != self.settings:
                self.settings = settings
                if self.composition is not None:
                    self.composition = replace(self.composition, mode=settings.mode, scale=settings.scale)
                self.schedule_generation(immediate=True)
                self.refresh_status()

        self.push_screen(SettingsScreen(self.settings), apply)

    @guarded
    def action_filter(self) -> None:
        self.push_screen(
            LineInputScreen("Filter (empty clears): kl<0.1, label=code, norm>20 and cos<0.5, idx>=100", self.filter_text, "kl<0.1"),
            self.apply_filter,
        )

    @guarded
    def apply_filter(self, text: str | None) -> None:
        if text is None:
            return
        predicate = parse_filter(text)
        self.filter_text, self._predicate = text.strip(), predicate
        self.refill_table()
        if self.table.row_count == 0:
            self.notify(f"no vector matches '{text.strip()}'", severity="warning", timeout=4)

    @guarded
    def action_sort(self) -> None:
        self.sort_key = SORT_KEYS[(SORT_KEYS.index(self.sort_key) + 1) % len(SORT_KEYS)]
        self.refill_table()
        self.notify(f"sorted by {self.sort_key}", timeout=2)

    @guarded
    def action_reverse(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self.refill_table()

    @guarded
    def action_jump(self) -> None:
        self.push_screen(LineInputScreen("Jump to vector index", "", "e.g. 700"), self.jump_to)

    @guarded
    def jump_to(self, text: str | None) -> None:
        if text is None or not text.strip() or self.view is None:
            return
        try:
            row = int(text.strip())
        except ValueError:
            raise MelboError(f"'{text.strip()}' is not a vector index") from None
        n = len(self.view)
        if not -n <= row < n:
            raise MelboError(f"index {row} out of range: the bank has {n} vectors (0..{n - 1})")
        row %= n
        if not self.table.move_to(row):
            raise MelboError(f"vector {row} is hidden by the filter '{self.filter_text}'")

    @guarded
    def action_next_bank(self) -> None:
        if len(self.views) < 2:
            raise MelboError("only one bank is open (melbo-tui open A.safetensors B.safetensors opens several)")
        self.stop_generation(quiet=True)
        self.show_view((self.view_index + 1) % len(self.views))

    @guarded
    def action_plots(self) -> None:
        view, row = self.view, self.current_row()
        if view is None:
            raise MelboError("no bank open yet")
        self.push_screen(PlotsScreen(view, row or 0, self._plot_moved))

    def _plot_moved(self, row: int) -> None:
        self.table.move_to(row)

    @guarded
    def action_sweep(self) -> None:
        view, s = self.view, self.settings
        if view is None or s is None:
            raise MelboError("no bank open yet")
        targets = sweep_targets(len(view), view.base_index, s.mode, s.scale)
        if not targets:
            raise MelboError("the bank has no vectors besides the base")
        self.stop_generation(quiet=True)
        self._shown_key = None
        caption = f"Sweep on {view.name}: {s.mode} of the first k vectors (base excluded), prompt {s.prompt!r}, T={s.temperature:g}, seed {s.seed}"
        self.push_screen(SweepScreen(targets, caption, self.generate_blocking), lambda _: self.schedule_generation())

    @guarded
    def action_export(self) -> None:
        view = self.view
        if view is None:
            raise MelboError("no bank open yet")
        cache = self.cache_for(view)
        if not len(cache):
            raise MelboError("no completion generated yet for this bank")
        stem = view.path.stem
        written = [Path.cwd() / f"{stem}.completions.jsonl", Path.cwd() / f"{stem}.completions.txt"]
        for path in written:
            cache.export(path)
        self.notify(f"exported {len(cache)} completions to {written[0]} and {written[1].name}", timeout=8)

    # ----- background MELBO-ortho -----------------------------------------------------------

    def _check_job_can_start(self, view: BankView) -> None:
        """A background job needs the model, no other job, and a bank that fits the model."""
        if not self.model_ready:
            raise MelboError(self.model_error or "the model is still loading")
        if self.job_running:
            raise MelboError("a background job is already running (O stops it)")
        if view.digest in self.fit_errors:
            raise MelboError(self.fit_errors[view.digest])

    @guarded
    def action_ortho(self) -> None:
        view, row = self.view, self.current_row()
        if view is None or row is None:
            raise MelboError("no bank open yet")
        self._check_job_can_start(view)
        self.push_screen(
            LineInputScreen(f"MELBO-ortho from vector {row} of {view.name}: how many orthogonal vectors?", "64", "e.g. 64"),
            functools.partial(self.start_ortho, view, row),
        )

    @guarded
    def start_ortho(self, view: BankView, row: int, text: str | None) -> None:
        if text is None or not text.strip():
            return
        try:
            count = int(text.strip())
        except ValueError:
            raise MelboError(f"'{text.strip()}' is not a number of vectors") from None
        if not 0 < count < view.bank.hidden_size:
            raise MelboError(f"the count must be 1..{view.bank.hidden_size - 1} (d_model - 1)")
        out = ortho_output_path(view.path, row)
        self._start_job("ortho", f"ortho from {row}: starting", out)
        self.notify(f"MELBO-ortho from vector {row}: {count} vectors into {out}", timeout=5)
        backend = self.backend
        self.run_job(out, lambda progress, stop: backend.run_ortho(view.bank, view.path, row, count, out, progress, stop))
        self.refresh_status()

    def _start_job(self, name: str, status: str, out: Path) -> None:
        self.job_running = True
        self.job_name, self.job_out = name, out
        self._job_stop.clear()
        self.job_status = status

    @guarded
    def action_train(self) -> None:
        view, s = self.view, self.settings
        if view is None or s is None:
            raise MelboError("no bank open yet")
        self._check_job_can_start(view)
        meta = view.bank.meta
        radius = meta.radius if meta.radius else MELBO_RADIUS
        self.push_screen(
            LineInputScreen(f"MELBO on {s.prompt!r}, layers {meta.source_layer}->{meta.target_layer}, R={radius:g}: "
                            f"how many vectors [and steps, default {MELBO_STEPS}]?", "8", "e.g. 8 or 8 100"),
            functools.partial(self.start_melbo, view, radius),
        )

    @guarded
    def start_melbo(self, view: BankView, radius: float, text: str | None) -> None:
        if text is None or not text.strip() or self.settings is None:
            return
        words = text.split()
        try:
            count = int(words[0])
            steps = int(words[1]) if len(words) > 1 else MELBO_STEPS
        except ValueError:
            raise MelboError(f"'{text.strip()}' is not a number of vectors (and of steps), e.g. 8 or 8 100") from None
        if len(words) > 2 or not 0 < count <= view.bank.hidden_size:
            raise MelboError(f"give the number of vectors, 1..{view.bank.hidden_size} (d_model), and optionally the steps")
        if steps <= 0:
            raise MelboError("the number of steps must be positive")
        s, meta = self.settings, view.bank.meta
        job = MelboJob(prompt=s.prompt, system=s.system, raw=s.raw, source_layer=meta.source_layer,
                       target_layer=meta.target_layer, radius=radius, count=count, steps=steps,
                       batch_vectors=min(4, count))
        out = melbo_output_path(view.path, meta.source_layer, radius)
        self._start_job("melbo", "melbo: starting", out)
        self.notify(f"MELBO: {count} vectors on {s.prompt!r} into {out}; its bank opens after the first batch", timeout=6)
        backend = self.backend
        self.run_job(out, lambda progress, stop: backend.run_melbo(job, out, progress, stop))
        self.refresh_status()

    @work(thread=True, exclusive=True, group="job", exit_on_error=False)
    def run_job(self, out: Path, run: Callable[[Callable[[JobProgress], None], Callable[[], bool]], str]) -> None:
        """Run a bank-making job (`run(progress, should_stop)`), opening `out` again at each checkpoint."""
        worker = get_current_worker()
        seen = [-1, 0.0]  # vectors saved at the last checkpoint we opened, time of the last update

        def stop() -> bool:
            return worker.is_cancelled or self._quitting.is_set() or self._job_stop.is_set()

        def progress(p: JobProgress) -> None:
            if p.done != seen[0]:
                seen[0] = p.done
                self._post_checkpoint(out)
            now = time.perf_counter()
            if now - seen[1] > 0.25:
                seen[1] = now
                self.post_message(JobUpdate(p))

        try:
            message = run(progress, stop)
        except Exception as exc:  # noqa: BLE001  shown as a notification
            self.post_message(JobDone(None, error_line(exc)))
            return
        self._post_checkpoint(out)
        self.post_message(JobDone(message, None))

    def _post_checkpoint(self, out: Path) -> None:
        try:
            self.post_message(JobCheckpoint(open_bank_view(out)))
        except (MelboError, OSError):
            pass  # not written yet; the next checkpoint opens it

    @on(JobUpdate)
    def _job_update(self, message: JobUpdate) -> None:
        p = message.progress
        filled = int(10 * p.done / max(1, p.count))
        self.job_status = f"{self.job_name} {p.done}/{p.count} [{'█' * filled}{'░' * (10 - filled)}] step {p.step}/{p.steps} loss {p.loss:.3g}"
        self.refresh_status()

    @on(JobCheckpoint)
    @guarded
    def _job_checkpoint(self, message: JobCheckpoint) -> None:
        new = message.view
        for i, old in enumerate(self.views):
            if old.path.resolve() == new.path.resolve():
                self._carry_cache(old, new)
                keep = self.current_row() if i == self.view_index else None
                self.views[i] = new
                if i == self.view_index:
                    self._widget("#sparklines", BankSparklines).set_view(new)
                    self.refill_table(keep=keep)  # the highlight stays where the user left it
                break
        else:
            self.views.append(new)
            self.selections.append(set())
            self.notify(f"opened {new.name}: it fills in as blocks are saved (n switches banks)", timeout=6)
        self.refresh_status()

    @on(JobDone)
    @guarded
    def _job_done(self, message: JobDone) -> None:
        self.job_running = False
        self.job_status = ""
        title = "MELBO-ortho" if self.job_name == "ortho" else "MELBO"
        if message.error is not None:
            self.notify(f"{title} failed: {message.error}", severity="error", timeout=10)
        else:
            self.notify(message.message or f"{title} finished", timeout=8)
            self.request_metrics()
        self.refresh_status()

    @guarded
    def action_stop_job(self) -> None:
        if not self.job_running:
            raise MelboError("no background job is running")
        self._job_stop.set()
        self.job_status = f"{self.job_name}: stopping after this step…"
        self.refresh_status()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action in LIST_ACTIONS and isinstance(self.screen, OWN_KEYS_SCREENS))

    @guarded
    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.keymap_overrides))

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if isinstance(screen, OWN_KEYS_SCREENS):
            return
        for spec in APP_KEYS:
            if spec.id not in ("quit", "help"):
                yield SystemCommand(spec.description.split(":")[0], f"key: {spec.keys} ({spec.id})",
                                    functools.partial(self.run_action, spec.action))

    def on_unmount(self) -> None:
        self._quitting.set()
        if self._stop_event is not None:
            self._stop_event.set()

    async def action_quit(self) -> None:
        self._quitting.set()
        self.stop_generation(quiet=True)
        self.exit()
