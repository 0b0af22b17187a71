"""Filter expressions typed after `/`, and sorting of the vector list.

Grammar: clauses joined by `and` / `&` / `,`, alternatives by `or` / `|`:
`kl<0.1`, `label=code`, `norm>20 and cos<0.5`, `idx>=100 & idx<200`, `label~ref` (contains).
Fields: idx, label, sel (1 when selected) and every metric column the bank shows (kl, kl_rev,
kl_seq, kl_unsteered, err, norm, cos, score, sigma: whichever it has). A NaN metric never
matches a comparison.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from melbo_tui.errors import InputError
from melbo_tui.tui.bankview import ALIASES, BankView

ROW_FIELDS = {"idx": "idx", "index": "idx", "i": "idx", "row": "idx", "label": "label", "sel": "sel", "selected": "sel"}
_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<=": operator.le, ">=": operator.ge, "!=": operator.ne, "==": operator.eq,
    "<": operator.lt, ">": operator.gt, "=": operator.eq, "~": lambda a, b: str(b).lower() in str(a).lower(),
}
_CLAUSE = re.compile(r"^\s*([A-Za-z_\-]+)\s*(<=|>=|!=|==|<|>|=|~)\s*(.*?)\s*$")

Predicate = Callable[[BankView, int, Collection[int]], bool]


@dataclass(frozen=True)
class Clause:
    field: str
    op: str
    value: float | str

    def __call__(self, view: BankView, row: int, selected: Collection[int]) -> bool:
        if self.field == "label":
            return bool(_OPS[self.op](view.label_text(row), self.value))
        if self.field == "idx":
            left: float = float(row)
        elif self.field == "sel":
            left = 1.0 if row in selected else 0.0
        else:
            left = view.value(self.field, row)
            if math.isnan(left):
                return False
        return bool(_OPS[self.op](left, self.value))


def parse_filter(text: str, columns: Collection[str]) -> Predicate | None:
    """A predicate for `text` over a bank showing metric `columns`; None for an empty filter.

    `InputError` names what is wrong, including a field this bank has no values for.
    """
    text = text.strip()
    if not text:
        return None
    alternatives = [
        [_parse_clause(c, columns) for c in re.split(r"\s+and\s+|&|,", alt, flags=re.IGNORECASE) if c.strip()]
        for alt in re.split(r"\s+or\s+|\|", text, flags=re.IGNORECASE)
    ]
    if not any(alternatives):
        raise InputError(f"empty filter '{text}'")

    def predicate(view: BankView, row: int, selected: Collection[int]) -> bool:
        return any(all(c(view, row, selected) for c in clauses) for clauses in alternatives if clauses)

    return predicate


def _parse_clause(text: str, columns: Collection[str]) -> Clause:
    match = _CLAUSE.match(text)
    if not match:
        raise InputError(f"cannot read filter clause '{text.strip()}': use e.g. kl<0.1, norm>20, label=code")
    name, op, raw = match.groups()
    key = name.lower()
    field = ROW_FIELDS.get(key) or (key if key in columns else ALIASES.get(key))
    if field is None or (field not in ROW_FIELDS.values() and field not in columns):
        known = ", ".join(["idx", "label", "sel", *(c.replace("cos_base", "cos") for c in columns)])
        raise InputError(f"unknown filter field '{name}': this bank has {known}")
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


def sort_keys(view: BankView) -> list[str]:
    """What `s` cycles through: index, each metric column shown, label."""
    return ["idx", *view.columns(), "label"]


def visible_rows(view: BankView, predicate: Predicate | None, sort_key: str, reverse: bool,
                 selected: Collection[int]) -> list[int]:
    """Rows to show, filtered then sorted; NaN values and blank labels sort last either way."""
    rows = [r for r in range(len(view)) if predicate is None or predicate(view, r, selected)]
    if sort_key == "idx":
        return rows[::-1] if reverse else rows
    if sort_key == "label":
        labelled = sorted((r for r in rows if view.label_text(r)), key=lambda r: (view.label_text(r), r), reverse=reverse)
        return labelled + [r for r in rows if not view.label_text(r)]
    known = [r for r in rows if not math.isnan(view.value(sort_key, r))]
    unknown = [r for r in rows if math.isnan(view.value(sort_key, r))]
    return sorted(known, key=lambda r: view.value(sort_key, r), reverse=reverse) + unknown
