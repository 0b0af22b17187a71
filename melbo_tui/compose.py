"""Compositions of several steering vectors into one, as in the seed's experiments.

- `mean`: the average of the selected vectors (seed: "mean of the first 20 -> refusal");
- `sum`: their sum;
- `mean-sqrt`: the mean times sqrt(k) (the seed's follow-up: for k orthogonal vectors of similar
  norm this keeps the norm of one vector, where the plain mean shrinks it by sqrt(k)).
A final `scale` multiplies the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch

from melbo_tui.errors import InputError


class ComposeMode(str, Enum):
    MEAN = "mean"
    SUM = "sum"
    MEAN_SQRT = "mean-sqrt"


@dataclass(frozen=True)
class Composition:
    """Which rows and how to combine them; `label` names it in headers and dump files."""

    rows: tuple[int, ...]
    mode: ComposeMode = ComposeMode.MEAN
    scale: float = 1.0

    @property
    def label(self) -> str:
        rows = _compact(self.rows)
        text = f"{self.mode.value}[{rows}]" if len(self.rows) > 1 or self.mode != ComposeMode.MEAN else f"vector {rows}"
        return text if self.scale == 1.0 else f"{text} x{self.scale:g}"


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


def _compact(rows: tuple[int, ...]) -> str:
    """`(1,2,3,7)` -> `1:4,7`: short labels for long contiguous selections."""
    parts: list[str] = []
    i = 0
    while i < len(rows):
        j = i
        while j + 1 < len(rows) and rows[j + 1] == rows[j] + 1:
            j += 1
        parts.append(str(rows[i]) if j - i < 2 else f"{rows[i]}:{rows[j] + 1}")
        if 0 < j - i < 2:
            parts.extend(str(r) for r in rows[i + 1 : j + 1])
        i = j + 1
    return ",".join(parts)
