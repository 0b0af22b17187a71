"""`b`: completions side by side: the steered one, its parts or the selected vectors, unsteered, base.

Each column has its own title, shown whole, and scrolls on its own from its first line. When
the columns would be narrower than `MIN_COLUMN` cells (80x24, or many columns) they become
tabs: one column at a time, the whole height, left/right to switch. What to compare follows
what is highlighted (`comparison_slots`): a composition against its parts, a vector against the
selected vectors, both against the unsteered model and, in a bank that has one, the base vector.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from textual import events
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Static

from melbo_tui.compose import UNSTEERED, Composition
from melbo_tui.tui.bankview import BankView
from melbo_tui.tui.components.completion_panel import CompletionPanel, CompletionRequest, Slot, copy_completion
from melbo_tui.tui.components.footer import ExplorerFooter
from melbo_tui.tui.keymap import COMPARE_KEYS, bindings
from melbo_tui.tui.session import Session

MIN_COLUMN = 32  # cells: narrower columns wrap a completion into a few words per line
MAX_PARTS = 4


def row_name(view: BankView, target: Composition) -> str:
    """`vector 3 [code]`: a single row with its label (in parentheses when made on another prompt)."""
    name = target.label
    if len(target.rows) == 1:
        label, current = view.label(target.rows[0])
        if label:
            name += f" [{label}]" if current else f" [({label})]"
    return name


def comparison_slots(view: BankView, target: Composition, selected: Collection[int]) -> tuple[Slot, ...]:
    """The columns for `target`: itself, its parts (or the other selected vectors), unsteered, base."""
    k = f" (k={len(target.rows)})" if target.is_composition else ""
    slots = [Slot(f"steered: {row_name(view, target)}{k}", target, "steered")]
    if target.is_composition:
        parts = [Composition((r,), scale=target.scale) for r in target.rows[:MAX_PARTS]]
        slots += [Slot(f"part: {row_name(view, c)}", c, f"part {c.rows[0]}") for c in parts]
    else:
        others = [Composition((r,), scale=target.scale) for r in sorted(selected) if r not in target.rows][: MAX_PARTS - 1]
        slots += [Slot(f"selected: {row_name(view, c)}", c, f"sel {c.rows[0]}") for c in others]
    slots.append(Slot("unsteered: no vector", UNSTEERED, "unsteered"))
    base = view.base_index
    if view.kind.has_base and all(s.target.rows != (base,) for s in slots):
        base_target = Composition((base,))
        slots.append(Slot(f"base: {row_name(view, base_target)}, the vector the others imitate", base_target, "base"))
    return tuple(slots)


class CompareScreen(Screen[None]):
    DEFAULT_CSS = (Path(__file__).with_suffix(".tcss")).read_text(encoding="utf-8")
    BINDINGS = bindings(COMPARE_KEYS)

    def __init__(self, session: Session, request: CompletionRequest, caption: str) -> None:
        super().__init__()
        self._session = session
        self.request = request
        self.caption = caption

    @property
    def panel(self) -> CompletionPanel:
        return self.query_one("#compare-panel", CompletionPanel)

    def compose(self) -> ComposeResult:
        yield Static(self.caption, id="compare-caption", markup=False)
        yield CompletionPanel(self._session, columns=len(self.request.slots), debounce=0.0, tabs=True, id="compare-panel")
        yield ExplorerFooter()

    def on_mount(self) -> None:
        self.panel.set_tab_labels([f"{i + 1} {slot.tab}" for i, slot in enumerate(self.request.slots)])
        self._fit(self.app.size.width)
        self.panel.show(self.request, immediate=True)
        self.panel.text(0).focus()

    def on_resize(self, event: events.Resize) -> None:
        self._fit(event.size.width)

    def _fit(self, width: int) -> None:
        self.panel.tabbed = width // len(self.request.slots) < MIN_COLUMN

    def action_column(self, delta: int) -> None:
        self.panel.show_column(delta)

    def action_regenerate(self) -> None:
        self.panel.show(self.request, immediate=True, force=True)

    def action_copy(self) -> None:
        copy_completion(self.panel)

    def action_close(self) -> None:
        self.panel.stop()
        if self.is_active:
            self.dismiss(None)
