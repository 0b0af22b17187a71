"""The status line, drawn from reactives: set a field and it repaints, nothing refreshes it by hand.

When the line is too narrow, fields give way by priority (`fit`): the least important take their
short form, then go. The list's own state (bank and rows 8; selection, sort, composition mode and
scale 9) outranks transient news (read-ahead 1, model line 2, generating 3, measuring 4, job 5), so a streaming
completion never hides what the user has selected or how the list is sorted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.cells import cell_len
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

SEPARATOR = " │ "
DROP_AFTER = 7  # a field goes this many priority steps after it was shortened


@dataclass(frozen=True)
class Field:
    full: str
    short: str
    priority: int  # the higher, the longer it stays
    style: str = ""


def fit(fields: list[Field], width: int) -> list[tuple[str, str]]:
    """`(text, style)` of the fields that fit `width`, in their order.

    Fields give way in steps, least important first: a field takes its short form at its
    priority and goes at its priority + `DROP_AFTER`. So transient news (priority < 8) is
    shortened, then the bank name, then the model line goes; "gen…" outlasts the long forms of
    the selection, sort and composition, which go last of all.
    """
    shown = [True] * len(fields)
    texts = [f.full for f in fields]

    def used() -> int:
        kept = [t for keep, t in zip(shown, texts, strict=True) if keep]
        return sum(cell_len(t) for t in kept) + cell_len(SEPARATOR) * max(0, len(kept) - 1)

    steps = [(f.priority, 1, i) for i, f in enumerate(fields)] + [(f.priority + DROP_AFTER, 0, i) for i, f in enumerate(fields)]
    for _, shorten, i in sorted(steps):
        if used() <= width:
            break
        if shorten:
            texts[i] = fields[i].short
        else:
            shown[i] = False
    return [(t, f.style) for keep, f, t in zip(shown, fields, texts, strict=True) if keep]


class StatusBar(Widget):
    DEFAULT_CSS = (Path(__file__).with_suffix(".tcss")).read_text(encoding="utf-8")

    model: reactive[str] = reactive("loading model…")
    model_state: reactive[str] = reactive("loading")  # loading, ready, failed
    generating: reactive[bool] = reactive(False)
    metrics: reactive[str] = reactive("")  # e.g. "measuring KL 32/576"
    job: reactive[str] = reactive("")  # e.g. "ortho 4/8 [████░░░░░░] step 3/60 loss 0.51"
    read_ahead: reactive[str] = reactive("")  # e.g. "read ahead 3/12"
    bank: reactive[str] = reactive("loading bank…")  # the bank's file name, or why there is none
    bank_of: reactive[str] = reactive("")  # "2/3" when several banks are open
    rows: reactive[tuple[int, int]] = reactive((0, 0))  # shown, total
    filter: reactive[str] = reactive("")
    selected: reactive[int] = reactive(0)
    range_from: reactive[int | None] = reactive(None)
    sort: reactive[str] = reactive("idx")
    mode: reactive[str] = reactive("mean")
    scale: reactive[float] = reactive(1.0)

    def fields(self) -> list[Field]:
        short_model = {"loading": "model…", "ready": "model ✓", "failed": "model ✗"}[self.model_state]
        out = [Field(self.model, short_model, 2)]
        if self.generating:
            out.append(Field("generating…", "gen…", 3))
        if self.metrics:
            out.append(Field(self.metrics, self.metrics.removeprefix("measuring "), 4))
        if self.job:
            out.append(Field(self.job, " ".join(self.job.split()[:2]), 5))
        if self.read_ahead:
            out.append(Field(self.read_ahead, self.read_ahead.removeprefix("read "), 1, "dim"))
        shown, total = self.rows
        where = f"bank {self.bank_of} {self.bank}" if self.bank_of else self.bank
        out.append(Field(f"{where} ({shown}/{total} rows)", f"{self.bank} ({shown}/{total})", 8) if total else Field(where, where, 8))
        if self.filter:
            out.append(Field(f"filter: {self.filter}", "filtered", 6))
        if self.selected:
            out.append(Field(f"selected {self.selected}", f"sel {self.selected}", 9))
        if self.range_from is not None:
            out.append(Field(f"range from {self.range_from}", f"v{self.range_from}…", 7))
        out.append(Field(f"sort: {self.sort}", self.sort.replace(" ", ""), 9))
        scaled = self.scale != 1.0
        out.append(Field(f"compose: {self.mode} x{self.scale:g}", f"{self.mode} x{self.scale:g}", 9,
                         "bold yellow" if scaled else ""))
        return out

    def render(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        for i, (part, style) in enumerate(fit(self.fields(), self.size.width)):
            if i:
                text.append(SEPARATOR)
            text.append(part, style=style)
        return text
