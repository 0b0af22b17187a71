"""`p`: KL per index with its moving average, norm per index, cos to base; cursor line; zoom.

The cursor here is the list's cursor: moving it with left/right moves the highlighted vector
too (so its completion streams), and leaving the screen keeps it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Static
from textual_plotext import PlotextPlot

from melbo_tui.tui import spark
from melbo_tui.tui.bankview import BankView
from melbo_tui.tui.keymap import PLOT_KEYS, bindings

WINDOWS = (1, 5, 10, 25, 50, 100, 200)


class PlotsScreen(Screen[None]):
    DEFAULT_CSS = (Path(__file__).with_suffix(".tcss")).read_text(encoding="utf-8")
    BINDINGS = bindings(PLOT_KEYS)

    def __init__(self, view: BankView, cursor: int, on_move: Callable[[int], None]) -> None:
        super().__init__()
        self.view = view
        self.cursor = cursor
        self.window_index = WINDOWS.index(50) if len(view) > 100 else 1
        self.zoom = 0  # each level halves the visible range around the cursor
        self._on_move = on_move

    def compose(self) -> ComposeResult:
        yield Static("", id="plots-caption")
        yield PlotextPlot(id="plot-kl")
        yield PlotextPlot(id="plot-norm")
        yield PlotextPlot(id="plot-cos")
        yield Footer()

    def on_mount(self) -> None:
        self.redraw()

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
        kl = self.view.values["kl"]
        self.query_one("#plots-caption", Static).update(
            f"{self.view.name}: vectors {lo}..{hi} of {len(self.view)}, cursor {self.cursor}, "
            f"KL moving average over {self.window}"
        )
        self._draw("#plot-kl", "KL(P_i || P_0)", xs, kl, spark.moving_average(kl, self.window))
        self._draw("#plot-norm", "norm", xs, self.view.values["norm"], None)
        self._draw("#plot-cos", "cos to base", xs, self.view.values["cos_base"], None)

    def _draw(self, selector: str, title: str, xs: list[int], values: list[float], smooth: list[float] | None) -> None:
        widget = self.query_one(selector, PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        ys = [values[x] for x in xs]
        known = [(x, y) for x, y in zip(xs, ys) if not math.isnan(y)]
        if not known:
            plt.title(f"{title}: not measured yet")
        else:
            plt.title(title)
            plt.plot([x for x, _ in known], [y for _, y in known], marker="braille", label=title)
            if smooth is not None:
                sm = [(x, smooth[x]) for x in xs if not math.isnan(smooth[x])]
                plt.plot([x for x, _ in sm], [y for _, y in sm], marker="braille", label=f"moving avg {self.window}")
            plt.vertical_line(self.cursor, color="red")
            plt.xlim(xs[0], xs[-1])
        widget.refresh()

    def action_close(self) -> None:
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
