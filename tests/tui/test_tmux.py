"""A real terminal: tmux runs `melbo-tui open BANK`, we read the pane like a person would."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from melbo_tui.models import cache_dir

from .conftest import make_bank

pytestmark = [pytest.mark.embedded, pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]

MELBO = Path(sys.executable).with_name("melbo-tui")


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=False, capture_output=True, text=True).stdout


def wait_pane(session: str, needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    pane = ""
    while time.monotonic() < deadline:
        pane = tmux("capture-pane", "-p", "-t", session)
        if needle in pane:
            return pane
        time.sleep(0.2)
    raise AssertionError(f"'{needle}' never appeared in the pane; last screen:\n{pane}")


@pytest.mark.slow
def test_open_browse_stream_and_quit_in_tmux(tmp_path: Path) -> None:
    bank = make_bank(tmp_path / "demo.safetensors", 30, labels=["code"] * 30)
    cache = tmp_path / "cache"
    cache.mkdir()
    models = cache_dir() / "models"
    if models.is_dir():  # reuse the converted embedded model instead of converting it again
        (cache / "models").symlink_to(models)
    session = f"melbo-test-{os.getpid()}"
    command = f"MELBO_TUI_CACHE={cache} {MELBO} open {bank} --max-new-tokens 16; echo melbo-exit=$?; sleep 30"
    tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "40", command)
    try:
        wait_pane(session, "demo.safetensors", timeout=15)
        pane = wait_pane(session, "tok/s]", timeout=120)  # a completion streamed to the end
        assert "vector 0" in pane and "unsteered: no vector" in pane  # steered beside unsteered, no key pressed
        tmux("send-keys", "-t", session, "j")
        wait_pane(session, "vector 1", timeout=10)
        for key in ("space", "space", "space", "c"):  # select rows 1-3, stream their mean
            tmux("send-keys", "-t", session, key)
        pane = wait_pane(session, "mean[1:4] (k=3)", timeout=10)
        wait_pane(session, "tok/s]", timeout=120)
        tmux("resize-window", "-t", session, "-x", "80", "-y", "24")
        pane = wait_pane(session, "? Help", timeout=10)
        rows = [line for line in pane.splitlines() if re.match(r"^\s*●?\s*\d+\s+\S", line)]  # list rows: an index first
        assert len(rows) >= 9 and "q Quit" in pane, pane  # at 80x24: nine rows at least, and the keys to leave
        tmux("send-keys", "-t", session, "q")
        pane = wait_pane(session, "melbo-exit=", timeout=15)
        assert "melbo-exit=0" in pane and "Traceback" not in pane and "error" not in pane.lower()
    finally:
        tmux("kill-session", "-t", session)
