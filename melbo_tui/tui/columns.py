"""What each column of the vector list means, which way is better, and how a value is written.

The list, its legend line, the column screen (`i`) and the help all read this table, so a
column is explained once. "Better" is the direction that reads as "reproduces the base" in a
bank with a base row (MELBO-ortho, imported), and as "changes the model more" for KL to the
unsteered model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from melbo_tui.tui.bankview import BankView


class Better(StrEnum):
    LOWER = "lower"
    HIGHER = "higher"
    NEITHER = ""


@dataclass(frozen=True)
class ColumnInfo:
    title: str
    meaning: str  # one line, in the paper's words
    better: Better = Better.NEITHER
    why: str = ""  # what "better" means here, e.g. "closer to the base"


COLUMNS: dict[str, ColumnInfo] = {
    "idx": ColumnInfo("idx", "the vector's row in the bank (the base row is marked θ0 where it is a reference)"),
    "label": ColumnInfo("label", "what the row's greedy completion does, by rule; (in parentheses) = made on another prompt"),
    "kl_seq": ColumnInfo("KL-seq", "mean KL(P_base || P_i) over the base's first 32 greedy tokens, teacher-forced",
                         Better.LOWER, "closer to the base"),
    "kl": ColumnInfo("KL", "KL(P_i || P_base) of the next token after the prompt (the seed's; one token can be gamed)",
                     Better.LOWER, "closer to the base"),
    "kl_rev": ColumnInfo("KL-rev", "KL(P_base || P_i) of the next token after the prompt", Better.LOWER, "closer to the base"),
    "kl_unsteered": ColumnInfo("KL-unst", "KL(P_i || P_unsteered) of the next token: how much the vector changes the model",
                               Better.HIGHER, "a stronger effect"),
    "err": ColumnInfo("err", "target-layer RMS error to the base over the compared positions / that of no vector",
                      Better.LOWER, "closer to the base's effect"),
    "norm": ColumnInfo("norm", " || theta_i || , the vector's length"),
    "cos_base": ColumnInfo("cos", "cosine of theta_i to the base row (0 for MELBO-ortho vectors, by construction)"),
    "score": ColumnInfo("score", "DCT: α², the factor's share of the fitted response", Better.HIGHER, "more of the response"),
    "sigma": ColumnInfo("σ", "Jacobian: the singular value of the direction", Better.HIGHER, "a stronger linear response"),
    "kl_spark": ColumnInfo("KL~", "the first KL column over the 7 rows around this one (log scale, index order)"),
    "norm_spark": ColumnInfo("norm~", "the norm over the 7 rows around this one (index order)"),
}

# column formats; the rest are KL-like: 3 decimals
FORMATS = {"norm": ".1f", "cos_base": ".2f", "sigma": ".3g", "score": ".3g"}


def info(column: str) -> ColumnInfo:
    return COLUMNS.get(column, ColumnInfo(column, column))


def fmt(value: float, column: str) -> str:
    """A value as the list writes it: a dash when unknown, never "-0.00"."""
    if math.isnan(value):
        return "–"
    text = format(value, FORMATS.get(column, ".3f"))
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def is_flat(view: BankView, column: str) -> bool:
    """The same value on every row but the base (cos to θ0 in a MELBO-ortho bank is 0 by construction)."""
    values = view.values.get(column, [])
    base = view.base_index
    known = [v for i, v in enumerate(values) if i != base and not math.isnan(v)]
    return bool(known) and max(known) - min(known) <= 1e-6 * max(1.0, *(abs(v) for v in known))
