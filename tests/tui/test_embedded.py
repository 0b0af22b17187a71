"""The explorer against the real embedded model: a completion streams, KL is measured on demand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from melbo_tui.bank import BankMeta, VectorBank, save_bank
from melbo_tui.models import ModelRequest
from melbo_tui.tui.app import ExplorerApp
from melbo_tui.tui.backend import EngineBackend

from .conftest import PROMPT, running, screen_text, steered, wait_for

pytestmark = pytest.mark.embedded


def tiny_bank(path: Path) -> Path:
    gen = torch.Generator().manual_seed(3)
    vectors = torch.randn(4, 576, generator=gen)
    vectors = vectors / vectors.norm(dim=-1, keepdim=True) * 50.0  # norm ~50: between mild and gibberish
    meta = BankMeta(kind="melbo", model="embedded:SmolLM2-135M-Instruct", hidden_size=576, num_layers=30,
                    source_layer=8, target_layer=16, prompts=[PROMPT])
    save_bank(VectorBank(vectors=vectors, meta=meta), path)
    return path


@pytest.mark.slow
async def test_real_completion_streams_and_kl_is_measured(tmp_path: Path) -> None:
    bank = tiny_bank(tmp_path / "tiny.safetensors")
    app = ExplorerApp([bank], EngineBackend(ModelRequest("embedded", device="cpu")), cache_root=tmp_path / "cache", keymap={})
    lengths: list[int] = []
    async with running(app) as (pilot, seen):
        await wait_for(pilot, lambda: app.main.session.model_of(app.main.view).ready, timeout=60)

        def finished() -> bool:
            lengths.append(len(steered(app)))
            return "tok/s]" in app.main.panel.text(0).note

        await wait_for(pilot, finished, timeout=90)
        text = steered(app)
        assert len(text.split()) >= 5
        assert len({n for n in lengths if 0 < n < len(text)}) >= 2  # it grew piece by piece, not all at once
        view = app.main.view
        await wait_for(pilot, lambda: view.has("kl_unsteered"), timeout=60)  # a MELBO bank: KL to the unsteered model
        assert all(v > 0 for v in view.values["kl_unsteered"])
        await wait_for(pilot, lambda: "tok/s" in screen_text(app) and "vector 0" in screen_text(app))
        assert not seen.errors()
