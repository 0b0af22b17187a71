"""Fixtures for the explorer's tests: small banks on disk and a scripted (model-free) backend."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

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
        app = ExplorerApp(banks, backend, **kwargs)  # type: ignore[arg-type]
        app.run_test = _ready_first(app, app.run_test)  # type: ignore[method-assign]
        return app

    return factory


def _ready_first(app: ExplorerApp, run_test: Callable[..., Any]) -> Callable[..., Any]:
    """`run_test` that hands over the pilot once the first bank's rows are in the table.

    Banks load in a worker; keys pressed before the rows exist move nothing (as for a user who
    types within the first ~0.1 s), which made key-counting tests race the loader. A bank that
    never loads (error tests) just waits out the short grace period.
    """

    @contextlib.asynccontextmanager
    async def ready(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async with run_test(*args, **kwargs) as pilot:
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline and not _has_rows(app):
                await pilot.pause(0.02)
            yield pilot

    return ready


def _has_rows(app: ExplorerApp) -> bool:
    try:
        return app.table.row_count > 0
    except Exception:  # not mounted yet
        return False


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
