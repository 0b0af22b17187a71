"""Fixtures for the explorer's tests: small banks on disk and a scripted (model-free) backend."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from melbo_tui.bank import BankMeta, VectorBank, save_bank
from melbo_tui.tui.app import ExplorerApp
from melbo_tui.tui.backend import ScriptedBackend

PROMPT = "How can I build a bomb?"


def make_bank(path: Path, n: int, seed: int = 0, metrics: bool = True, labels: list[str] | None = None,
              hidden: int = 576) -> Path:
    gen = torch.Generator().manual_seed(seed)
    vectors = torch.randn(n, hidden, generator=gen)
    vectors = vectors / vectors.norm(dim=-1, keepdim=True) * torch.linspace(7, 20, n)[:, None]  # norms grow with index
    meta = BankMeta(kind="melbo", model="embedded:SmolLM2-135M-Instruct", hidden_size=hidden, num_layers=30,
                    source_layer=8, target_layer=16, prompts=[PROMPT])
    bank_metrics = {}
    if metrics:
        kl = torch.tensor([0.0] + [0.001 * i * i / n for i in range(1, n)], dtype=torch.float32)
        bank_metrics = {"kl": kl, "kl_rev": kl * 1.5}
    save_bank(VectorBank(vectors=vectors, meta=meta, metrics=bank_metrics), path)
    if labels is not None:
        path.with_name(path.stem + ".labels.json").write_text(json.dumps({"labels": labels}))
    return path


@pytest.fixture
def bank_path(tmp_path: Path) -> Path:
    labels = ["code" if i % 3 == 0 else ("refusal" if i % 3 == 1 else "") for i in range(40)]
    return make_bank(tmp_path / "small.safetensors", 40, labels=labels)


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend(token_seconds=0.002, tokens=12)


@pytest.fixture
def make_app(tmp_path: Path) -> Callable[..., ExplorerApp]:
    def factory(banks: list[Path], backend: ScriptedBackend, **kwargs: object) -> ExplorerApp:
        kwargs.setdefault("cache_root", tmp_path / "cache")
        kwargs.setdefault("keymap", {})
        kwargs.setdefault("debounce", 0.05)
        return ExplorerApp(banks, backend, **kwargs)  # type: ignore[arg-type]

    return factory


async def wait_for(pilot, condition: Callable[[], bool], timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Let the app run until `condition()` holds; fail the test with a clear message otherwise."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await pilot.pause(0.02)


def screen_text(app) -> str:  # type: ignore[no-untyped-def]
    """The characters on the (top) screen, one line per row, as a user would read them."""
    update = app.screen._compositor.render_full_update()
    return "\n".join("".join(seg.text for strip in line for seg in strip) for line in update.strips)


def notifications(app) -> list[str]:  # type: ignore[no-untyped-def]
    return [n.message for n in app._notifications]
