"""Textual's footer, with help and quit first: a narrow terminal cuts the footer's end, never `?` or `q`."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.widgets import Footer

FIRST = ("help", "quit")  # actions shown before every other key


class ExplorerFooter(Footer):
    def compose(self) -> ComposeResult:
        keys = list(super().compose())
        yield from sorted(keys, key=lambda key: 0 if getattr(key, "action", "") in FIRST else 1)  # stable: the rest keep their order
