"""The vector list: a DataTable (renders only visible lines, so thousands of rows stay smooth).

The list owns what a user does to it: the highlighted row, the selection, the filter and the
sort, as reactives, and tells the screen through its own messages (`Highlighted`,
`SelectionChanged`, `Listed`). It remembers the cursor and the selection of every bank it has
shown, so switching banks and back returns to where the user was. Row keys are bank indices as
strings, so a row keeps its identity through filters and sorts. Columns are the bank's metric
columns (`BankView.columns`), whatever they are, with the KL worth reading first.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import on
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, RowDoesNotExist

from melbo_tui.errors import MelboError
from melbo_tui.tui import spark
from melbo_tui.tui.bankview import BankView, title
from melbo_tui.tui.filters import Predicate, parse_filter, sort_keys, visible_rows
from melbo_tui.tui.keymap import LIST_KEYS, bindings

WINDOW = 7  # rows in the inline sparkline cells
MARK = "●"
FORMATS = {"norm": ".1f", "cos_base": ".2f", "sigma": ".3g", "score": ".3g"}  # the rest: KL-like, 3 decimals


@dataclass
class _Memory:
    """Where the user was in a bank: restored when the list shows that bank again."""

    row: int | None
    selected: frozenset[int]


class VectorList(DataTable[str | Text]):
    DEFAULT_CSS = (Path(__file__).with_suffix(".tcss")).read_text(encoding="utf-8")
    BINDINGS = bindings(LIST_KEYS)

    sort_key: reactive[str] = reactive("idx")
    sort_reverse: reactive[bool] = reactive(False)
    filter_text: reactive[str] = reactive("")
    selected: reactive[frozenset[int]] = reactive(frozenset())
    range_anchor: reactive[int | None] = reactive(None)

    @dataclass
    class Highlighted(Message):
        """The cursor is on bank row `row` of `view`."""

        vector_list: VectorList
        view: BankView
        row: int

        @property
        def control(self) -> VectorList:
            return self.vector_list

    @dataclass
    class SelectionChanged(Message):
        vector_list: VectorList
        view: BankView
        selected: frozenset[int]

        @property
        def control(self) -> VectorList:
            return self.vector_list

    @dataclass
    class Listed(Message):
        """The rows shown changed (a bank, a filter, a sort): `shown` of `total` rows."""

        vector_list: VectorList
        shown: int
        total: int

        @property
        def control(self) -> VectorList:
            return self.vector_list

    def __init__(self, id: str | None = None) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, id=id)
        self._view: BankView | None = None
        self._predicate: Predicate | None = None
        self._memory: dict[Path, _Memory] = {}
        self._columns: list[str] = []
        self._sparks: dict[str, list[str]] = {}

    # ----- what is shown ------------------------------------------------------------------

    @property
    def view(self) -> BankView | None:
        return self._view

    def current_row(self) -> int | None:
        """Bank index under the cursor (None when the list is empty)."""
        if self.row_count == 0:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except (RowDoesNotExist, CellDoesNotExist, IndexError):  # cursor outside the rows while the table refills
            return None
        return int(key.value) if key.value is not None else None

    def shown_rows(self) -> list[int]:
        return [int(k.value) for k in self.rows if k.value is not None]

    def show_view(self, view: BankView) -> None:
        """Show another bank (or a new checkpoint of this one), where the user last was in it."""
        if self._view is not None:
            self._memory[self._view.path] = _Memory(self.current_row(), self.selected)
        memory = self._memory.get(view.path, _Memory(view.base_index, frozenset()))
        same_bank = self._view is not None and self._view.path == view.path
        self._view = view
        self.range_anchor = None
        self.set_reactive(VectorList.selected, frozenset(r for r in memory.selected if r < len(view)))
        self._predicate = self._parse(self.filter_text)
        self.refill(keep=memory.row)
        if not same_bank:
            self.post_message(self.SelectionChanged(self, view, self.selected))

    def refill(self, keep: int | None = None) -> None:
        """Fill the table from the bank with the filter and sort; keep the cursor on bank row `keep`."""
        view = self._view
        if view is None:
            return
        if keep is None:
            keep = self.current_row()
        self._set_columns(view)
        rows = visible_rows(view, self._predicate, self.sort_key, self.sort_reverse, self.selected)
        self.clear()
        for row in rows:
            self.add_row(*self._cells(row, row in self.selected), key=str(row))
        if (keep is None or not self.move_to(keep)) and rows:
            self.move_cursor(row=0, animate=False)
        self.post_message(self.Listed(self, len(rows), len(view)))
        current = self.current_row()
        if current is not None:
            self.post_message(self.Highlighted(self, view, current))

    def _set_columns(self, view: BankView) -> None:
        columns = view.columns()
        if columns != self._columns:
            self.clear(columns=True)
            self.add_column(" ", key="sel")
            self.add_column("idx", key="idx")
            self.add_column("label", key="label")
            for column in columns:
                self.add_column(title(column), key=column)
            self.add_column("KL~", key="kl_spark")
            self.add_column("norm~", key="norm_spark")
            self._columns = columns
        self._sparks = {
            "kl": spark.window_cells(spark.scaled(view.values.get(columns[0], [math.nan] * len(view)), log=True), WINDOW),
            "norm": spark.window_cells(spark.scaled(view.values["norm"]), WINDOW),
        }

    def _cells(self, row: int, is_selected: bool) -> list[str | Text]:
        view = self._view
        assert view is not None
        return [
            MARK if is_selected else " ",
            Text(str(row), justify="right"),
            view.labels[row],  # whole: the column is as wide as the longest label
            *(_fmt(view.value(c, row), FORMATS.get(c, ".3f")) for c in self._columns),
            self._sparks["kl"][row],
            self._sparks["norm"][row],
        ]

    def move_to(self, row: int) -> bool:
        """Put the cursor on bank row `row`; False if that row is filtered out."""
        try:
            index = self.get_row_index(str(row))
        except RowDoesNotExist:
            return False
        self.move_cursor(row=index, animate=False, scroll=True)
        return True

    def natural_width(self) -> int:
        """Cells the table needs to show every column whole (padding and scrollbar included)."""
        return sum(column.get_render_width(self) for column in self.columns.values()) + 2

    # ----- filter and sort ----------------------------------------------------------------

    def _parse(self, text: str) -> Predicate | None:
        view = self._view
        return parse_filter(text, view.columns()) if view is not None else None

    def apply_filter(self, text: str) -> None:
        """Filter by `text` (empty clears); a malformed filter raises and changes nothing."""
        predicate = self._parse(text)
        self._predicate = predicate
        if text.strip() == self.filter_text:
            self.refill()
        self.filter_text = text.strip()

    def watch_filter_text(self) -> None:
        self.refill()

    def watch_sort_key(self) -> None:
        self.refill()

    def watch_sort_reverse(self) -> None:
        self.refill()

    def sort_by(self, key: str) -> None:
        """Sort by `key`; the same key again reverses the order."""
        if key == self.sort_key:
            self.sort_reverse = not self.sort_reverse
        else:
            self.set_reactive(VectorList.sort_reverse, False)
            self.sort_key = key

    def action_sort(self) -> None:
        if self._view is None:
            return
        keys = sort_keys(self._view)
        index = keys.index(self.sort_key) if self.sort_key in keys else -1
        self.set_reactive(VectorList.sort_reverse, False)
        self.sort_key = keys[(index + 1) % len(keys)]
        self.notify(f"sorted by {self.sort_key}", timeout=2)

    def action_reverse(self) -> None:
        self.sort_reverse = not self.sort_reverse

    @on(DataTable.HeaderSelected)
    def _header_selected(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        key = str(event.column_key.value)
        if key in ("idx", "label") or key in self._columns:
            self.sort_by(key)

    # ----- cursor -------------------------------------------------------------------------

    def action_top(self) -> None:
        if self.row_count:
            self.move_cursor(row=0, animate=False)

    def action_bottom(self) -> None:
        if self.row_count:
            self.move_cursor(row=self.row_count - 1, animate=False)

    @on(DataTable.RowHighlighted)
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        row = self.current_row()
        if row is not None and self._view is not None:
            self.post_message(self.Highlighted(self, self._view, row))

    # ----- selection ----------------------------------------------------------------------

    def watch_selected(self, old: frozenset[int], new: frozenset[int]) -> None:
        for row in old ^ new:
            with contextlib.suppress(RowDoesNotExist, KeyError, CellDoesNotExist):  # filtered out: marked when shown
                self.update_cell(str(row), "sel", MARK if row in new else " ")
        if self._view is not None:
            self.post_message(self.SelectionChanged(self, self._view, new))

    def action_select(self) -> None:
        row = self.current_row()
        if row is None:
            return
        self.selected = self.selected ^ {row}
        self.action_cursor_down()

    def action_range(self) -> None:
        row = self.current_row()
        if row is None:
            return
        anchor = self.range_anchor
        if anchor is None:
            self.range_anchor = row
            self.notify(f"range starts at vector {row}: move, then press v again", timeout=3)
            return
        shown = self.shown_rows()
        a, b = sorted((shown.index(anchor) if anchor in shown else 0, shown.index(row)))
        self.range_anchor = None
        self.selected = self.selected | set(shown[a : b + 1])
        self.notify(f"selected {b - a + 1} vectors ({len(self.selected)} in all)", timeout=3)

    def action_clear_selection(self) -> None:
        self.range_anchor = None
        self.selected = frozenset()

    def jump(self, text: str) -> None:
        """Put the cursor on the index typed (negative counts from the end)."""
        view = self._view
        if view is None or not text.strip():
            return
        try:
            row = int(text.strip())
        except ValueError:
            raise MelboError(f"'{text.strip()}' is not a vector index") from None
        n = len(view)
        if not -n <= row < n:
            raise MelboError(f"index {row} out of range: the bank has {n} vectors (0..{n - 1})")
        row %= n
        if not self.move_to(row):
            raise MelboError(f"vector {row} is hidden by the filter '{self.filter_text}'")


def _fmt(value: float, spec: str) -> Text:
    return Text("–" if math.isnan(value) else format(value, spec), justify="right")
