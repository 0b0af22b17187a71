"""The explorer's main screen: the vector list on the left, the highlighted vector's completion on the right.

The screen wires widgets that own their state: the list (cursor, selection, filter, sort), the
completion panel (generations and streaming), the status bar (reactive fields). What belongs to
no widget lives here: which banks are open (`Session`), the prompt and decoding settings, the
composition being shown, and the background work that outlives a key press (loading banks and
the model, measuring KL, MELBO and MELBO-ortho jobs). That work runs in thread workers of this
screen or of its invisible `Measurer` and `JobRunner`; each owner has one `Worker.StateChanged`
handler, the one place its results and failures arrive.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

from textual import events, on
from textual.app import ComposeResult, SystemCommand
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer
from textual.worker import Worker, WorkerState

from melbo_tui.compose import ComposeMode, Composition
from melbo_tui.decoding import GenerationSettings
from melbo_tui.errors import MelboError
from melbo_tui.tui.backend import Backend, MelboJob, MetricsRequest
from melbo_tui.tui.bankview import BankView, open_bank_view, title
from melbo_tui.tui.components.background import JobRunner, Measurer
from melbo_tui.tui.components.bank_sparklines import BankSparklines
from melbo_tui.tui.components.compare_screen import CompareScreen, comparison_slots
from melbo_tui.tui.components.completion_panel import CompletionPanel, CompletionRequest, Slot
from melbo_tui.tui.components.line_input import LineInputScreen
from melbo_tui.tui.components.plots_screen import PlotsScreen
from melbo_tui.tui.components.settings_screen import SettingsScreen
from melbo_tui.tui.components.status_bar import StatusBar
from melbo_tui.tui.components.sweep_screen import SweepScreen, sweep_targets
from melbo_tui.tui.components.vector_list import VectorList
from melbo_tui.tui.failures import error_line
from melbo_tui.tui.keymap import LIST_KEYS, MAIN_KEYS, bindings
from melbo_tui.tui.session import Session
from melbo_tui.tui.settings import ExploreSettings

if TYPE_CHECKING:
    from textual.screen import Screen as AnyScreen

NARROW = 110  # below this many columns the panel goes under the list
MELBO_RADIUS = 15.0  # when the bank records none: `train`'s default (calibrate's choice on the embedded model)
MELBO_STEPS = 300
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


def export_paths(text: str, beside: Path) -> tuple[Path, Path]:
    """The JSONL file a user named and its readable twin; refused before anything is written.

    A relative path is taken from the bank's folder (`beside`), never from the working directory.
    """
    path = beside / Path(text.strip()).expanduser()  # an absolute path stays as it is
    if path.is_dir():
        raise MelboError(f"{path} is a directory: give a file name")
    if not path.parent.is_dir():
        raise MelboError(f"{path.parent} does not exist: give a path in an existing directory")
    if not os.access(path.parent, os.W_OK):
        raise MelboError(f"{path.parent} is not writable: give another path")
    return path.with_suffix(".jsonl"), path.with_suffix(".txt")


class MainScreen(Screen[None]):
    BINDINGS = bindings(MAIN_KEYS)

    def __init__(self, options: ExploreOptions) -> None:
        super().__init__()
        self.options = options
        self.session = Session(options.backend, options.cache_root)
        self.view_index = 0
        self.settings: ExploreSettings | None = None
        self.composition: Composition | None = None  # set by `compose`, cleared when the highlight moves
        self._composed_at: int | None = None  # the row highlighted when `compose` was pressed
        self._measured: set[str] = set()  # digests whose missing KL was already asked for

    # ----- layout -------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield BankSparklines(id="sparklines")
                yield VectorList(id="vectors")
            yield CompletionPanel(self.session, debounce=self.options.debounce, id="panel")
        yield StatusBar(id="status")
        yield Footer()
        yield Measurer(self.options.backend, id="measurer")
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
        self.watch(self.jobs, "status", lambda line: setattr(status, "job", line))
        self.panel.set_message("loading bank…", "the completion of the highlighted vector streams here")
        self.vector_list.focus()
        self.run_worker(self._load_banks, name="banks", group="banks", description="open the banks", thread=True,
                        exit_on_error=False)
        self.run_worker(self._load_model, name="model", group="model", description="load the model", thread=True,
                        exit_on_error=False)

    def on_resize(self, event: events.Resize) -> None:
        self._fit(event.size.width)

    def _fit(self, width: int) -> None:
        narrow = width < NARROW
        self.query_one("#main").set_class(narrow, "narrow")
        left = self.query_one("#left")
        left.styles.width = None if narrow else max(60, min(self.vector_list.natural_width(), width * 2 // 3))

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
                self._model_loaded(str(worker.result))
        elif state == WorkerState.ERROR:
            line = error_line(worker.error)
            if worker.group == "model":
                self._model_failed(line)
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

    def _load_model(self) -> str:
        return self.options.backend.load()

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
        if self.session.model.ready:
            self._check_fits()
        self.show_view(0)
        self._measure_missing()

    def _model_loaded(self, description: str) -> None:
        model = self.session.model
        model.ready, model.description = True, description
        self.status.model, self.status.model_state = f"model: {description}", "ready"
        if self.session.views:
            self._check_fits()
            self._measure_missing()
            self.show_current(immediate=True)

    def _model_failed(self, line: str) -> None:
        self.session.model.error = line
        self.status.model, self.status.model_state = "model failed to load", "failed"
        self.notify(f"model failed to load: {line}", severity="error", timeout=12)
        self.show_current()

    def _check_fits(self) -> None:
        for error in self.session.check_fits():
            self.notify(error, severity="error", timeout=10)

    # ----- KL measured in the background ----------------------------------------------------

    def _measure_missing(self) -> None:
        """Measure the KL column each open bank shows first, where the file lacks it (once per bank)."""
        from melbo_tui.kinds import default_kl

        if not self.session.model.ready or self.settings is None:
            return
        for view in self.session.views:
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
            view.set_metric(name, message.values[name], message.prompt)
        if not measured:
            return
        self.notify(f"{', '.join(title(n) for n in measured)} measured for {view.name} on {message.prompt!r}", timeout=4)
        if view is self.view:
            self.vector_list.refill()
            self.query_one("#sparklines", BankSparklines).set_view(view)
            self.panel.refresh_header()

    # ----- the list and the panel -----------------------------------------------------------

    def show_view(self, index: int) -> None:
        self.view_index = index
        self.composition = None
        view = self.session.views[index]
        self.query_one("#sparklines", BankSparklines).set_view(view)
        self.app.sub_title = view.name
        self.status.bank = view.name
        n = len(self.session.views)
        self.status.bank_of = f"{index + 1}/{n}" if n > 1 else ""
        self.vector_list.show_view(view)
        self._fit(self.app.size.width)

    def current_target(self) -> Composition | None:
        if self.composition is not None:
            return self.composition
        row = self.vector_list.current_row()
        if row is None or self.settings is None:
            return None
        return self.settings.target((row,))

    def current_request(self) -> CompletionRequest | None:
        view, settings, target = self.view, self.settings, self.current_target()
        if view is None or settings is None or target is None:
            return None
        return CompletionRequest(view, settings, (Slot("steered", target),))

    def show_current(self, immediate: bool = False, force: bool = False) -> None:
        """The panel shows the highlighted vector or the composition, streaming what the cache lacks."""
        self.panel.show(self.current_request(), immediate=immediate, force=force)

    @on(VectorList.Highlighted)
    def _highlighted(self, message: VectorList.Highlighted) -> None:
        if message.row != self.vector_list.current_row():
            return  # stale: the cursor moved on (keys are handled before the list's messages arrive here)
        self.query_one("#sparklines", BankSparklines).cursor = message.row
        if self.composition is not None and message.row == self._composed_at:
            return  # the move that came before `compose`, arriving after it: the composition stays
        self.composition = None
        self.show_current()

    @on(VectorList.SelectionChanged)
    def _selection_changed(self, message: VectorList.SelectionChanged) -> None:
        self.status.selected = len(message.selected)

    @on(VectorList.Listed)
    def _listed(self, message: VectorList.Listed) -> None:
        vl = message.vector_list
        self.status.rows = (message.shown, message.total)
        self.status.filter = vl.filter_text
        self.status.sort = f"{vl.sort_key}{' ↓' if vl.sort_reverse else ''}"
        if message.shown == 0:
            self.panel.set_message("no row matches the filter", "/ then enter on an empty line clears it")
        self._fit(self.app.size.width)

    def _settings_changed(self) -> None:
        s = self.settings
        if s is not None:
            self.status.mode, self.status.scale = s.mode.value, s.scale
            if self.composition is not None:
                self.composition = replace(self.composition, mode=s.mode, scale=s.scale)

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
        self.ask(LineInputScreen(f"Filter (empty clears), e.g. {view.kl_column}<0.1, label=code, norm>20 and idx<100; "
                                 f"fields: {fields}", self.vector_list.filter_text, f"{view.kl_column}<0.1"), self._filter)

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

    # ----- actions: compose and complete ---------------------------------------------------

    def action_compose(self) -> None:
        _, s = self._need_view()
        selected = self.vector_list.selected
        if not selected:
            raise MelboError("nothing selected: press space on vectors (or v for a range) first")
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

    def action_settings(self) -> None:
        _, s = self._need_view()
        self.ask(SettingsScreen(s), self._apply_settings)

    def _apply_settings(self, settings: ExploreSettings | None) -> None:
        if settings is not None and settings != self.settings:
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
        caption = f"Compare on {view.name} ({len(request.slots)} columns; left/right or tab to switch, escape to go back)"
        self.app.push_screen(CompareScreen(self.session, request, caption), lambda _: self.show_current())

    def action_sweep(self) -> None:
        view, s = self._need_view()
        targets = sweep_targets(len(view), view.base_index, s.mode, s.scale)
        if not targets:
            raise MelboError("the bank has no vectors besides the base")
        self.panel.stop()
        self.panel.forget()
        g = s.generation
        caption = (f"Sweep on {view.name}: {s.mode.value} of the first k vectors (base row {view.base_index} excluded), "
                   f"scale x{s.scale:g}, prompt {s.prompt!r}, T={g.temperature:g}, seed {g.seed}")
        self.app.push_screen(SweepScreen(self.session, view, s, targets, caption), lambda _: self.show_current())

    def action_plots(self) -> None:
        view, _ = self._need_view()
        row = self.vector_list.current_row()
        self.app.push_screen(PlotsScreen(view, row or 0, self.vector_list.move_to))

    def action_export(self) -> None:
        view, _ = self._need_view()
        cache = self.session.cache_for(view)
        if not len(cache):
            raise MelboError("no completion generated yet for this bank")
        default = view.path.resolve().with_name(f"{view.path.stem}.completions.jsonl")
        self.ask(LineInputScreen(f"Export the {len(cache)} completions of {view.name} to (JSONL, and a .txt beside it; "
                                 "a relative path is in the bank's folder)",
                                 str(default), str(default)), functools.partial(self._export, view))

    def _export(self, view: BankView, text: str | None) -> None:
        if text is None or not text.strip():
            return
        jsonl, readable = export_paths(text, view.path.resolve().parent)
        cache = self.session.cache_for(view)
        for path in (jsonl, readable):
            cache.export(path)
        self.notify(f"exported {len(cache)} completions to {jsonl} and {readable.name}", timeout=8)

    def action_measure(self) -> None:
        from melbo_tui.kinds import Metric, default_kl

        view, s = self._need_view()
        if not self.session.model.ready:
            raise MelboError(self.session.model.error or "the model is still loading")
        shown = [c for c in view.columns() if Metric(c).needs_model]
        names = tuple(dict.fromkeys([view.kl_column, default_kl(view.kind).value, *shown]))
        self.notify(f"measuring {', '.join(title(n) for n in names)} of {view.name} on {s.prompt!r} in the background", timeout=4)
        self.measurer.measure(view, MetricsRequest(view.bank, s.prompt, s.system, s.raw, names))

    # ----- background jobs: MELBO-ortho and MELBO -------------------------------------------

    def _check_job_can_start(self, view: BankView) -> None:
        """A background job needs the model, no other job, and a bank that fits the model."""
        if not self.session.model.ready:
            raise MelboError(self.session.model.error or "the model is still loading")
        if self.jobs.running:
            raise MelboError("a background job is already running (O stops it)")
        if view.digest in self.session.fit_errors:
            raise MelboError(self.session.fit_errors[view.digest])

    def action_ortho(self) -> None:
        view, _ = self._need_view()
        row = self.vector_list.current_row()
        if row is None:
            raise MelboError("no vector highlighted")
        self._check_job_can_start(view)
        self.ask(LineInputScreen(f"MELBO-ortho from vector {row} of {view.name}: how many orthogonal vectors?", "64", "e.g. 64"),
                 functools.partial(self._start_ortho, view, row))

    def _start_ortho(self, view: BankView, row: int, text: str | None) -> None:
        if text is None or not text.strip():
            return
        try:
            count = int(text.strip())
        except ValueError:
            raise MelboError(f"'{text.strip()}' is not a number of vectors") from None
        if not 0 < count < view.bank.hidden_size:
            raise MelboError(f"the count must be 1..{view.bank.hidden_size - 1} (d_model - 1)")
        self._check_job_can_start(view)
        out = ortho_output_path(view.path, row)
        backend = self.options.backend
        self.notify(f"MELBO-ortho from vector {row}: {count} vectors into {out}", timeout=5)
        self.jobs.start("ortho", out, lambda progress, stop: backend.run_ortho(view.bank, view.path, row, count, out, progress, stop))

    def action_train(self) -> None:
        view, s = self._need_view()
        self._check_job_can_start(view)
        meta = view.bank.meta
        radius = meta.radius if meta.radius else MELBO_RADIUS
        self.ask(LineInputScreen(f"MELBO on {s.prompt!r}, layers {meta.source_layer}->{meta.target_layer}, R={radius:g}: "
                                 f"how many vectors [and steps, default {MELBO_STEPS}]?", "8", "e.g. 8 or 8 100"),
                 functools.partial(self._start_melbo, view, radius))

    def _start_melbo(self, view: BankView, radius: float, text: str | None) -> None:
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
        self._check_job_can_start(view)
        s, meta = self.settings, view.bank.meta
        job = MelboJob(prompt=s.prompt, system=s.system, raw=s.raw, source_layer=meta.source_layer,
                       target_layer=meta.target_layer, radius=radius, count=count, steps=steps, batch_vectors=min(4, count))
        out = melbo_output_path(view.path, meta.source_layer, radius)
        backend = self.options.backend
        self.notify(f"MELBO: {count} vectors on {s.prompt!r} into {out}; its bank opens after the first batch", timeout=6)
        self.jobs.start("melbo", out, lambda progress, stop: backend.run_melbo(job, out, progress, stop))

    @on(JobRunner.Checkpoint)
    def _job_checkpoint(self, message: JobRunner.Checkpoint) -> None:
        new = message.view
        index = self.session.replace_or_add(new)
        if index is None:
            self.notify(f"opened {new.name}: it fills in as blocks are saved (n switches banks)", timeout=6)
            self.status.bank_of = f"{self.view_index + 1}/{len(self.session.views)}"
        elif index == self.view_index:
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
            yield SystemCommand(spec.description.split(":")[0], f"key: {spec.keys} ({spec.id})",
                                functools.partial(self.run_action, spec.action))
        for spec in LIST_KEYS:
            yield SystemCommand(spec.description.split(":")[0], f"key: {spec.keys} ({spec.id})",
                                functools.partial(self.vector_list.run_action, spec.action))
