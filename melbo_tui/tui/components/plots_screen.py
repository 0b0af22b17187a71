"""`p`: the bank's columns over the vector index: the default KL with its moving average, the norm,
and any other column that varies; cursor line; zoom.

A column that is the same on every row but the base (cos to the base of a MELBO-ortho bank is 0
by construction) is named in the caption instead of drawn as a flat line. The x axis is the vector
index, so its ticks are integers. The cursor here is the list's cursor: moving it moves the
highlighted vector too (so its completion streams), and leaving the screen keeps it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from textual import events
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Static
from textual_plotext import PlotextPlot

from melbo_tui.tui import spark
from melbo_tui.tui.bankview import BankView, title
from melbo_tui.tui.columns import is_flat
from melbo_tui.tui.components.footer import ExplorerFooter
from melbo_tui.tui.keymap import PLOT_KEYS, bindings

WINDOWS = (1, 5, 10, 25, 50, 100, 200)
MAX_PLOTS = 4
PLOT_HEIGHT = 10  # lines a plot needs to be read (title, a few ticks, the x axis); fewer plots show on a short terminal
VALUES, AVERAGE, CURSOR = "cyan", "orange", "red"


def integer_ticks(lo: int, hi: int, count: int = 6) -> list[int]:
    """About `count` evenly spaced whole indices from `lo` to `hi`, both included."""
    if hi <= lo:
        return [lo]
    step = max(1, math.ceil((hi - lo) / (count - 1)))
    return [*range(lo, hi, step), hi]


class PlotsScreen(Screen[None]):
    DEFAULT_CSS = (Path(__file__).with_suffix(".tcss")).read_text(encoding="utf-8")
    BINDINGS = bindings(PLOT_KEYS)

    def __init__(self, view: BankView, cursor: int, on_move: Callable[[int], object]) -> None:
        super().__init__()
        self.view = view
        self.cursor = cursor
        self.window_index = WINDOWS.index(50) if len(view) > 100 else 1
        self.zoom = 0  # each level halves the visible range around the cursor
        self._on_move = on_move
        first = view.kl_column
        others = [c for c in view.columns() if c not in (first, "norm")]
        self.flat = [c for c in others if is_flat(view, c)]
        self.columns = [first, "norm", *[c for c in others if c not in self.flat]][:MAX_PLOTS]
        self._room = len(self.columns)

    def compose(self) -> ComposeResult:
        yield Static("", id="plots-caption")
        for column in self.columns:
            yield PlotextPlot(id=f"plot-{column}")
        yield ExplorerFooter()

    def on_mount(self) -> None:
        self._fit(self.app.size.height)
        self.redraw()

    def on_resize(self, event: events.Resize) -> None:
        self._fit(event.size.height)
        self.redraw()

    @property
    def shown(self) -> list[str]:
        """The columns plotted now: as many as the height gives `PLOT_HEIGHT` lines each (at least one)."""
        return self.columns[: self._room]

    def _fit(self, height: int) -> None:
        self._room = max(1, min(len(self.columns), (height - 4) // PLOT_HEIGHT))
        for i, column in enumerate(self.columns):
            self.query_one(f"#plot-{column}", PlotextPlot).display = i < self._room

    @property
    def window(self) -> int:
        return WINDOWS[self.window_index]

    def visible_range(self) -> tuple[int, int]:
        n = len(self.view)
        span = max(8, n // (2**self.zoom))
        lo = max(0, min(self.cursor - span // 2, n - span))
        return lo, min(n - 1, lo + span - 1)

    def redraw(self) -> None:
        lo, hi = self.visible_range()
        xs = list(range(lo, hi + 1))
        first = self.columns[0]
        other = 1 if self.view.base_index == 0 else 0
        flat = "".join(f"; {title(c)} is {round(self.view.value(c, other), 4) + 0.0:g} on every row but the base (not plotted)"
                       for c in self.flat)
        hidden = self.columns[len(self.shown):]
        more = f"; {', '.join(title(c) for c in hidden)} on a taller terminal" if hidden else ""
        self.query_one("#plots-caption", Static).update(
            f"{self.view.name}: vectors {lo}..{hi} of {len(self.view)}, cursor {self.cursor} (red){flat}{more}"
        )
        for column in self.shown:
            values = self.view.values.get(column, [math.nan] * len(self.view))
            smooth = spark.moving_average(values, self.window) if column == first else None
            self._draw(column, xs, values, smooth)

    def _draw(self, column: str, xs: list[int], values: list[float], smooth: list[float] | None) -> None:
        widget = self.query_one(f"#plot-{column}", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        name = title(column)
        prompt = self.view.prompt_of(column)
        caption = f"{name} (on {prompt!r})" if prompt is not None else name
        known = [(x, values[x]) for x in xs if not math.isnan(values[x])]
        if not known:
            plt.title(f"{caption}: not measured yet")
        else:  # what each colour is goes in the title: a legend box would cover the data
            average = f", moving average over {self.window} ({AVERAGE})" if smooth is not None else ""
            plt.title(f"{caption} ({VALUES}){average}")
            plt.plot([x for x, _ in known], [y for _, y in known], marker="braille", color=VALUES)
            if smooth is not None:
                sm = [(x, smooth[x]) for x in xs if not math.isnan(smooth[x])]
                plt.plot([x for x, _ in sm], [y for _, y in sm], marker="braille", color=AVERAGE)
            plt.vertical_line(self.cursor, color=CURSOR)
            plt.xlim(xs[0], xs[-1])
            ticks = integer_ticks(xs[0], xs[-1])
            plt.xticks([float(t) for t in ticks], [str(t) for t in ticks])
        widget.refresh()

    def action_close(self) -> None:
        if self.is_active:
            self.dismiss(None)

    def action_move(self, step: int) -> None:
        self.cursor = max(0, min(len(self.view) - 1, self.cursor + step))
        self._on_move(self.cursor)
        self.redraw()

    def action_move_to(self, row: int) -> None:
        self.action_move((row % len(self.view)) - self.cursor)

    def action_window(self, step: int) -> None:
        self.window_index = max(0, min(len(WINDOWS) - 1, self.window_index + step))
        self.redraw()

    def action_zoom(self, step: int) -> None:
        self.zoom = max(0, min(12, self.zoom + step))
        self.redraw()
