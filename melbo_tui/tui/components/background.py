"""Work that outlives a key press, each kind owned by one invisible widget of the main screen.

`Measurer` measures bank metrics, one request at a time, in the order asked. `JobRunner` runs
one bank-making job (MELBO-ortho, MELBO) and reopens its bank at every checkpoint. `ReadAhead`
completes the rows around the cursor while the user reads, at the lowest priority. Each runs
its thread workers on itself, so they end with the screen; reports progress as a reactive
`status` line (the status bar watches it); and posts what it produced as a message. Each has
one `Worker.StateChanged` handler, the only place its failures arrive.

A worker's own messages travel through `call_soon_threadsafe`, and its state change does not:
`SUCCESS` can overtake the last progress message, so what ends a piece of work is a message the
worker posts last, never the state change.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from textual import on
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget
from textual.worker import Worker, WorkerState, get_current_worker

from melbo_tui.compose import Composition
from melbo_tui.errors import MelboError
from melbo_tui.tui.backend import Backend, JobProgress, MeasuredColumns, MetricsRequest, OnJobProgress, ShouldStop
from melbo_tui.tui.bankview import BankView, open_bank_view, title
from melbo_tui.tui.failures import error_line
from melbo_tui.tui.session import Session
from melbo_tui.tui.settings import ExploreSettings

JobRun = Callable[[OnJobProgress, ShouldStop], str]


class Measurer(Widget):
    DEFAULT_CSS = "Measurer { display: none; }"

    status: reactive[str] = reactive("")  # "measuring KL 32/576", "KL unavailable" or ""

    @dataclass
    class Measured(Message):
        """`values` (complete columns only) of `view` and the unsteered model's, measured on `prompt`;
        `error` when it could not be."""

        measurer: Measurer
        view: BankView
        values: dict[str, list[float]]
        unsteered: dict[str, float]
        prompt: str
        error: str | None

        @property
        def control(self) -> Measurer:
            return self.measurer

    @dataclass
    class _Progress(Message):
        done: int
        total: int

    def __init__(self, backend: Backend, id: str | None = None) -> None:
        super().__init__(id=id)
        self._backend = backend
        self._queue: list[tuple[BankView, MetricsRequest]] = []
        self._busy = False  # a measurement runs (its worker may still say RUNNING after its last message)

    def measure(self, view: BankView, request: MetricsRequest) -> None:
        """Measure after what is already asked for."""
        self._queue.append((view, request))
        self._next()

    def _next(self) -> None:
        if self._busy or not self._queue:
            return
        self._busy = True
        view, request = self._queue.pop(0)
        self.status = f"measuring {title(request.names[0])} 0/{len(view)}"
        self.run_worker(functools.partial(self._measure, view, request), name="metrics", group="metrics",
                        description=f"measure {', '.join(request.names)} of {view.name}", thread=True, exit_on_error=False)

    def _measure(self, view: BankView, request: MetricsRequest) -> None:
        worker = get_current_worker()
        last = [0.0]

        def progress(done: int, total: int) -> None:
            now = time.perf_counter()
            if now - last[0] > 0.3 or done == total:
                last[0] = now
                self.post_message(self._Progress(done, total))

        try:
            measured: MeasuredColumns = self._backend.metrics(request, lambda: worker.is_cancelled, progress)
        except MelboError as exc:  # this bank cannot be measured (no prompt, wrong shape): the next one may
            self.post_message(self.Measured(self, view, {}, {}, request.prompt, error_line(exc)))
            return
        complete = {name: v for name, v in measured.values.items() if len(v) == len(view)}
        self.post_message(self.Measured(self, view, complete, measured.unsteered, request.prompt, None))

    @on(_Progress)
    def _progress(self, message: _Progress) -> None:
        if self.status.startswith("measuring"):  # not a late one, after the end
            self.status = f"measuring KL {message.done}/{message.total}"

    @on(Measured)
    def _measured(self, message: Measured) -> None:
        self.status = ""  # the last message of a measurement: the next one may start
        self._busy = False
        self._next()

    @on(Worker.StateChanged)
    def _worker_state(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            self.status = "KL unavailable"
            self.notify(f"KL not measured: {error_line(event.worker.error)}", severity="warning", timeout=8)
            self._busy = False
            self._next()


class JobRunner(Widget):
    DEFAULT_CSS = "JobRunner { display: none; }"

    status: reactive[str] = reactive("")  # "ortho 4/8 [████░░░░░░] step 3/60 loss 0.51" while a job runs

    @dataclass
    class Checkpoint(Message):
        """The job's bank was saved again: `view` is what the file holds now."""

        runner: JobRunner
        view: BankView

        @property
        def control(self) -> JobRunner:
            return self.runner

    @dataclass
    class Done(Message):
        runner: JobRunner
        name: str
        summary: str | None
        error: str | None

        @property
        def control(self) -> JobRunner:
            return self.runner

    @dataclass
    class _Update(Message):
        progress: JobProgress

    @dataclass
    class _Finished(Message):
        summary: str

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id=id)
        self.name_running = ""  # "ortho" or "melbo" while a job runs
        self._stop = threading.Event()

    @property
    def running(self) -> bool:
        return bool(self.name_running)

    def start(self, name: str, out: Path, run: JobRun) -> None:
        """Run `run(progress, should_stop)`, which saves its bank to `out` at each checkpoint."""
        if self.running:
            raise MelboError("a background job is already running (O stops it)")
        self.name_running = name
        self._stop.clear()
        self.status = f"{name}: starting"
        self.run_worker(functools.partial(self._job, out, run), name=name, group="job", description=f"{name} into {out}",
                        thread=True, exclusive=True, exit_on_error=False)

    def stop(self) -> None:
        if not self.running:
            raise MelboError("no background job is running")
        self._stop.set()
        self.status = f"{self.name_running}: stopping after this step…"

    def _job(self, out: Path, run: JobRun) -> str:
        worker = get_current_worker()
        seen = [-1, 0.0]  # vectors saved at the last checkpoint we opened, time of the last update

        def should_stop() -> bool:
            return worker.is_cancelled or self._stop.is_set()

        def progress(p: JobProgress) -> None:
            if p.done != seen[0]:
                seen[0] = p.done
                self._post_checkpoint(out)
            now = time.perf_counter()
            if now - seen[1] > 0.25:
                seen[1] = now
                self.post_message(self._Update(p))

        summary = run(progress, should_stop)
        self._post_checkpoint(out)
        self.post_message(self._Finished(summary))  # after the last checkpoint
        return summary

    def _post_checkpoint(self, out: Path) -> None:
        with contextlib.suppress(MelboError, OSError):  # not written yet: the next checkpoint opens it
            self.post_message(self.Checkpoint(self, open_bank_view(out)))

    @on(_Update)
    def _update(self, message: _Update) -> None:
        if not self.running or self._stop.is_set():
            return  # a late one, after the end or the stop
        p = message.progress
        filled = int(10 * p.done / max(1, p.count))
        self.status = (f"{self.name_running} {p.done}/{p.count} [{'█' * filled}{'░' * (10 - filled)}] "
                       f"step {p.step}/{p.steps} loss {p.loss:.3g}")

    @on(_Finished)
    def _finished(self, message: _Finished) -> None:
        self._end(message.summary, None)

    @on(Worker.StateChanged)
    def _worker_state(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            self._end(None, error_line(event.worker.error))

    def _end(self, summary: str | None, error: str | None) -> None:
        name, self.name_running = self.name_running, ""
        self.status = ""
        self.post_message(self.Done(self, name, summary, error))


class ReadAhead(Widget):
    """Completes the rows around the cursor while the user reads, so the next move shows its text at once.

    Lowest priority: it runs only when the screen aims it (the completion on screen is done), in
    batches through the backend's batched path, and gives way within a decode step to any
    completion the user asks for (`Backend.complete`); a new aim drops the old one.
    """

    DEFAULT_CSS = "ReadAhead { display: none; }"

    status: reactive[str] = reactive("")  # "read ahead 4/12" while it works

    @dataclass
    class Ready(Message):
        """The completion of `target` (on the settings aimed with) is in the session's cache."""

        read_ahead: ReadAhead
        view: BankView
        target: Composition

        @property
        def control(self) -> ReadAhead:
            return self.read_ahead

    @dataclass
    class _Ended(Message):
        gen: int

    def __init__(self, session: Session, id: str | None = None) -> None:
        super().__init__(id=id)
        self._session = session
        self._aim: tuple[object, ...] | None = None
        self._gen = 0
        self._stop = threading.Event()
        self._done = 0
        self._total = 0

    @property
    def running(self) -> bool:
        return self._aim is not None

    def aim(self, view: BankView, settings: ExploreSettings, targets: list[Composition]) -> None:
        """Complete `targets` (nearest first) on `settings`; the same aim again leaves the running one be."""
        targets = [t for t in targets if self._session.cached(view, t, settings) is None]
        aim = (view.digest, settings, tuple(targets))
        if aim == self._aim:
            return
        self.stop()
        if not targets or self._session.blocked(view) is not None:
            return
        self._aim, self._gen, self._done, self._total = aim, self._gen + 1, 0, len(targets)
        self._stop = stop = threading.Event()
        self.status = f"read ahead 0/{len(targets)}"
        self.run_worker(functools.partial(self._work, self._gen, view, settings, targets, stop), name="read-ahead",
                        group="read-ahead", description=f"read ahead {len(targets)} rows of {view.name}", thread=True,
                        exit_on_error=False)

    def stop(self) -> None:
        self._stop.set()
        self._aim = None
        self.status = ""

    def _work(self, gen: int, view: BankView, settings: ExploreSettings, targets: list[Composition],
              stop: threading.Event) -> None:
        worker = get_current_worker()

        def should_stop() -> bool:
            return stop.is_set() or worker.is_cancelled

        try:
            def ready(target: Composition) -> None:
                self.post_message(self.Ready(self, view, target))

            self._session.prepare(view, targets, settings, should_stop, ready)
        finally:
            self.post_message(self._Ended(gen))

    @on(Ready)
    def _ready(self, message: Ready) -> None:
        if self._aim is not None:
            self._done += 1
            self.status = f"read ahead {self._done}/{self._total}"

    @on(_Ended)
    def _ended(self, message: _Ended) -> None:
        if message.gen == self._gen:  # it finished or gave way: the next aim starts afresh
            self._aim = None
            self.status = ""

    @on(Worker.StateChanged)
    def _worker_state(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:  # read-ahead is a convenience: say it once, quietly, and stop
            self.stop()
            self.notify(f"read-ahead stopped: {error_line(event.worker.error)}", severity="warning", timeout=6)
