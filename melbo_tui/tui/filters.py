"""Filter expressions typed after `/`, and sort keys for the vector list.

Grammar: clauses joined by `and` / `&` / `,`, alternatives by `or` / `|`:
`kl<0.1`, `label=code`, `norm>20 and cos<0.5`, `idx>=100 & idx<200`, `label~ref` (contains).
Fields: idx, kl, kl_rev, norm, cos, label, sel. A NaN metric never matches a comparison.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from melbo_tui.errors import InputError
from melbo_tui.tui.bankview import BankView

FIELDS = {
    "idx": "idx", "index": "idx", "i": "idx", "row": "idx",
    "kl": "kl", "kl_rev": "kl_rev", "klrev": "kl_rev", "kl-rev": "kl_rev",
    "norm": "norm", "cos": "cos_base", "cos_base": "cos_base",
    "label": "label", "sel": "sel", "selected": "sel",
}
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le, ">=": operator.ge, "!=": operator.ne, "==": operator.eq,
    "<": operator.lt, ">": operator.gt, "=": operator.eq, "~": lambda a, b: str(b).lower() in str(a).lower(),
}
_CLAUSE = re.compile(r"^\s*([A-Za-z_\-]+)\s*(<=|>=|!=|==|<|>|=|~)\s*(.*?)\s*$")

Predicate = Callable[[BankView, int, set[int]], bool]
SORT_KEYS = ("idx", "kl", "kl_rev", "norm", "cos_base", "label")


@dataclass(frozen=True)
class Clause:
    field: str
    op: str
    value: float | str

    def __call__(self, view: BankView, row: int, selected: set[int]) -> bool:
        if self.field == "label":
            return bool(_OPS[self.op](view.labels[row], self.value))
        if self.field == "idx":
            left: float = float(row)
        elif self.field == "sel":
            left = 1.0 if row in selected else 0.0
        else:
            left = view.value(self.field, row)
            if math.isnan(left):
                return False
        return bool(_OPS[self.op](left, self.value))


def parse_filter(text: str) -> Predicate | None:
    """A predicate for `text`, None for an empty filter; `InputError` names what is wrong."""
    text = text.strip()
    if not text:
        return None
    alternatives = [
        [_parse_clause(c) for c in re.split(r"\s+and\s+|&|,", alt, flags=re.IGNORECASE) if c.strip()]
        for alt in re.split(r"\s+or\s+|\|", text, flags=re.IGNORECASE)
    ]
    if not any(alternatives):
        raise InputError(f"empty filter '{text}'")

    def predicate(view: BankView, row: int, selected: set[int]) -> bool:
        return any(all(c(view, row, selected) for c in clauses) for clauses in alternatives if clauses)

    return predicate


def _parse_clause(text: str) -> Clause:
    match = _CLAUSE.match(text)
    if not match:
        raise InputError(f"cannot read filter clause '{text.strip()}': use e.g. kl<0.1, norm>20, label=code")
    name, op, raw = match.groups()
    field = FIELDS.get(name.lower())
    if field is None:
        raise InputError(f"unknown filter field '{name}': use one of idx, kl, kl_rev, norm, cos, label, sel")
    if field == "label":
        if op not in ("=", "==", "!=", "~"):
            raise InputError(f"label only takes =, != or ~ (contains), got '{op}'")
        return Clause(field, op, raw.strip("'\""))
    if op == "~":
        raise InputError(f"'~' (contains) only works on label, not {name}")
    try:
        value = float(raw)
    except ValueError:
        raise InputError(f"'{raw}' is not a number in filter clause '{text.strip()}'") from None
    return Clause(field, op, value)


def visible_rows(view: BankView, predicate: Predicate | None, sort_key: str, reverse: bool, selected: set[int]) -> list[int]:
    """Rows to show, filtered then sorted; NaN values sort last either way."""
    rows = [r for r in range(len(view)) if predicate is None or predicate(view, r, selected)]
    if sort_key == "idx":
        return rows[::-1] if reverse else rows
    if sort_key == "label":
        labelled = sorted((r for r in rows if view.labels[r]), key=lambda r: (view.labels[r], r), reverse=reverse)
        return labelled + [r for r in rows if not view.labels[r]]
    values = view.values[sort_key]
    known = [r for r in rows if not math.isnan(values[r])]
    unknown = [r for r in rows if math.isnan(values[r])]
    return sorted(known, key=lambda r: values[r], reverse=reverse) + unknown
