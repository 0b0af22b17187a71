"""Row selections typed by a user (`0,3,7`, `1:11`, `1:4,9`, `-5:`, `::10`) and their short form.

Python slice semantics over `range(n)`, so `1:11` is rows 1..10 and `-3:` the last three.
Order is kept and duplicates are removed (a vector counted twice in a mean is never intended).
"""

from __future__ import annotations

from melbo_tui.errors import InputError


def parse_selection(spec: str, n: int) -> list[int]:
    """Rows of a bank of `n` vectors named by `spec`; raises `InputError` on anything odd."""
    if not spec or not spec.strip():
        raise InputError("empty selection: give indices or slices such as 1:11 or 0,3,7")
    rows: list[int] = []
    for item in spec.split(","):
        part = item.strip()
        if not part:
            raise InputError(f"empty item in selection '{spec}'")
        rows.extend(_parse_part(part, n, spec))
    unique = list(dict.fromkeys(rows))
    if not unique:
        raise InputError(f"selection '{spec}' selects no rows of a bank with {n} vectors")
    return unique


def _parse_part(part: str, n: int, spec: str) -> list[int]:
    if ":" not in part:
        index = _to_int(part, spec)
        if not -n <= index < n:
            raise InputError(f"index {index} out of range: the bank has {n} vectors (0..{n - 1})")
        return [index % n]
    pieces = part.split(":")
    if len(pieces) > 3:
        raise InputError(f"bad slice '{part}' in selection '{spec}'")
    start, stop, step = (_to_int(p, spec) if p.strip() else None for p in pieces + [""] * (3 - len(pieces)))
    if step == 0:
        raise InputError(f"slice step cannot be zero in '{part}'")
    return list(range(n))[slice(start, stop, step)]


def _to_int(text: str, spec: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise InputError(f"'{text.strip()}' is not an index in selection '{spec}'") from None


def format_rows(rows: tuple[int, ...] | list[int]) -> str:
    """`(1, 2, 3, 7)` -> `1:4,7`: the short form of rows that `parse_selection` reads back.

    Ascending runs of three or more become slices; order is kept, so the round trip is exact.
    """
    parts: list[str] = []
    i = 0
    while i < len(rows):
        j = i
        while j + 1 < len(rows) and rows[j + 1] == rows[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{rows[i]}:{rows[j] + 1}")
        else:
            parts.extend(str(r) for r in rows[i : j + 1])
        i = j + 1
    return ",".join(parts)
