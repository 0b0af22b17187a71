"""The vector list: a DataTable (renders only visible lines, so thousands of rows stay smooth).

Row keys are bank indices as strings, so a row keeps its identity through filters and sorts.
"""

from __future__ import annotations

import math
from pathlib import Path

from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, RowDoesNotExist

from melbo_tui.tui import spark
from melbo_tui.tui.bankview import BankView

WINDOW = 7  # rows in the inline sparkline cells
COLUMNS = (
    ("sel", " "), ("idx", "idx"), ("label", "label"), ("norm", "norm"), ("kl", "KL"),
    ("kl_rev", "KL-rev"), ("cos_base", "cos"), ("kl_spark", "KL~"), ("norm_spark", "norm~"),
)
SORTABLE = {"idx": "idx", "label": "label", "norm": "norm", "kl": "kl", "kl_rev": "kl_rev", "cos_base": "cos_base"}
MARK = "●"


class VectorTable(DataTable[str]):
    DEFAULT_CSS = (Path(__file__).with_suffix(".tcss")).read_text(encoding="utf-8")

    def __init__(self, **kwargs: object) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)  # type: ignore[arg-type]
        self._view: BankView | None = None
        self._sparks: dict[str, list[str]] = {}

    def on_mount(self) -> None:
        for key, label in COLUMNS:
            self.add_column(label, key=key)

    @property
    def view(self) -> BankView | None:
        return self._view

    def show(self, view: BankView, rows: list[int], selected: set[int], keep: int | None = None) -> None:
        """Fill the table with `rows` of `view`; keep the cursor on bank row `keep` if shown."""
        self._view = view
        self._sparks = {
            "kl": spark.window_cells(spark.scaled(view.values["kl"], log=True), WINDOW),
            "norm": spark.window_cells(spark.scaled(view.values["norm"]), WINDOW),
        }
        self.clear()
        self.add_rows_keyed(rows, selected)
        if keep is not None:
            self.move_to(keep)

    def add_rows_keyed(self, rows: list[int], selected: set[int]) -> None:
        for row in rows:
            self.add_row(*self._cells(row, row in selected), key=str(row))

    def _cells(self, row: int, is_selected: bool) -> list[str]:
        assert self._view is not None
        v = self._view
        return [
            MARK if is_selected else " ",
            f"{row:>5d}",
            v.labels[row][:8],
            _fmt(v.value("norm", row), 6, ".1f"),
            _fmt(v.value("kl", row), 6, ".3f"),
            _fmt(v.value("kl_rev", row), 6, ".3f"),
            _fmt(v.value("cos_base", row), 5, ".2f"),
            self._sparks["kl"][row],
            self._sparks["norm"][row],
        ]

    def current_row(self) -> int | None:
        """Bank index under the cursor (None when the table is empty)."""
        if self.row_count == 0:
            return None
        try:
            key = self.coordinate_to_cell_key(self.cursor_coordinate).row_key
        except (RowDoesNotExist, CellDoesNotExist, IndexError):  # cursor outside the rows while the table refills
            return None
        return int(key.value) if key.value is not None else None

    def move_to(self, row: int) -> bool:
        """Put the cursor on bank row `row`; False if that row is filtered out."""
        try:
            index = self.get_row_index(str(row))
        except RowDoesNotExist:
            return False
        self.move_cursor(row=index, animate=False, scroll=True)
        return True

    def set_selected(self, row: int, is_selected: bool) -> None:
        try:
            self.update_cell(str(row), "sel", MARK if is_selected else " ")
        except (RowDoesNotExist, KeyError):
            pass

    def refresh_values(self, selected: set[int]) -> None:
        """Re-render every cell after metrics arrived (rows and order unchanged)."""
        if self._view is None:
            return
        rows = [int(k.value) for k in self.rows if k.value is not None]
        keep = self.current_row()
        self.show(self._view, rows, selected, keep)


def _fmt(value: float, width: int, spec: str) -> str:
    if math.isnan(value):
        return "–".rjust(width)
    return format(value, spec).rjust(width)
