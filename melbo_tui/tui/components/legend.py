"""One line above the list: what the column read now means, which way is better, the value to beat.

The column read now is the one the list is sorted by, else the bank's first KL. Where the bank
has a base row and the unsteered model's value is known, the line gives that value and how many
rows beat it (marked ✓ in the list); a column measured on another prompt than the one being
completed says so.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from melbo_tui.tui.bankview import BankView
from melbo_tui.tui.columns import Better, fmt, info


def legend_text(view: BankView, column: str, prompt: str | None) -> Text:
    about = info(column)
    text = Text(overflow="ellipsis")
    text.append(f"{about.title}: ", style="bold")
    measured_on = view.prompt_of(column)
    if prompt is not None and measured_on is not None and measured_on != prompt:
        text.append(f"measured on {measured_on!r}, not this prompt (M) · ", style="yellow")
    if column not in ("idx", "label") and not view.has(column):
        text.append("not measured yet", style="dim")
    elif about.better:
        text.append(f"{about.better.value} = {about.why}")
        bar = view.bar(column)
        if bar is not None:
            beating = sum(view.beats(column, r) for r in range(len(view)))
            text.append(f" · ✓ {beating}/{len(view) - 1}", style="green")
            text.append(" beat unsteered ")
            text.append(fmt(bar, column), style="bold")
        elif about.better == Better.HIGHER and column == "kl_unsteered":
            text.append(" (the unsteered model: 0)", style="dim")
        elif view.kind.has_base and column in ("kl", "kl_rev", "kl_seq"):
            text.append(" · unsteered value not stored (M measures it)", style="dim")
    else:
        text.append(about.meaning)
    text.append(" · i: columns", style="dim")
    return text


class Legend(Static):
    DEFAULT_CSS = "Legend { height: 2; color: $text-muted; }"  # the main screen sets 1 when the list spans the screen

    def show(self, view: BankView | None, column: str, prompt: str | None) -> None:
        self.update(legend_text(view, column, prompt) if view is not None else "")
