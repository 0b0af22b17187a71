"""Bank-wide sparklines of KL and norm, squeezed to the widget's width, the cursor's column marked."""

from __future__ import annotations

import math
from pathlib import Path

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from melbo_tui.tui import spark
from melbo_tui.tui.bankview import BankView

LABEL_WIDTH = 6


class BankSparklines(Widget):
    DEFAULT_CSS = (Path(__file__).with_suffix(".tcss")).read_text(encoding="utf-8")

    cursor: reactive[int] = reactive(0)

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._view: BankView | None = None
        self._version = 0

    def set_view(self, view: BankView | None) -> None:
        self._view = view
        self.refresh()

    def render(self) -> Text:
        view = self._view
        if view is None or len(view) == 0:
            return Text("no bank loaded", style="dim")
        width = max(4, self.size.width - LABEL_WIDTH)
        n = len(view)
        mark = spark.bucket_of(min(self.cursor, n - 1), n, width)
        out = Text(no_wrap=True, overflow="crop")
        for name, column, log in (("KL", "kl", True), ("norm", "norm", False)):
            values = view.values[column]
            out.append(f"{name:<{LABEL_WIDTH - 1}} ", style="bold")
            if not view.has(column):
                out.append("(not measured yet)", style="dim")
            else:
                levels = spark.scaled(spark.buckets(values, width), log=log)
                for b, level in enumerate(levels):
                    char = spark.block(level) if not math.isnan(level) else "·"
                    out.append(char, style="reverse bold" if b == mark else "")
            out.append("\n")
        out.append(f"{'':<{LABEL_WIDTH}}" + " " * mark + f"^{self.cursor}", style="bold")
        return out
