"""`o` and `T`: what a background job will do, before it does it.

The dialog names the prompt the job optimises on (for MELBO-ortho the bank's, which may not be
the one being completed), the layers, the number of vectors and the output file (both editable),
the command line the new bank will record, and how long it will take here: a few optimiser steps
are timed as soon as the dialog opens (`Backend.estimate`). Enter starts, escape cancels; a
mistake in a field is a line in the dialog, and nothing starts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, cast

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static
from textual.worker import Worker, WorkerState

from melbo_tui.errors import MelboError
from melbo_tui.tui.backend import Backend, Job
from melbo_tui.tui.failures import error_line
from melbo_tui.tui.outputs import show_path


@dataclass(frozen=True)
class JobField:
    name: str  # the Input's id and what `build` reads
    label: str
    value: str


@dataclass(frozen=True)
class JobForm:
    """What the dialog shows and how its fields become a job (`build` raises `MelboError` on a bad field)."""

    title: str
    facts: tuple[tuple[str, str], ...]  # (name, value) lines above the fields
    fields: tuple[JobField, ...]
    build: Callable[[dict[str, str]], Job]
    count: Callable[[Job], int]  # vectors the job makes (for the estimate's total)


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class JobScreen(ModalScreen[Job | None]):
    DEFAULT_CSS = """
    JobScreen { align: center middle; background: $background; }
    #job-box { width: 100%; max-width: 120; height: auto; max-height: 100%; border: round $primary;
               background: $surface; padding: 0 1; }
    #job-title { text-style: bold; }
    #job-box .row { height: auto; }
    #job-box .row Label { width: 10; color: $text-muted; }
    #job-box .row Input { width: 1fr; border: none; height: 1; padding: 0 1; background: $boost; }
    #job-box .row Input:focus { background: $primary 30%; }
    #job-box .fact { width: 1fr; }
    #job-error { color: $error; height: auto; }
    #job-keys { color: $text-muted; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", show=True)]

    def __init__(self, form: JobForm, backend: Backend, workspace: Path) -> None:
        super().__init__()
        self.form = form
        self._backend = backend
        self._workspace = workspace
        self._per_vector: float | None = None
        self._estimate_error: str | None = None
        self._timed: str | None = None  # the `timing_key` of the job being (or last) timed

    def compose(self) -> ComposeResult:
        with Vertical(id="job-box"):
            yield Static(self.form.title, id="job-title", markup=False)
            for name, value in self.form.facts:
                with Horizontal(classes="row"):
                    yield Label(name)
                    yield Static(value, classes="fact", markup=False)
            for field in self.form.fields:
                with Horizontal(classes="row"):
                    yield Label(field.label)
                    yield Input(field.value, id=field.name)
            with Horizontal(classes="row"):
                yield Label("time")
                yield Static("timing a few optimiser steps…", id="job-time", classes="fact", markup=False)
            with Horizontal(classes="row"):
                yield Label("records")
                yield Static("", id="job-command", classes="fact", markup=False)
            yield Static("", id="job-error")
            yield Static("enter starts · escape cancels · tab moves between fields", id="job-keys")

    def on_mount(self) -> None:
        self.query_one(Input).focus()
        self._job()

    def _time(self, job: Job) -> None:
        """Time `job` unless a job that takes as long per vector was timed (a new objective or step count is timed again)."""
        key = job.timing_key()
        if key == self._timed:
            return
        self._timed, self._per_vector, self._estimate_error = key, None, None
        self.query_one("#job-time", Static).update("timing a few optimiser steps…")
        self.run_worker(functools.partial(self._backend.estimate, job), name=key, group="estimate", exclusive=True,
                        description="time a few optimiser steps", thread=True, exit_on_error=False)

    def _values(self) -> dict[str, str]:
        return {field.name: self.query_one(f"#{field.name}", Input).value for field in self.form.fields}

    def _job(self) -> Job | None:
        """The job the fields describe now; a bad field is said in the dialog (None)."""
        try:
            job = self.form.build(self._values())
        except MelboError as exc:
            self.query_one("#job-error", Static).update(f"⚠ {error_line(exc)}")
            self.query_one("#job-command", Static).update("")
            return None
        self.query_one("#job-error", Static).update("")
        self.query_one("#job-command", Static).update(job.command(self._backend.model_flags(job.model),
                                                                  lambda p: show_path(p, self._workspace)))
        self._time(job)
        self._show_time(job)
        return job

    def _show_time(self, job: Job) -> None:
        line = self.query_one("#job-time", Static)
        if self._estimate_error is not None:
            line.update(Text(f"not timed: {self._estimate_error}", style="yellow"))
        elif self._per_vector is not None:
            count = self.form.count(job)
            line.update(f"~{duration(self._per_vector * count)} for {count} vectors here "
                        f"({self._per_vector:.1f} s per vector, timed just now)")

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        event.stop()
        self._job()

    @on(Worker.StateChanged)
    def _estimated(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "estimate" or event.worker.name != self._timed:
            return  # another dialog's, or the timing of settings changed since
        if event.state == WorkerState.SUCCESS:
            self._per_vector = float(cast(float, event.worker.result))
        elif event.state == WorkerState.ERROR:
            self._estimate_error = error_line(event.worker.error)
        else:
            return
        self._job()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        job = self._job()
        if job is not None and self.is_active:
            self.dismiss(job)

    def action_cancel(self) -> None:
        if self.is_active:
            self.dismiss(None)
