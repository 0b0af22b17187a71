"""Every screen and dialog of the explorer as a picture, at 80x24, 120x40 and 200x50 (pytest-textual-snapshot).

Each scene runs the real app on the scripted model (its times are nominal, so nothing depends on
the machine's load), waits until everything in the background has settled, and compares the
SVG screenshot with the one reviewed by eye and kept in `__snapshots__/`. A missing snapshot
fails; `pytest tests/tui/test_snapshots.py --snapshot-update` writes them after a deliberate
change of the layout, to be looked at before they are committed. The 120x40 main screen is the
README's picture.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from textual.pilot import Pilot
from textual.widgets import Input

from melbo_tui.bank import BankMeta, VectorBank, save_bank
from melbo_tui.tui.app import ExplorerApp
from melbo_tui.tui.backend import ScriptedBackend

from .conftest import PROMPT, wait_for

SIZES = [(80, 24), (120, 40), (200, 50)]
LABELS = ["code", "code", "other", "refusal", "code", "instructions", "repetition", "code"]

# scene -> the keys a user presses (after the app has settled on the first bank)
SCENES: dict[str, tuple[str, ...]] = {
    "main": ("j",),
    "composition": ("j", "space", "space", "space", "c"),
    "compare": ("j", "b"),
    "sweep": ("w",),
    "plots": ("j", "p"),
    "help": ("question_mark",),
    "columns": ("j", "i"),
    "settings": ("e",),
    "filter": ("slash", *"label~cod"),
    "jump": ("colon",),
    "export": ("x",),
    "ortho_dialog": ("j", "o"),
    "train_dialog": ("T",),
    "palette": ("ctrl+p",),
}


def ortho_bank(path: Path, n: int = 40) -> Path:
    """A MELBO-ortho bank as `ortho` and `eval` leave it: theta0, orthogonal rows, metrics, the eval record, labels."""
    gen = torch.Generator().manual_seed(7)
    vectors = torch.linalg.qr(torch.randn(n, 576, generator=gen).T)[0].T * torch.linspace(15, 48, n)[:, None]
    ramp = torch.linspace(0, 1, n)
    kl_seq = (0.05 + 0.6 * ramp**2 + 0.05 * torch.rand(n, generator=gen)).clamp_min(0)
    kl_seq[0] = 0.0
    err = 0.45 + 0.7 * ramp
    err[0] = 0.0
    metrics = {"kl_seq": kl_seq, "kl": kl_seq * 1.3, "kl_rev": kl_seq * 1.2, "err": err,
               "kl_unsteered": 1.5 + 0.5 * torch.rand(n, generator=gen)}
    meta = BankMeta(kind="ortho", model="embedded:SmolLM2-135M-Instruct", hidden_size=576, num_layers=30, source_layer=8,
                    target_layer=16, prompts=[PROMPT], radius=15.0,
                    extra={"eval": {"prompt": PROMPT, "unsteered": {"kl_seq": 0.458, "kl": 2.1, "kl_rev": 1.88, "err": 1.0}}})
    save_bank(VectorBank(vectors=vectors, meta=meta, metrics=metrics), path)
    labels = [LABELS[i % len(LABELS)] for i in range(n)]
    made_on = {"prompt": PROMPT, "system": None, "raw": False, "max_new_tokens": 48, "temperature": 0.0, "seed": 0}
    path.with_name(path.stem + ".labels.json").write_text(json.dumps({"labels": labels, "made_on": made_on}))
    return path


async def settle(pilot: Pilot[Any]) -> None:
    """Wait until nothing runs in the background, then hide what a moment shows (toasts, a blinking cursor)."""
    app: Any = pilot.app
    main = app.main

    def quiet() -> bool:
        return (main.view is not None and main.session.model_of(main.view).ready and main.vector_list.row_count > 0
                and not main.panel.streaming
                and not main.read_ahead.running and not main.measurer.status and not any(w.is_running for w in app.workers))

    await wait_for(pilot, quiet, timeout=20)
    await pilot.pause(0.1)
    await wait_for(pilot, quiet, timeout=20)
    for field in app.screen.query(Input):
        field.cursor_blink = False
    app.clear_notifications()
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("scene", list(SCENES))
def test_screen(scene: str, size: tuple[int, int], snap_compare: Any, tmp_path: Path) -> None:
    bank = ortho_bank(tmp_path / "ortho-code.safetensors")
    app = ExplorerApp([bank], ScriptedBackend(token_seconds=0.001, tokens=40), cache_root=tmp_path / "cache", keymap={},
                      debounce=0.0, workspace=tmp_path)

    async def act(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        for key in SCENES[scene]:
            await pilot.press(key)
            await pilot.pause(0.05)
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=act)
