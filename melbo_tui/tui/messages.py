"""Typed messages posted by worker threads to the UI thread."""

from __future__ import annotations

from textual.message import Message

from melbo_tui.tui.backend import JobProgress, StreamResult
from melbo_tui.tui.bankview import BankView


class BanksLoaded(Message):
    def __init__(self, views: list[BankView], errors: list[str]) -> None:
        super().__init__()
        self.views = views
        self.errors = errors


class ModelLoaded(Message):
    def __init__(self, description: str | None, error: str | None) -> None:
        super().__init__()
        self.description = description
        self.error = error


class Piece(Message):
    """A decoded piece of generation `gen` for column `slot` (steered, unsteered, base)."""

    def __init__(self, gen: int, slot: str, text: str) -> None:
        super().__init__()
        self.gen = gen
        self.slot = slot
        self.text = text


class Finished(Message):
    def __init__(self, gen: int, slot: str, result: StreamResult | None, error: str | None = None) -> None:
        super().__init__()
        self.gen = gen
        self.slot = slot
        self.result = result
        self.error = error


class TargetMeasured(Message):
    def __init__(self, gen: int, values: dict[str, float]) -> None:
        super().__init__()
        self.gen = gen
        self.values = values


class MetricsProgress(Message):
    def __init__(self, view: BankView, done: int, total: int) -> None:
        super().__init__()
        self.view = view
        self.done = done
        self.total = total


class MetricsIdle(Message):
    """The KL worker finished its pass over the open banks."""


class JobUpdate(Message):
    def __init__(self, progress: JobProgress) -> None:
        super().__init__()
        self.progress = progress


class JobCheckpoint(Message):
    """The job's bank file was saved again: `view` is its current content."""

    def __init__(self, view: BankView) -> None:
        super().__init__()
        self.view = view


class JobDone(Message):
    def __init__(self, message: str | None, error: str | None) -> None:
        super().__init__()
        self.message = message
        self.error = error


class MetricsReady(Message):
    def __init__(self, view: BankView, values: dict[str, list[float]] | None, error: str | None) -> None:
        super().__init__()
        self.view = view
        self.values = values
        self.error = error
