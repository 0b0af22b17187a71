"""Compositions of steering vectors into one, as in the seed's experiments; `Composition` names one.

- `mean`: the average of the selected vectors (seed: "mean of the first 20 -> refusal");
- `sum`: their sum;
- `mean-sqrt`: the mean times sqrt(k) (the seed's follow-up: for k orthogonal vectors of similar
  norm this keeps the norm of one vector, where the plain mean shrinks it by sqrt(k)).
A final `scale` multiplies the result. A single row is a composition of one (every mode gives
the row itself), and no row at all is the unsteered model, so every face names what steers a
completion with this one type. torch is imported only to compose: the explorer holds
compositions before its first frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from melbo_tui.errors import InputError
from melbo_tui.selection import format_rows

if TYPE_CHECKING:
    import torch


class ComposeMode(StrEnum):
    MEAN = "mean"
    SUM = "sum"
    MEAN_SQRT = "mean-sqrt"


@dataclass(frozen=True)
class Composition:
    """What steers: rows of a bank combined by `mode`, times `scale`; no rows = unsteered."""

    rows: tuple[int, ...] = ()
    mode: ComposeMode = ComposeMode.MEAN
    scale: float = 1.0

    def __post_init__(self) -> None:
        # a plain "sum" from a settings form or a JSON cache line becomes the enum, 2 becomes 2.0
        object.__setattr__(self, "rows", tuple(int(r) for r in self.rows))
        object.__setattr__(self, "mode", ComposeMode(self.mode))
        object.__setattr__(self, "scale", float(self.scale))

    @property
    def steered(self) -> bool:
        return bool(self.rows)

    @property
    def is_composition(self) -> bool:
        """More than one row: the mode matters (for one row every mode gives the row)."""
        return len(self.rows) > 1

    @property
    def label(self) -> str:
        """`vector 5`, `mean[1:4,7] x2`, `unsteered`: in headers, dump files and exports."""
        if not self.rows:
            return "unsteered"
        rows = format_rows(self.rows)
        text = f"{self.mode.value}[{rows}]" if self.is_composition else f"vector {rows}"
        return text if self.scale == 1.0 else f"{text} x{self.scale:g}"

    def key(self) -> str:
        """Stable identity for caches: equal keys steer with equal vectors."""
        if not self.rows:
            return "unsteered"
        mode = self.mode.value if self.is_composition else ComposeMode.MEAN.value
        return f"{mode}:{','.join(map(str, self.rows))}:x{self.scale!r}"


UNSTEERED = Composition()


def compose(vectors: torch.Tensor, composition: Composition) -> torch.Tensor:
    """One vector `[d_model]` from rows of `vectors  # [N, d_model]`."""
    check_scale(composition.scale)
    if not composition.rows:
        raise InputError("empty selection: nothing to compose")
    picked = vectors[list(composition.rows)]  # [k, d_model]
    k = picked.shape[0]
    if composition.mode == ComposeMode.SUM:
        combined = picked.sum(dim=0)
    elif composition.mode == ComposeMode.MEAN:
        combined = picked.mean(dim=0)
    else:
        combined = picked.mean(dim=0) * math.sqrt(k)
    return combined * composition.scale


def check_scale(scale: float) -> None:
    if not math.isfinite(scale):
        raise InputError(f"scale must be a finite number, got {scale}")
