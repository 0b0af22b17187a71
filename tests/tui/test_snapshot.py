"""Text snapshots of the main screen (pytest-textual-snapshot does not install beside pytest 9).

The screen is rendered to plain characters; timings (tok/s) are masked. To accept a deliberate
change of the layout: MELBO_UPDATE_SNAPSHOTS=1 pytest tests/tui/test_snapshot.py
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from melbo_tui.tui.backend import ScriptedBackend

from .conftest import make_bank, screen_text, wait_for

SNAPSHOTS = Path(__file__).parent / "snapshots"


def normalised(text: str) -> str:
    lines = [line.rstrip() for line in text.splitlines()]
    text = "\n".join(lines) + "\n"
    text = re.sub(r"\d+\.\d tok/s", "N tok/s", text)  # speeds vary run to run
    return re.sub(r"(max=\d+ tok  layer \d+  )\S+( \S+)?$", r"\1N tok/s", text, flags=re.MULTILINE)


@pytest.mark.parametrize("size", [(120, 30), (80, 24)])
async def test_main_screen_snapshot(tmp_path: Path, make_app, size: tuple[int, int]) -> None:
    labels = ["code", "refusal", "", "list"] * 5
    bank = make_bank(tmp_path / "snap.safetensors", 20, labels=labels)
    backend = ScriptedBackend(token_seconds=0.0, tokens=10)
    app = make_app([bank], backend)
    async with app.run_test(size=size) as pilot:
        await pilot.press("j", "j", "space")
        # vector 3's own completion, not vector 2's finishing before the space moved the cursor on
        await wait_for(pilot, lambda: app.current_row() == 3 and "mean_3_x1.0-w9" in app.panel.texts()["steered"]
                       and "tok/s]" in app.panel.column("steered").note)
        await pilot.pause(0.1)
        text = normalised(screen_text(app))
    expected = SNAPSHOTS / f"main_{size[0]}x{size[1]}.txt"
    if os.environ.get("MELBO_UPDATE_SNAPSHOTS") or not expected.exists():
        expected.parent.mkdir(exist_ok=True)
        expected.write_text(text, encoding="utf-8")
    assert text == expected.read_text(encoding="utf-8")
