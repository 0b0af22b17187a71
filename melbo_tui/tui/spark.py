"""Sparklines as text: eight block characters, no widget, so a table cell can hold one."""

from __future__ import annotations

import math
from collections.abc import Sequence

BLOCKS = "▁▂▃▄▅▆▇█"


def scaled(values: Sequence[float], log: bool = False) -> list[float]:
    """Each value mapped to 0..1 over the finite range of `values` (NaN stays NaN)."""
    xs = [(math.log10(v + 1e-4) if log and v >= 0 else v) if not math.isnan(v) else math.nan for v in values]
    finite = [x for x in xs if math.isfinite(x)]
    if not finite:
        return [math.nan] * len(xs)
    lo, hi = min(finite), max(finite)
    span = hi - lo
    flat = span <= 1e-4 * max(abs(lo), abs(hi)) or span == 0  # float noise on equal values is not a signal
    return [math.nan if not math.isfinite(x) else (0.5 if flat else (x - lo) / span) for x in xs]


def block(level: float) -> str:
    if math.isnan(level):
        return " "
    return BLOCKS[min(len(BLOCKS) - 1, max(0, int(level * (len(BLOCKS) - 1) + 0.5)))]


def window_cells(levels: Sequence[float], width: int) -> list[str]:
    """For each row, a sparkline of the `width` rows around it (index order)."""
    chars = [block(v) for v in levels]
    half = width // 2
    n = len(chars)
    padded = " " * half + "".join(chars) + " " * half
    return [padded[i : i + width] for i in range(n)]


def buckets(values: Sequence[float], width: int) -> list[float]:
    """`values` squeezed into `width` columns by taking the max of each bucket (NaN-aware)."""
    n = len(values)
    if n == 0 or width <= 0:
        return []
    width = min(width, n)
    out = []
    for b in range(width):
        lo, hi = b * n // width, max(b * n // width + 1, (b + 1) * n // width)
        chunk = [v for v in values[lo:hi] if not math.isnan(v)]
        out.append(max(chunk) if chunk else math.nan)
    return out


def bucket_of(row: int, n: int, width: int) -> int:
    """Which of `width` buckets (as in `buckets`) holds `row`."""
    width = min(width, n)
    return min(width - 1, ((row + 1) * width - 1) // n) if n else 0


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Centred moving average ignoring NaN (the seed's KL plot used window 50)."""
    window = max(1, window)
    half = window // 2
    out = []
    n = len(values)
    for i in range(n):
        chunk = [v for v in values[max(0, i - half) : min(n, i - half + window)] if not math.isnan(v)]
        out.append(sum(chunk) / len(chunk) if chunk else math.nan)
    return out
