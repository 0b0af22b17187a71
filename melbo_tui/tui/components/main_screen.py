"""The explorer's main screen: the vector list on the left, the completions on the right.

The right side always shows the highlighted vector's (or the composition's) completion beside
the unsteered model's and, where the bank has a base row and there is room, the base's. Below
110 columns it goes under the list. The screen wires widgets that own their state: the list
(cursor, selection, filter, sort, per bank), its legend line, the completion panel (generations
and streaming), the status bar (reactive fields). What belongs to no widget lives here: which
banks are open (`Session`), the prompt and decoding settings, the composition being shown, and
the background work that outlives a key press (loading banks and the model, measuring KL,
reading ahead, MELBO and MELBO-ortho jobs). That work runs in thread workers of this screen or
of its invisible `Measurer`, `ReadAhead` and `JobRunner`; each owner has one
`Worker.StateChanged` handler, the one place its results and failures arrive. Everything the
explorer writes goes to the workspace (`outputs`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

from textual import events, on
from textual.app import ComposeResult, SystemCommand
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from melbo_tui.compose import UNSTEERED, ComposeMode, Composition
from melbo_tui.decoding import GenerationSettings
from melbo_tui.errors import InputError, MelboError
from melbo_tui.kinds import Objective
from melbo_tui.tui.backend import Backend, Job, MelboJob, MetricsRequest, OrthoJob
from melbo_tui.tui.bankview import BankView, open_bank_view, title
from melbo_tui.tui.cache import ExportRecord, write_completions
from melbo_tui.tui.components.background import JobRunner, Measurer, ReadAhead
from melbo_tui.tui.components.bank_sparklines import BankSparklines
from melbo_tui.tui.components.columns_screen import ColumnsScreen
from melbo_tui.tui.components.compare_screen import CompareScreen, comparison_slots, row_name
from melbo_tui.tui.components.completion_panel import CompletionPanel, CompletionRequest, Slot, copy_completion
from melbo_tui.tui.components.footer import ExplorerFooter
from melbo_tui.tui.components.job_screen import JobField, JobForm, JobScreen
from melbo_tui.tui.components.legend import Legend
from melbo_tui.tui.components.line_input import LineInputScreen
from melbo_tui.tui.components.plots_screen import PlotsScreen
from melbo_tui.tui.components.settings_screen import SettingsScreen
from melbo_tui.tui.components.status_bar import StatusBar
from melbo_tui.tui.components.sweep_screen import SweepScreen, sweep_targets
from melbo_tui.tui.components.vector_list import VectorList
from melbo_tui.tui.failures import error_line
from melbo_tui.tui.keymap import LIST_KEYS, MAIN_KEYS, bindings, key_name
from melbo_tui.tui.outputs import free_path, output_path, show_path
from melbo_tui.tui.session import Session
from melbo_tui.tui.settings import ExploreSettings

if TYPE_CHECKING:
    from textual.screen import Screen as AnyScreen

NARROW = 110  # below this many columns the panel goes under the list
SHORT = 30  # below this many lines the bank-wide sparklines give their lines to the list
LIST_ROWS_NARROW = 10  # rows the list keeps when the panel is under it (and at least this share of the height)
MELBO_STEPS = 300
ORTHO_COUNT = 64
MELBO_COUNT = 8
READ_AHEAD = 8  # rows completed ahead of the cursor, in the direction it moves
READ_BEHIND = 2  # and behind it
T = TypeVar("T")


@dataclass(frozen=True)
class ExploreOptions:
    """What `melbo-tui open` asked for; None means "as the first bank was made"."""

    bank_paths: tuple[Path, ...]
    backend: Backend
    prompt: str | None = None
    system: str | None = None
    raw: bool | None = None
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    cache_root: Path | None = None
    debounce: float = 0.25
    workspace: Path = field(default_factory=Path.cwd)  # where jobs and exports write


def nearby_rows(shown: list[int], current: int, direction: int) -> list[int]:
    """The rows to read ahead: the next `READ_AHEAD` in the direction of travel, nearest first, then
    `READ_BEHIND` the other way (list order: the filter and sort the user sees)."""
    if current not in shown:
        return []
    i = shown.index(current)
    step = 1 if direction >= 0 else -1
    ahead = [shown[j] for j in range(i + step, i + step * (READ_AHEAD + 1), step) if 0 <= j < len(shown)]
    behind = [shown[j] for j in range(i - step, i - step * (READ_BEHIND + 1), -step) if 0 <= j < len(shown)]
    return ahead + behind


class MainScreen(Screen[None]):
    BINDINGS = bindings(MAIN_KEYS)

    def __init__(self, options: ExploreOptions) -> None:
        super().__init__()
        self.options = options
        self.session = Session(options.backend, options.cache_root)
        self.view_index = 0
        self.settings: ExploreSettings | None = None
        self._raw_chosen = options.raw is not None  # --raw/--chat, or the settings form: one format for every bank
        self.composition: Composition | None = None  # set by `compose`, cleared when the highlight moves
        self._composed_at: int | None = None  # the row highlighted when `compose` was pressed
        self._measured: set[str] = set()  # digests whose missing KL was already asked for
        self._last_row: int | None = None
        self._direction = 1  # the way the cursor last moved (in list order): where to read ahead

    # ----- layout -------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield BankSparklines(id="sparklines")
                yield Legend(id="legend")
                yield VectorList(id="vectors")
            yield CompletionPanel(self.session, columns=3, debounce=self.options.debounce, id="panel")
        yield StatusBar(id="status")
        yield ExplorerFooter()
        yield Measurer(self.options.backend, id="measurer")
        yield ReadAhead(self.session, id="read-ahead")
        yield JobRunner(id="jobs")

    @property
    def vector_list(self) -> VectorList:
        return self.query_one("#vectors", VectorList)

    @property
    def panel(self) -> CompletionPanel:
        return self.query_one("#panel", CompletionPanel)

    @property
    def status(self) -> StatusBar:
        return self.query_one("#status", StatusBar)

    @property
    def measurer(self) -> Measurer:
        return self.query_one("#measurer", Measurer)

    @property
    def read_ahead(self) -> ReadAhead:
        return self.query_one("#read-ahead", ReadAhead)

    @property
    def jobs(self) -> JobRunner:
        return self.query_one("#jobs", JobRunner)

    @property
    def view(self) -> BankView | None:
        views = self.session.views
        return views[self.view_index] if views else None

    def on_mount(self) -> None:
        status = self.status
        self.watch(self.panel, "streaming", lambda streaming: setattr(status, "generating", streaming))
        self.watch(self.vector_list, "range_anchor", lambda anchor: setattr(status, "range_from", anchor))
        self.watch(self.measurer, "status", lambda line: setattr(status, "metrics", line))
        self.watch(self.read_ahead, "status", lambda line: setattr(status, "read_ahead", line))
        self.watch(self.jobs, "status", lambda line: setattr(status, "job", line))
        self.panel.set_message("loading bank…", "the completion of the highlighted vector streams here")
        self.vector_list.focus()
        self.run_worker(self._load_banks, name="banks", group="banks", description="open the banks", thread=True,
                        exit_on_error=False)

    def on_resize(self, event: events.Resize) -> None:
        self._fit(event.size.width, event.size.height)

    def _fit(self, width: int, height: int) -> None:
        """Wide: the list takes what its columns need (at most 60%), the completions the rest. Narrow:
        the completions go under the list, which keeps `LIST_ROWS_NARROW` rows; short: no sparklines."""
        narrow = width < NARROW
        self.query_one("#main").set_class(narrow, "narrow")
        self.query_one("#sparklines").display = height >= SHORT
        # two lines beside a narrow list, one when it spans the screen; fixed, so the rows never jump as the legend changes
        self.query_one("#legend").styles.height = 1 if narrow else 2
        left = self.query_one("#left")
        if narrow:
            left.styles.width = None
            chrome = 2 + (3 if height >= SHORT else 0)  # legend and table header; sparklines
            left.styles.height = max(LIST_ROWS_NARROW + chrome, (height - 2) * 11 // 20)
        else:
            left.styles.height = None
            left.styles.width = max(56, min(self.vector_list.natural_width(), width * 3 // 5))

    def ask(self, screen: AnyScreen[T], then: Callable[[T], None]) -> None:
        """Push a question; its answer goes to `then`, whose errors become a notification."""

        def answered(result: T | None) -> None:
            try:
                then(result)  # type: ignore[arg-type]
            except Exception as exc:  # a mistake in the answer (or a bug) is one line, never a traceback
                self.notify(error_line(exc), severity="error", timeout=6)

        self.app.push_screen(screen, answered)

    # ----- loading: one handler for the workers of this screen ------------------------------

    @on(Worker.StateChanged)
    def _worker_state(self, event: Worker.StateChanged) -> None:
        worker, state = event.worker, event.state
        if state == WorkerState.SUCCESS:
            if worker.group == "banks":
                views, errors = cast(tuple[list[BankView], list[str]], worker.result)
                self._banks_loaded(views, errors)
            elif worker.group == "model":
                self._model_loaded(str(worker.name), str(worker.result))
        elif state == WorkerState.ERROR:
            line = error_line(worker.error)
            if worker.group == "model":
                self._model_failed(str(worker.name), line)
            else:
                self.notify(line, severity="error", timeout=8)

    def _load_banks(self) -> tuple[list[BankView], list[str]]:
        views: list[BankView] = []
        errors: list[str] = []
        for path in self.options.bank_paths:
            try:
                views.append(open_bank_view(path))
            except Exception as exc:  # one bank that cannot be read does not stop the others
                errors.append(error_line(exc))
        return views, errors

    def _ensure_model(self, view: BankView) -> None:
        """Load the model that serves `view` in the background, once; the status line follows the bank on screen."""
        model = self.session.model_of(view)
        if not (model.loading or model.ready or model.error):
            model.loading = True
            self.run_worker(functools.partial(self.options.backend.load, model.name), name=model.name, group="model",
                            description=f"load {model.name}", thread=True, exit_on_error=False)
        self._show_model_status()

    def _show_model_status(self) -> None:
        view = self.view
        if view is None:
            return
        model = self.session.model_of(view)
        short = model.name.removeprefix("embedded:")
        if model.ready:
            self.status.model, self.status.model_state = f"model: {model.description}", "ready"
        elif model.error is not None:
            self.status.model, self.status.model_state = f"model {short} failed to load", "failed"
        else:
            self.status.model, self.status.model_state = f"loading model {short}…", "loading"

    def _banks_loaded(self, views: list[BankView], errors: list[str]) -> None:
        for error in errors:
            self.notify(error, severity="error", timeout=10)
        if not views:
            self.panel.set_message("no bank could be opened", "\n".join(errors) or "no bank given")
            self.status.bank = "no bank opened"
            return
        self.session.views = views
        meta, o = views[0].bank.meta, self.options
        self.settings = ExploreSettings(
            prompt=o.prompt if o.prompt is not None else (meta.prompts[0] if meta.prompts else "Hello"),
            system=o.system if o.system is not None else meta.system_prompt,
            raw=o.raw if o.raw is not None else meta.raw_prompts,
            generation=o.generation,
        )
        self._settings_changed()
        self.show_view(0)

    def _model_loaded(self, name: str, description: str) -> None:
        model = self.session.models[name]
        model.loading, model.ready, model.description = False, True, description
        self._show_model_status()
        self._check_fits()
        self._measure_missing()
        view = self.view
        if view is not None and self.session.model_of(view) is model:
            self.show_current(immediate=True)

    def _model_failed(self, name: str, line: str) -> None:
        model = self.session.models[name]
        model.loading, model.error = False, line
        self._show_model_status()
        self.notify(f"model {name} failed to load: {line}", severity="error", timeout=12)
        self.show_current()

    def _check_fits(self) -> None:
        for error in self.session.check_fits():
            self.notify(error, severity="error", timeout=10)

    # ----- KL measured in the background ----------------------------------------------------

    def _measure_missing(self) -> None:
        """Measure the KL column each open bank shows first, where the file lacks it (once per bank)."""
        from melbo_tui.kinds import default_kl

        if self.settings is None:
            return
        for view in self.session.views:
            if not self.session.model_of(view).ready:
                continue  # measured once its model has loaded
            if view.has(view.kl_column) or view.digest in self._measured or view.digest in self.session.fit_errors:
                continue
            self._measured.add(view.digest)
            meta = view.bank.meta
            if self.options.prompt is None and not meta.prompts:
                self.notify(f"{view.name} records no prompt: M measures its KL on the current prompt", timeout=8)
                continue
            # the column shown first, and the kind's preferred KL (kl_seq for an ortho bank) once a backend measures it
            names = tuple(dict.fromkeys([view.kl_column, default_kl(view.kind).value, *(["kl_rev"] if view.kl_column == "kl" else [])]))
            if self.options.prompt is not None:  # the user asked for another prompt: measure there
                s = self.settings
                request = MetricsRequest(view.bank, s.prompt, s.system, s.raw, names)
            else:
                request = MetricsRequest(view.bank, meta.prompts[0], meta.system_prompt, meta.raw_prompts, names)
            self.measurer.measure(view, request)

    @on(Measurer.Measured)
    def _measured_values(self, message: Measurer.Measured) -> None:
        view = message.view
        if message.error is not None:
            self.notify(f"KL not measured for {view.name}: {message.error}", severity="warning", timeout=8)
            return
        measured = list(message.values)
        for name in measured:
            view.set_metric(name, message.values[name], message.prompt, message.unsteered.get(name))
        if not measured:
            return
        self.notify(f"{', '.join(title(n) for n in measured)} measured for {view.name} on {message.prompt!r}", timeout=4)
        if view is self.view:
            self.vector_list.refill()
            self.query_one("#sparklines", BankSparklines).set_view(view)
            self.panel.refresh_titles()

    # ----- the list and the panel -----------------------------------------------------------

    def show_view(self, index: int) -> None:
        self.view_index = index
        self.composition = None
        self.read_ahead.stop()
        view = self.session.views[index]
        if self.settings is not None and not self._raw_chosen and self.settings.raw != view.bank.meta.raw_prompts:
            # each bank in the format it was made in (a base model's raw text, a chat model's template),
            # unless --raw/--chat or the settings chose one: its labels and its cache describe that format
            self.settings = replace(self.settings, raw=view.bank.meta.raw_prompts)
        if self.settings is not None:
            self.session.relabel(view, self.settings)
        self.query_one("#sparklines", BankSparklines).set_view(view)
        self.app.sub_title = view.name
        n = len(self.session.views)
        self.status.bank_of = f"{index + 1}/{n}" if n > 1 else ""
        self.status.bank = view.name
        self.vector_list.show_view(view)
        self._fit(self.app.size.width, self.app.size.height)
        self._ensure_model(view)

    def current_target(self) -> Composition | None:
        if self.composition is not None:
            return self.composition
        row = self.vector_list.current_row()
        if row is None or self.settings is None:
            return None
        return self.settings.target((row,))

    def current_request(self) -> CompletionRequest | None:
        """The highlighted vector (or the composition), the unsteered model, and the base where there is one."""
        view, settings, target = self.view, self.settings, self.current_target()
        if view is None or settings is None or target is None:
            return None
        slots = [Slot("steered", target, "steered", describe=True), Slot("unsteered: no vector", UNSTEERED, "unsteered")]
        base = Composition((view.base_index,))
        if view.kind.has_base and target.rows != base.rows:
            slots.append(Slot(f"base: {row_name(view, base)}", base, "base", optional=True))
        return CompletionRequest(view, settings, tuple(slots))

    def show_current(self, immediate: bool = False, force: bool = False) -> None:
        """The panel shows the highlighted vector or the composition, streaming what the cache lacks."""
        self.panel.show(self.current_request(), immediate=immediate, force=force)

    @on(VectorList.Highlighted)
    def _highlighted(self, message: VectorList.Highlighted) -> None:
        if message.row != self.vector_list.current_row() or message.view is not self.view:
            return  # stale: the cursor moved on (keys are handled before the list's messages arrive here)
        self.query_one("#sparklines", BankSparklines).cursor = message.row
        shown = self.vector_list.shown_rows()
        if self._last_row in shown and message.row in shown and self._last_row != message.row:
            self._direction = 1 if shown.index(message.row) > shown.index(self._last_row) else -1
        self._last_row = message.row
        if self.composition is not None and message.row == self._composed_at:
            return  # the move that came before `compose`, arriving after it: the composition stays
        self.composition = None
        self.show_current()

    @on(CompletionPanel.Idle)
    def _panel_idle(self, message: CompletionPanel.Idle) -> None:
        """The completions on screen are done: the model is free to read ahead of the cursor."""
        if message.panel is not self.panel:
            return
        request = self.panel.request
        if request is not None:  # a row completed here has its label on these settings now: the list shows it too
            self.vector_list.refresh_labels(s.target.rows[0] for s in request.slots if len(s.target.rows) == 1)
        self._aim_read_ahead()

    def _aim_read_ahead(self) -> None:
        view, s, row = self.view, self.settings, self.vector_list.current_row()
        if view is None or s is None or row is None or not self.session.model_of(view).ready:
            return
        rows = nearby_rows(self.vector_list.shown_rows(), row, self._direction)
        self.read_ahead.aim(view, s, [s.target((r,)) for r in rows])

    @on(ReadAhead.Ready)
    def _read_ahead_ready(self, message: ReadAhead.Ready) -> None:
        if message.view is self.view and len(message.target.rows) == 1:
            self.vector_list.refresh_labels(message.target.rows)

    @on(VectorList.SelectionChanged)
    def _selection_changed(self, message: VectorList.SelectionChanged) -> None:
        self.status.selected = len(message.selected)

    @on(VectorList.Listed)
    def _listed(self, message: VectorList.Listed) -> None:
        if message.view is not self.view:
            return  # a late word about a bank no longer on screen: the status line describes this one
        vl = message.vector_list
        self.status.bank = message.view.name
        self.status.rows = (message.shown, message.total)
        self.status.filter = vl.filter_text
        self.status.sort = f"{vl.sort_key}{' ↓' if vl.sort_reverse else ''}"
        self._show_legend()
        if message.shown == 0:
            self.panel.set_message("no row matches the filter", "/ then enter on an empty line clears it")
        self._fit(self.app.size.width, self.app.size.height)

    def _show_legend(self) -> None:
        view, vl = self.view, self.vector_list
        if view is None:
            return
        column = vl.sort_key if vl.sort_key in view.columns() else view.kl_column
        self.query_one("#legend", Legend).show(view, column, self.settings.prompt if self.settings else None)

    def _settings_changed(self) -> None:
        s = self.settings
        if s is None:
            return
        self.status.mode, self.status.scale = s.mode.value, s.scale
        if self.composition is not None:
            self.composition = replace(self.composition, mode=s.mode, scale=s.scale)
        view = self.view
        if view is not None:
            self.session.relabel(view, s)
        self.vector_list.prompt = s.prompt
        if view is not None and self.vector_list.view is view:
            self.vector_list.refill()

    def _need_view(self) -> tuple[BankView, ExploreSettings]:
        view, s = self.view, self.settings
        if view is None or s is None:
            raise MelboError("no bank open yet")
        return view, s

    # ----- actions: the list ----------------------------------------------------------------

    def action_stop(self) -> None:
        if self.panel.stop(quiet=False):
            self.notify("generation stopped", timeout=2)
        self.panel.forget()  # moving back here (or pressing r) streams again

    def action_jump(self) -> None:
        view, _ = self._need_view()
        n = len(view)
        self.ask(LineInputScreen(f"Jump to a vector index: 0..{n - 1} (negative counts from the end)", "", f"e.g. {n // 2}"),
                 self._jump)

    def _jump(self, text: str | None) -> None:
        if text is not None:
            self.vector_list.jump(text)

    def action_filter(self) -> None:
        view, _ = self._need_view()
        fields = ", ".join(["idx", "label", "sel", *(c.replace("cos_base", "cos") for c in view.columns())])
        self.ask(LineInputScreen(f"Filter (empty clears), e.g. {view.kl_column}<0.1, label=code, label~cod (contains), "
                                 f"norm>20 and idx<100; fields: {fields}", self.vector_list.filter_text,
                                 f"{view.kl_column}<0.1"), self._filter)

    def _filter(self, text: str | None) -> None:
        if text is None:
            return
        self.vector_list.apply_filter(text)
        if self.vector_list.row_count == 0:
            self.notify(f"no vector matches '{text.strip()}'", severity="warning", timeout=4)

    def action_next_bank(self) -> None:
        if len(self.session.views) < 2:
            raise MelboError("only one bank is open (melbo-tui open A.safetensors B.safetensors opens several)")
        self.panel.stop()
        self.show_view((self.view_index + 1) % len(self.session.views))

    def action_columns(self) -> None:
        view, s = self._need_view()
        row = self.vector_list.current_row()
        self.app.push_screen(ColumnsScreen(view, view.base_index if row is None else row, s.prompt))

    # ----- actions: compose and complete ---------------------------------------------------

    def action_compose(self) -> None:
        _, s = self._need_view()
        selected = self.vector_list.selected
        if not selected:
            raise MelboError(f"nothing selected: press {key_name('space')} on vectors (or v for a range) first")
        self.composition = s.target(tuple(sorted(selected)))
        self._composed_at = self.vector_list.current_row()
        self.show_current(immediate=True)

    def action_mode(self) -> None:
        _, s = self._need_view()
        modes = list(ComposeMode)
        self.settings = s.with_mode(modes[(modes.index(s.mode) + 1) % len(modes)])
        self._settings_changed()
        self.show_current()
        self.notify(f"composition mode: {self.settings.mode.value}", timeout=2)

    def action_scale(self, delta: float) -> None:
        _, s = self._need_view()
        self.settings = replace(s, scale=round(s.scale + delta, 4))
        self._settings_changed()
        self.show_current()

    def action_scale_reset(self) -> None:
        _, s = self._need_view()
        self.settings = replace(s, scale=1.0)
        self._settings_changed()
        self.show_current()

    def action_regenerate(self) -> None:
        self.show_current(immediate=True, force=True)

    def action_copy(self) -> None:
        copy_completion(self.panel)

    def action_settings(self) -> None:
        _, s = self._need_view()
        self.ask(SettingsScreen(s), self._apply_settings)

    def _apply_settings(self, settings: ExploreSettings | None) -> None:
        if settings is not None and settings != self.settings:
            if self.settings is not None and settings.raw != self.settings.raw:
                self._raw_chosen = True  # the user's format now holds for every bank
            self.settings = settings
            self._settings_changed()
            self.show_current(immediate=True)

    def action_compare(self) -> None:
        view, s = self._need_view()
        target = self.current_target()
        if target is None:
            raise MelboError("no vector highlighted")
        request = CompletionRequest(view, s, comparison_slots(view, target, self.vector_list.selected))
        self.panel.stop()
        self.panel.forget()
        self.read_ahead.stop()
        caption = f"Compare on {view.name} ({len(request.slots)} columns; left/right or tab to switch, y copies, escape goes back)"
        self.app.push_screen(CompareScreen(self.session, request, caption), lambda _: self.show_current())

    def action_sweep(self) -> None:
        view, s = self._need_view()
        targets = sweep_targets(len(view), view.base_index, s.mode, s.scale)
        if not targets:
            raise MelboError("the bank has no vectors besides the base")
        self.panel.stop()
        self.panel.forget()
        self.read_ahead.stop()
        g = s.generation
        caption = (f"Sweep on {view.name}: {s.mode.value} of the first k vectors (base row {view.base_index} excluded), "
                   f"scale x{s.scale:g}, prompt {s.prompt!r}, T={g.temperature:g}, seed {g.seed}")
        self.app.push_screen(SweepScreen(self.session, view, s, targets, caption), lambda _: self.show_current())

    def action_plots(self) -> None:
        view, _ = self._need_view()
        row = self.vector_list.current_row()
        self.app.push_screen(PlotsScreen(view, row or 0, self.vector_list.move_to))

    # ----- export: what the screen shows ----------------------------------------------------

    def export_records(self) -> list[ExportRecord]:
        """The completions on screen: the rows the list shows (in its order) whose completion on these
        settings is made, then the composition shown, the unsteered model and the base."""
        view, s = self._need_view()
        records: list[ExportRecord] = []
        shown_columns = [c for c in self.vector_list.columns_shown if c in view.values]
        for row in self.vector_list.shown_rows():
            entry = self.session.cached(view, s.target((row,)), s)
            if entry is not None:
                label, current = view.label(row)
                metrics = {c: view.value(c, row) for c in shown_columns if view.value(c, row) == view.value(c, row)}
                records.append(ExportRecord(s.target((row,)).label, row, label if current else "", metrics, entry.text,
                                            entry.num_tokens))
        extra = [*([self.composition] if self.composition is not None else []), UNSTEERED,
                 *([Composition((view.base_index,))] if view.kind.has_base else [])]
        for target in extra:
            entry = self.session.cached(view, target, s)
            if entry is not None:
                name = "base: " + target.label if target.rows == (view.base_index,) and view.kind.has_base else target.label
                records.append(ExportRecord(name, None, "", {}, entry.text, entry.num_tokens))
        return records

    def action_export(self) -> None:
        view, s = self._need_view()
        records = self.export_records()
        if not records:
            raise MelboError("no completion on this prompt and settings yet: nothing to export")
        default = free_path(self.options.workspace, f"{view.path.stem}.completions", (".jsonl", ".txt"))
        rows = sum(r.row is not None for r in records)
        self.ask(LineInputScreen(f"Export {len(records)} completions on {s.prompt!r}: the {rows} of the "
                                 f"{self.vector_list.row_count} listed rows made on this prompt, then what else is shown "
                                 "(composition, unsteered, base); JSONL and a .txt beside it, relative to the workspace",
                                 show_path(default, self.options.workspace), "file name"),
                 functools.partial(self._export, view, records))

    def _export(self, view: BankView, records: list[ExportRecord], text: str | None) -> None:
        if text is None or not text.strip():
            return
        workspace = self.options.workspace
        name = text.strip().removesuffix(".jsonl").removesuffix(".txt")  # the two files share a name
        jsonl, readable = output_path(workspace, name + ".jsonl"), output_path(workspace, name + ".txt")
        s = self.settings
        assert s is not None
        g = s.generation
        heading: dict[str, object] = {"bank": str(view.path.resolve()), "model": self.options.backend.model_for(view.bank),
                                      "prompt": s.prompt, "system": s.system, "raw": s.raw, "max_new_tokens": g.max_new_tokens,
                                      "temperature": g.temperature, "seed": g.seed, "scale": s.scale}
        write_completions(jsonl, readable, heading, records)
        self.notify(f"exported {len(records)} completions to {jsonl.resolve()} and {readable.name}", timeout=8)

    def action_measure(self) -> None:
        from melbo_tui.kinds import Metric, default_kl

        view, s = self._need_view()
        model = self.session.model_of(view)
        if not model.ready:
            raise MelboError(model.error or f"the model {model.name} is still loading")
        shown = [c for c in view.columns() if Metric(c).needs_model]
        names = tuple(dict.fromkeys([view.kl_column, default_kl(view.kind).value, *shown]))
        self.notify(f"measuring {', '.join(title(n) for n in names)} of {view.name} on {s.prompt!r} in the background", timeout=4)
        self.measurer.measure(view, MetricsRequest(view.bank, s.prompt, s.system, s.raw, names))

    # ----- background jobs: MELBO-ortho and MELBO -------------------------------------------

    def _check_job_can_start(self, view: BankView) -> None:
        """A background job needs the model, no other job, and a bank that fits the model."""
        model = self.session.model_of(view)
        if not model.ready:
            raise MelboError(model.error or f"the model {model.name} is still loading")
        if self.jobs.running:
            raise MelboError("a background job is already running (O stops it)")
        if view.digest in self.session.fit_errors:
            raise MelboError(self.session.fit_errors[view.digest])

    def action_ortho(self) -> None:
        view, s = self._need_view()
        row = self.vector_list.current_row()
        if row is None:
            raise MelboError("no vector highlighted")
        self._check_job_can_start(view)
        meta = view.bank.meta
        if not meta.prompts:
            raise MelboError(f"{view.name} records no prompt to run MELBO-ortho on")
        workspace = self.options.workspace
        default = free_path(workspace, f"{view.path.stem}.ortho-from{row}")
        prompt = meta.prompts[0] if len(meta.prompts) == 1 else f"{meta.prompts[0]!r} and {len(meta.prompts) - 1} more"
        note = "" if meta.prompts[0] == s.prompt else f" (the bank's; you are completing {s.prompt!r})"
        bank_path = view.path
        model = self.options.backend.model_for(view.bank)

        def build(values: dict[str, str]) -> Job:
            count = _whole(values["count"], "the number of vectors")
            if not 0 < count < view.bank.hidden_size:
                raise InputError(f"the number of vectors must be 1..{view.bank.hidden_size - 1} (d_model - 1)")
            words = values["objective"].strip().lower()
            if words not in Objective.__members__.values():
                raise InputError(f"the objective must be {', '.join(Objective)} (docs/melbo.md says what each compares), got {words!r}")
            return OrthoJob(model, view.bank, bank_path, row, count, output_path(workspace, values["out"]), Objective(words))

        form = JobForm(
            title=f"MELBO-ortho from vector {row} of {view.name}: vectors orthogonal to it with its effect",
            facts=(("prompt", f"{prompt!r}{note}" if len(meta.prompts) == 1 else prompt + note),
                   ("layers", f"{meta.source_layer} -> {meta.target_layer} · 60 L-BFGS evaluations per vector · "
                              "then every row measured")),
            fields=(JobField("count", "vectors", str(min(ORTHO_COUNT, view.bank.hidden_size - 1))),
                    JobField("objective", "objective", Objective.CONTINUATION.value),
                    JobField("out", "output", show_path(default, workspace))),
            build=build, count=lambda job: cast(OrthoJob, job).count)
        self.ask(JobScreen(form, self.options.backend, workspace), functools.partial(self._start_job, view))

    def action_train(self) -> None:
        view, s = self._need_view()
        self._check_job_can_start(view)
        meta = view.bank.meta
        row = self.vector_list.current_row()
        # the bank's R; a bank that records none: the highlighted vector's norm (in this model's units, like R)
        radius = meta.radius or float(f"{float(view.bank.vectors[view.base_index if row is None else row].norm()):.3g}")
        workspace = self.options.workspace
        default = free_path(workspace, f"{view.path.stem}.melbo-L{meta.source_layer}-R{radius:g}")

        def build(values: dict[str, str]) -> Job:
            count = _whole(values["count"], "the number of vectors")
            steps = _whole(values["steps"], "the number of steps")
            if not 0 < count <= view.bank.hidden_size:
                raise InputError(f"the number of vectors must be 1..{view.bank.hidden_size} (d_model)")
            if steps <= 0:
                raise InputError("the number of steps must be positive")
            return MelboJob(model=self.options.backend.model_for(view.bank), prompt=s.prompt, system=s.system, raw=s.raw,
                            source_layer=meta.source_layer,
                            target_layer=meta.target_layer, radius=radius, out=output_path(workspace, values["out"]),
                            count=count, steps=steps, batch_vectors=min(4, count))

        form = JobForm(
            title=f"MELBO: new vectors on the prompt being completed, with {view.name}'s layers and radius",
            facts=(("prompt", repr(s.prompt) + (f" · system {s.system!r}" if s.system is not None else "")),
                   ("layers", f"{meta.source_layer} -> {meta.target_layer} · R = {radius:g} · 4 vectors per batch")),
            fields=(JobField("count", "vectors", str(MELBO_COUNT)), JobField("steps", "steps", str(MELBO_STEPS)),
                    JobField("out", "output", show_path(default, workspace))),
            build=build, count=lambda job: cast(MelboJob, job).count)
        self.ask(JobScreen(form, self.options.backend, workspace), functools.partial(self._start_job, view))

    def _start_job(self, view: BankView, job: Job | None) -> None:
        if job is None:
            return
        self._check_job_can_start(view)
        backend = self.options.backend
        where = show_path(job.out, self.options.workspace)
        if isinstance(job, OrthoJob):
            self.notify(f"MELBO-ortho from vector {job.base_index}: {job.count} vectors into {where}; "
                        "its bank opens after the first vector", timeout=6)
            self.jobs.start("ortho", job.out, lambda progress, stop: backend.run_ortho(job, progress, stop))
        else:
            self.notify(f"MELBO: {job.count} vectors on {job.prompt!r} into {where}; its bank opens after the first batch",
                        timeout=6)
            self.jobs.start("melbo", job.out, lambda progress, stop: backend.run_melbo(job, progress, stop))

    @on(JobRunner.Checkpoint)
    def _job_checkpoint(self, message: JobRunner.Checkpoint) -> None:
        new = message.view
        index = self.session.replace_or_add(new)
        if index is None:
            if self.settings is not None:
                self.session.relabel(new, self.settings)
            self.notify(f"opened {new.name}: it fills in as vectors are saved (n switches banks)", timeout=6)
            self.status.bank_of = f"{self.view_index + 1}/{len(self.session.views)}"
        elif index == self.view_index:
            if self.settings is not None:
                self.session.relabel(new, self.settings)
            self.query_one("#sparklines", BankSparklines).set_view(new)
            self.vector_list.show_view(new)  # the same bank grown: the highlight stays where the user left it

    @on(JobRunner.Done)
    def _job_done(self, message: JobRunner.Done) -> None:
        what = "MELBO-ortho" if message.name == "ortho" else "MELBO"
        if message.error is not None:
            self.notify(f"{what} failed: {message.error}", severity="error", timeout=10)
            return
        self.notify(message.summary or f"{what} finished", timeout=8)
        self._measure_missing()

    def action_stop_job(self) -> None:
        self.jobs.stop()

    # ----- the command palette --------------------------------------------------------------

    def palette_commands(self) -> Iterable[SystemCommand]:
        """Every key of this screen and of the list, by name."""
        for spec in MAIN_KEYS:
            yield SystemCommand(spec.description.split(":")[0], f"key {key_name(spec.keys)}",
                                functools.partial(self.run_action, spec.action))
        for spec in LIST_KEYS:
            yield SystemCommand(spec.description.split(":")[0], f"key {key_name(spec.keys)}",
                                functools.partial(self.vector_list.run_action, spec.action))


def _whole(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise InputError(f"{what}: '{text.strip()}' is not a whole number") from None
