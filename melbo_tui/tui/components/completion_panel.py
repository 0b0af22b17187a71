"""The completion panel: a header naming what steers and how, then one column per completion.

Columns are `steered` and, with baselines on, `unsteered` and `base` (row base_index), all for
the same prompt and seed. A generation id (`gen`) travels with every piece so text from a
cancelled generation can never land in a newer one.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Static

SLOTS = ("steered", "unsteered", "base")
TITLES = {"steered": "steered", "unsteered": "unsteered (no vector)", "base": "base vector"}


class CompletionColumn(VerticalScroll):
    def __init__(self, slot: str) -> None:
        super().__init__(id=f"col-{slot}", classes="completion-column")
        self.slot = slot
        self.text = ""
        self.note = ""
        self.can_focus = True

    def compose(self) -> ComposeResult:
        yield Static(TITLES[self.slot], classes="column-title")
        yield Static("", classes="column-body", markup=False)

    def set_text(self, text: str, note: str = "") -> None:
        self.text, self.note = text, note
        self._render_body()

    def append(self, text: str) -> None:
        self.text += text
        self._render_body()

    def set_note(self, note: str) -> None:
        self.note = note
        self._render_body()

    def _render_body(self) -> None:
        body = Text(self.text)
        if self.note:
            body.append(("\n" if self.text else "") + self.note, style="dim italic")
        self.query_one(".column-body", Static).update(body)
        self.scroll_end(animate=False)


class CompletionPanel(Vertical):
    DEFAULT_CSS = (Path(__file__).with_suffix(".tcss")).read_text(encoding="utf-8")

    def compose(self) -> ComposeResult:
        yield Static("", id="completion-header", markup=False)
        with Horizontal(id="completion-columns"):
            for slot in SLOTS:
                yield CompletionColumn(slot)

    def on_mount(self) -> None:
        self.show_baselines(False)

    def column(self, slot: str) -> CompletionColumn:
        return self.query_one(f"#col-{slot}", CompletionColumn)

    def show_baselines(self, on: bool) -> None:
        for slot in ("unsteered", "base"):
            self.column(slot).display = on

    def set_header(self, text: Text | str) -> None:
        self.query_one("#completion-header", Static).update(text)

    def clear(self, slots: tuple[str, ...] = SLOTS, note: str = "") -> None:
        for slot in slots:
            self.column(slot).set_text("", note)

    def texts(self) -> dict[str, str]:
        """What each column shows now (tests and exports read this)."""
        return {slot: self.column(slot).text for slot in SLOTS}
