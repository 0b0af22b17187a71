"""`i`: every column of the bank, what it means, which way is better, the value to beat, and the
highlighted row's value: the list shows only the columns its width holds.

Opaque, so nothing of the list shows through; j/k, page keys and g/G scroll it.
"""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from melbo_tui.tui.bankview import BankView
from melbo_tui.tui.columns import fmt, info, is_flat
from melbo_tui.tui.components.footer import ExplorerFooter
from melbo_tui.tui.keymap import COLUMNS_KEYS, bindings


def columns_table(view: BankView, row: int, prompt: str | None) -> Table:
    table = Table(expand=True, box=None, padding=(0, 1), header_style="bold")
    table.add_column("column", no_wrap=True)
    table.add_column(f"row {row}", justify="right", no_wrap=True)
    table.add_column("to beat", justify="right", no_wrap=True)
    table.add_column("meaning", ratio=1)
    label, current = view.label(row)
    table.add_row("label", label if current else f"({label})", "", info("label").meaning)
    for column in view.columns():
        about = info(column)
        bar = view.bar(column)
        value = Text(fmt(view.value(column, row), column))
        if view.beats(column, row):
            value.append(" ✓", style="green")
        meaning = Text(about.meaning)
        if about.better:
            meaning.append(f"; {about.better.value} = {about.why}", style="green")
        if is_flat(view, column):
            meaning.append("; the same on every row but the base, so the list leaves it out", style="dim")
        measured_on = view.prompt_of(column)
        if measured_on is not None:
            meaning.append(f"; measured on {measured_on!r}", style="yellow" if prompt not in (None, measured_on) else "dim")
        table.add_row(about.title, value, fmt(bar, column) if bar is not None else "", meaning)
    return table


class ColumnsScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    ColumnsScreen { background: $background; }
    #columns-body { width: 100%; height: 1fr; border: round $primary; background: $surface; padding: 0 1; }
    #columns-body Static { width: 100%; }
    """
    BINDINGS = bindings(COLUMNS_KEYS)

    def __init__(self, view: BankView, row: int, prompt: str | None) -> None:
        super().__init__()
        self.view, self.row, self.prompt = view, row, prompt

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="columns-body"):
            kind = f"{self.view.kind.value} bank" + (f", base row {self.view.base_index}" if self.view.kind.has_base else "")
            yield Static(Text(f"{self.view.name} ({kind}): the columns, and vector {self.row}", style="bold"))
            yield Static(columns_table(self.view, self.row, self.prompt))
            yield Static(Text("KL in nats; P_i = next-token distribution steered by row i, P_base by the base row. "
                              "✓ = closer to the base than no vector (the value under 'to beat').", style="dim"))
        yield ExplorerFooter()

    def on_mount(self) -> None:
        self.query_one("#columns-body").focus()

    def action_scroll_body(self, where: str) -> None:
        getattr(self.query_one("#columns-body", VerticalScroll), f"scroll_{where}")(animate=False)

    def action_close(self) -> None:
        if self.is_active:
            self.dismiss(None)
