"""Thousands of random keys on every screen, against the scripted backend and (briefly) a real model.

The app must stay up with no error: Textual re-raises any exception when `run_test` ends, and a
bug caught by the app's own guard shows as an "internal error" notification. Key sequences and
seeds that once crashed the explorer are kept below as regression tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from textual import events

from melbo_tui.models import ModelRequest
from melbo_tui.tui.app import ExplorerApp
from melbo_tui.tui.backend import Backend, EngineBackend, ScriptedBackend

from .conftest import make_bank, running
from .fuzz import fuzz, settle

SCREENS = {"MainScreen", "CompareScreen", "SweepScreen", "PlotsScreen", "HelpScreen", "SettingsScreen",
           "LineInputScreen", "ExplorerPalette", "JobScreen", "ColumnsScreen"}


class FuzzedApp(ExplorerApp):
    """The explorer minus two palette commands random keys must not reach: Quit (the run would
    end early; quitting is tested on its own) and Screenshot (it writes a file)."""

    def get_system_commands(self, screen):  # type: ignore[no-untyped-def]
        return (c for c in super().get_system_commands(screen) if c.title not in ("Quit", "Screenshot"))


def fuzzed_app(paths: list[Path], backend: Backend, tmp_path: Path) -> FuzzedApp:
    return FuzzedApp(paths, backend, cache_root=tmp_path / "cache", keymap={}, debounce=0.01)


def fast_backend() -> ScriptedBackend:
    backend = ScriptedBackend(token_seconds=0.001, tokens=8)
    backend.job_block, backend.job_steps, backend.job_step_seconds = 4, 2, 0.002
    return backend


def banks(tmp_path: Path) -> list[Path]:
    labels = ["code", "refusal-like", "", "gibberish"] * 15
    return [make_bank(tmp_path / "ortho.safetensors", 60, kind="ortho", orthogonal=True, labels=labels),
            make_bank(tmp_path / "melbo.safetensors", 12, seed=1, metrics=False)]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
async def test_random_keys_never_crash_the_app(tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # whatever random keys make the app write, it writes in here
    app = fuzzed_app(banks(tmp_path), fast_backend(), tmp_path)
    async with running(app, size=(120, 40)) as (pilot, seen):
        report = await fuzz(pilot, app, seed, keys=1200, burst=12)
        await settle(pilot, app)
        assert app.is_running and not seen.errors(), seen.errors()
    assert report.resizes > 0
    assert len(report.screens & SCREENS) >= 5, report.screens  # the keys reached the screens, not just the list


@pytest.mark.slow
async def test_random_keys_with_a_real_model(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same, briefly, on a real (tiny, random-weight) chat model: real generation, KL and jobs."""
    monkeypatch.chdir(tmp_path)
    bank = make_bank(tmp_path / "tiny.safetensors", 16, hidden=64, num_layers=6, source_layer=2, target_layer=4,
                     kind="ortho", metrics=False, labels=["a", "bb", "ccc", ""] * 4, model=str(tiny_model_dir))
    app = fuzzed_app([bank], EngineBackend(ModelRequest(str(tiny_model_dir), device="cpu", threads=1)), tmp_path)
    async with running(app, size=(100, 30)) as (pilot, seen):
        report = await fuzz(pilot, app, seed=11, keys=400)
        await settle(pilot, app, seconds=1.0)
        assert app.is_running and not seen.errors(), seen.errors()
    assert report.keys >= 400


async def queue(app, keys: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    for key in keys:
        event = events.Key(key, key if len(key) == 1 else None)
        event.set_sender(app)
        app.post_message(event)


@pytest.mark.parametrize("keys", [
    # Textual 8.2's palette list raises KeyError when paged before it is laid out (issue 13)
    ("ctrl+p", "pagedown"),
    ("ctrl+p", "s", "down", "pagedown"),
    ("ctrl+p", "pageup", "pagedown", "escape"),
    # the sweep's worker wrote to a row of a screen already dismissed: NoMatches (issue 13)
    ("w", "escape", "w", "escape", "w", "w", "escape"),
    # quit, then keys already on their way: a screen mounted while the app closed (NoMatches in on_mount)
    ("q", "e", "escape"),
    ("q", "p", "slash"),
])
async def test_key_sequences_that_once_crashed(tmp_path: Path, make_app, keys: tuple[str, ...],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    app = make_app(banks(tmp_path), fast_backend(), debounce=0.01)
    async with running(app) as (pilot, seen):
        await queue(app, keys)
        await pilot.pause(0.5)
        assert not seen.errors()
