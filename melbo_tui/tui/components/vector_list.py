"""The vector list: a DataTable (renders only visible lines, so thousands of rows stay smooth).

The list owns what a user does to it: the highlighted row, the selection, the filter and the
sort, as reactives, and tells the screen through its own messages (`Highlighted`,
`SelectionChanged`, `Listed`). Cursor, selection, sort and filter belong to each bank: switching
banks and back returns to where the user was, and a sort of one bank never reorders another.
Row keys are bank indices as strings, so a row keeps its identity through filters and sorts.
Columns are the bank's metric columns, the KL worth reading first (marked ✓ where a row beats
the unsteered model), then as many of the others as the width holds; the header shows the sort
direction, and * on a column measured on another prompt than the one being completed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
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
from melbo_tui.tui.bankview import BankView
from melbo_tui.tui.columns import fmt, info, is_flat
from melbo_tui.tui.filters import Predicate, parse_filter, sort_keys, visible_rows
from melbo_tui.tui.keymap import LIST_KEYS, bindings

WINDOW = 7  # rows in the inline sparkline cells
MARK = "●"
BASE_MARK = "θ0 "  # before the base row's label, where the base is a reference
ARROWS = {False: " ▲", True: " ▼"}
PADDING = 2  # a DataTable cell's padding, both sides
SCROLLBAR = 1
SPARK_COLUMNS = ("kl_spark", "norm_spark")
NBSP = "\u00a0"  # holds the ✓'s place (a plain space would be trimmed by the right justification)


@dataclass
class _Memory:
    """Where the user was in a bank: restored when the list shows that bank again."""

    row: int | None
    selected: frozenset[int]
    sort_key: str = "idx"
    sort_reverse: bool = False
    filter_text: str = ""


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
        """The rows shown changed (a bank, a filter, a sort): `shown` of `total` rows of `view`."""

        vector_list: VectorList
        view: BankView
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
        self._columns: list[str] = []  # metric and sparkline columns shown, after sel, idx and label
        self._header: tuple[object, ...] = ()
        self._sparks: dict[str, list[str]] = {}
        self.prompt: str | None = None  # the prompt being completed: columns measured on another are marked *

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

    @property
    def columns_shown(self) -> list[str]:
        """The metric (and sparkline) columns the list shows, in order."""
        return list(self._columns)

    def show_view(self, view: BankView) -> None:
        """Show another bank (or a new checkpoint of this one), where the user last was in it: cursor,
        selection, sort and filter are each bank's own."""
        if self._view is not None:
            self._memory[self._view.path] = _Memory(self.current_row(), self.selected, self.sort_key, self.sort_reverse,
                                                    self.filter_text)
        memory = self._memory.get(view.path, _Memory(view.base_index, frozenset()))
        same_bank = self._view is not None and self._view.path == view.path
        self._view = view
        self.range_anchor = None
        self.set_reactive(VectorList.selected, frozenset(r for r in memory.selected if r < len(view)))
        keys = sort_keys(view)
        self.set_reactive(VectorList.sort_key, memory.sort_key if memory.sort_key in keys else "idx")
        self.set_reactive(VectorList.sort_reverse, memory.sort_reverse)
        self.set_reactive(VectorList.filter_text, memory.filter_text)
        try:
            self._predicate = self._parse(self.filter_text)
        except MelboError:  # a filter this bank cannot read (a column it lacks): cleared, not carried
            self.set_reactive(VectorList.filter_text, "")
            self._predicate = None
        self._header = ()
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
        self.post_message(self.Listed(self, view, len(rows), len(view)))
        current = self.current_row()
        if current is not None:
            self.post_message(self.Highlighted(self, view, current))

    def refresh_labels(self, rows: Iterable[int] | None = None) -> None:
        """Show the labels again (a completion made on the current settings labelled its row)."""
        view = self._view
        if view is None:
            return
        for row in range(len(view)) if rows is None else rows:
            with contextlib.suppress(RowDoesNotExist, KeyError, CellDoesNotExist):  # filtered out: right when shown
                self.update_cell(str(row), "label", self._label_cell(row), update_width=True)

    def on_resize(self) -> None:
        if self._view is not None and self._wanted_columns(self._view) != self._columns:
            self.refill()

    @staticmethod
    def _candidates(view: BankView) -> list[str]:
        """The columns the list would like, by priority: the first KL, err, norm, the other metrics
        that vary, the sparklines. A column the same on every row but the base (cos to θ0) says
        nothing per row: `i` names it instead."""
        first = view.kl_column
        metrics = [first, *[c for c in ("err", "norm") if c != first and view.has(c)]]
        metrics += [c for c in view.columns() if c not in metrics and not is_flat(view, c)]
        return [*metrics, *SPARK_COLUMNS]

    def _fixed_width(self, view: BankView) -> int:
        """The selection mark, the index and the label, padded, and the scrollbar."""
        return SCROLLBAR + sum(w + PADDING for w in (1, self._idx_width(view), self._label_width(view)))

    def _wanted_columns(self, view: BankView) -> list[str]:
        """The candidate columns that fit the list's width, in order of priority (the first KL always)."""
        first = view.kl_column
        candidates = self._candidates(view)
        width = self.size.width or 10_000  # before the first layout: everything, the next resize trims
        used = self._fixed_width(view)
        chosen = []
        for column in candidates:
            need = self._column_width(view, column) + PADDING
            if used + need > width and column != first:
                continue
            chosen.append(column)
            used += need
        return [c for c in candidates if c in chosen]

    def _column_width(self, view: BankView, column: str) -> int:
        """Cells the column's widest value or its header takes (DataTable adds the padding)."""
        header = len(self._title(column, info(column).title))
        if column in SPARK_COLUMNS:
            return max(WINDOW, header)
        values = view.values.get(column, [])
        widest = max((len(fmt(v, column)) for v in values), default=1)
        if column == view.kl_column and view.bar(column) is not None:
            widest += 1  # the ✓ (or its blank)
        return max(widest, header)

    def _idx_width(self, view: BankView) -> int:
        return max(len(str(len(view) - 1)), len(self._title("idx", "idx")))

    def _label_width(self, view: BankView) -> int:
        header = len(self._title("label", "label"))
        return max(header, *(self._label_cell(r).cell_len for r in range(len(view))))

    def _set_columns(self, view: BankView) -> None:
        columns = self._wanted_columns(view)
        header = (tuple(columns), self.sort_key, self.sort_reverse, self.prompt, tuple(sorted(view.measured_on.items())))
        if header != self._header:
            self.clear(columns=True)
            self.add_column(" ", key="sel")
            self.add_column(self._title("idx", "idx"), key="idx")
            self.add_column(self._title("label", "label"), key="label")
            for column in columns:
                self.add_column(self._title(column, info(column).title), key=column)
            self._columns, self._header = columns, header
        kl = view.values.get(view.kl_column, [math.nan] * len(view))
        self._sparks = {
            "kl_spark": spark.window_cells(spark.scaled(kl, log=True), WINDOW),
            "norm_spark": spark.window_cells(spark.scaled(view.values["norm"]), WINDOW),
        }

    def _title(self, key: str, text: str) -> str:
        """A column's header: its name, the sort arrow, and * when it was measured on another prompt."""
        view = self._view
        stale = view is not None and self.prompt is not None and view.prompt_of(key) not in (None, self.prompt)
        return f"{text}{'*' if stale else ''}{ARROWS[self.sort_reverse] if key == self.sort_key else ''}"

    def _cells(self, row: int, is_selected: bool) -> list[str | Text]:
        view = self._view
        assert view is not None
        cells: list[str | Text] = [MARK if is_selected else " ", Text(str(row), justify="right"), self._label_cell(row)]
        for column in self._columns:
            if column in SPARK_COLUMNS:
                cells.append(self._sparks[column][row])
            elif column == view.kl_column and view.bar(column) is not None:
                beats = view.beats(column, row)
                cells.append(Text(fmt(view.value(column, row), column) + ("✓" if beats else NBSP), justify="right",
                                  style="green" if beats else ""))
            else:
                cells.append(Text(fmt(view.value(column, row), column), justify="right"))
        return cells

    def _label_cell(self, row: int) -> Text:
        view = self._view
        assert view is not None
        label, current = view.label(row)
        text = Text(BASE_MARK, style="bold") if view.kind.has_base and row == view.base_index else Text()
        if label:
            text.append(label if current else f"({label})", style="" if current else "dim italic")
        return text

    def move_to(self, row: int) -> bool:
        """Put the cursor on bank row `row`; False if that row is filtered out."""
        try:
            index = self.get_row_index(str(row))
        except RowDoesNotExist:
            return False
        self.move_cursor(row=index, animate=False, scroll=True)
        return True

    def natural_width(self) -> int:
        """Cells the table needs to show every column it would like (padding and scrollbar included)."""
        view = self._view
        if view is None:
            return 0
        return self._fixed_width(view) + sum(self._column_width(view, c) + PADDING for c in self._candidates(view))

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
        if key in ("idx", "label") or (key in self._columns and key not in SPARK_COLUMNS):
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
