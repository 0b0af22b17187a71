"""Bank-wide sparklines of the default KL column and the norm, squeezed to the widget's width.

The cursor's column is marked; the last line says which prompt the KL was measured on.
"""

from __future__ import annotations

import math
from pathlib import Path

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from melbo_tui.tui import spark
from melbo_tui.tui.bankview import BankView, title

LABEL_WIDTH = 8


class BankSparklines(Widget):
    DEFAULT_CSS = (Path(__file__).with_suffix(".tcss")).read_text(encoding="utf-8")

    cursor: reactive[int] = reactive(0)

    def __init__(self, id: str | None = None) -> None:
        super().__init__(id=id)
        self._view: BankView | None = None
        self._levels: dict[tuple[int, str, int], list[float]] = {}  # (values id, column, width) -> levels

    def set_view(self, view: BankView | None) -> None:
        self._view = view
        self._levels.clear()
        self.refresh()

    def render(self) -> Text:
        view = self._view
        if view is None or len(view) == 0:
            return Text("no bank loaded", style="dim")
        width = max(4, self.size.width - LABEL_WIDTH)
        n = len(view)
        mark = spark.bucket_of(min(self.cursor, n - 1), n, width)
        kl = view.kl_column
        out = Text(no_wrap=True, overflow="ellipsis")
        for column, log in ((kl, True), ("norm", False)):
            out.append(f"{title(column):<{LABEL_WIDTH - 1}} ", style="bold")
            if not view.has(column):
                out.append("(not measured yet)", style="dim")
            else:
                key = (id(view.values[column]), column, width)  # a measurement replaces the list: a new key
                if key not in self._levels:
                    self._levels[key] = spark.scaled(spark.buckets(view.values[column], width), log=log)
                for b, level in enumerate(self._levels[key]):
                    char = spark.block(level) if not math.isnan(level) else "·"
                    out.append(char, style="reverse bold" if b == mark else "")
            out.append("\n")
        marker = f"{'':<{LABEL_WIDTH}}" + " " * mark + f"^{self.cursor}"
        out.append(marker, style="bold")
        prompt = view.prompt_of(kl)
        if prompt is not None:
            out.append(f"   {title(kl)} on {prompt!r}", style="dim")
        return out
