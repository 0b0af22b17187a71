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

from .conftest import make_bank, running, screen_text, steered, wait_for

SNAPSHOTS = Path(__file__).parent / "snapshots"


def normalised(text: str) -> str:
    lines = [line.rstrip() for line in text.splitlines()]
    text = "\n".join(lines) + "\n"
    return re.sub(r"\d+\.\d tok/s", "N tok/s", text)  # speeds vary run to run


@pytest.mark.parametrize("size", [(120, 30), (80, 24)])
async def test_main_screen_snapshot(tmp_path: Path, make_app, size: tuple[int, int]) -> None:
    labels = ["code", "refusal", "", "list"] * 5
    bank = make_bank(tmp_path / "snap.safetensors", 20, labels=labels)
    backend = ScriptedBackend(token_seconds=0.0, tokens=10)
    app = make_app([bank], backend)
    async with running(app, size=size) as (pilot, _):
        await wait_for(pilot, lambda: app.main.view.has("kl_unsteered"))
        await pilot.press("j", "j", "space")
        # vector 3's own completion, not vector 2's finishing before the space moved the cursor on
        await wait_for(pilot, lambda: app.main.vector_list.current_row() == 3 and "mean_3_x1.0-w9" in steered(app)
                       and "tok/s]" in app.main.panel.text(0).note and "measuring" not in screen_text(app))
        await pilot.pause(0.1)
        text = normalised(screen_text(app))
    expected = SNAPSHOTS / f"main_{size[0]}x{size[1]}.txt"
    if os.environ.get("MELBO_UPDATE_SNAPSHOTS") or not expected.exists():
        expected.parent.mkdir(exist_ok=True)
        expected.write_text(text, encoding="utf-8")
    assert text == expected.read_text(encoding="utf-8")
