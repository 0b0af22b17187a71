"""A one-line question at the bottom (filter expression, index to jump to, a path); enter answers, escape cancels.

`dismiss` pops whatever screen is on top, so each close first checks that this screen still is.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label


class LineInputScreen(ModalScreen[str | None]):
    DEFAULT_CSS = (Path(__file__).with_suffix(".tcss")).read_text(encoding="utf-8")
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", show=True)]

    def __init__(self, title: str, value: str = "", placeholder: str = "") -> None:
        super().__init__()
        self._question = title
        self._initial = value
        self._hint = placeholder

    def compose(self) -> ComposeResult:
        with Vertical(id="line-box"):
            yield Label(self._question, id="line-title")
            yield Input(value=self._initial, placeholder=self._hint, id="line-input")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if self.is_active:  # a second enter queued behind the first must not close the screen below
            self.dismiss(event.value)

    def action_cancel(self) -> None:
        if self.is_active:
            self.dismiss(None)
