"""What to generate: the prompt and sampling settings, and which vector or composition steers."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from melbo_tui.errors import InputError

COMPOSE_MODES = ("mean", "sum", "mean-sqrt")


@dataclass(frozen=True)
class ExploreSettings:
    """Everything a completion depends on besides the steering vector."""

    prompt: str
    system: str | None = None
    raw: bool = False
    temperature: float = 0.0
    max_new_tokens: int = 48
    seed: int = 0
    scale: float = 1.0
    mode: str = "mean"

    def check(self) -> None:
        if not self.prompt.strip():
            raise InputError("empty prompt")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise InputError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 1 <= self.max_new_tokens <= 4096:
            raise InputError(f"max new tokens must be 1..4096, got {self.max_new_tokens}")
        if not math.isfinite(self.scale):
            raise InputError(f"scale must be a finite number, got {self.scale}")
        if self.mode not in COMPOSE_MODES:
            raise InputError(f"compose mode must be one of {', '.join(COMPOSE_MODES)}, got {self.mode}")

    def with_mode(self, mode: str) -> ExploreSettings:
        return replace(self, mode=mode)


@dataclass(frozen=True)
class Target:
    """What steers a completion: no vector, one row, or a composition of rows.

    `rows == ()` is the unsteered baseline. A single row is composed too (mean of one row
    times `scale`) so a scaled vector and a composition go through the same code.
    """

    rows: tuple[int, ...]
    mode: str = "mean"
    scale: float = 1.0

    @property
    def steered(self) -> bool:
        return bool(self.rows)

    @property
    def is_composition(self) -> bool:
        return len(self.rows) > 1

    @property
    def label(self) -> str:
        if not self.rows:
            return "unsteered"
        if len(self.rows) == 1:
            text = f"vector {self.rows[0]}"
        else:
            text = f"{self.mode}[{compact_rows(self.rows)}] (k={len(self.rows)})"
        return text if self.scale == 1.0 else f"{text} x{self.scale:g}"

    def key(self) -> str:
        """Stable identity for the completion cache."""
        if not self.rows:
            return "unsteered"
        mode = "mean" if len(self.rows) == 1 else self.mode
        return f"{mode}:{','.join(map(str, self.rows))}:x{self.scale!r}"


UNSTEERED = Target(rows=())


def compact_rows(rows: tuple[int, ...]) -> str:
    """`(1,2,3,4,9)` -> `1-4,9`: short labels for long selections."""
    ordered = sorted(rows)
    parts: list[str] = []
    start = prev = ordered[0]
    for row in ordered[1:] + [None]:  # type: ignore[list-item]
        if row is not None and row == prev + 1:
            prev = row
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if row is not None:
            start = prev = row
    return ",".join(parts)
