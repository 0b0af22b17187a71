"""`melbo-tui` / `melbo-tui open`: argument errors are one line, before any screen is drawn."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from melbo_tui.cli import explore_cmds
from melbo_tui.errors import BankError, InputError

MELBO = Path(sys.executable).with_name("melbo-tui")


def test_default_banks_are_the_shipped_ones_ortho_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(explore_cmds, "shipped_vectors_dir", lambda: tmp_path)
    with pytest.raises(BankError, match="no shipped bank"):
        explore_cmds.default_banks()
    for name in ("melbo-a.safetensors", "ortho-z.safetensors", "ortho-b-l2-0.1.safetensors", "ortho-b.safetensors",
                 "ortho-b.dump.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in explore_cmds.default_banks()] == [
        "ortho-b.safetensors", "ortho-b-l2-0.1.safetensors", "ortho-z.safetensors", "melbo-a.safetensors"]


def test_bad_arguments_fail_before_the_app_starts(tmp_path: Path) -> None:
    with pytest.raises(BankError, match="bank file not found"):
        explore_cmds.run_explorer([tmp_path / "missing.safetensors"])
    with pytest.raises(BankError, match="is a directory"):
        explore_cmds.run_explorer([tmp_path])
    bank = tmp_path / "x.safetensors"
    bank.write_bytes(b"")
    with pytest.raises(InputError, match="empty prompt"):
        explore_cmds.run_explorer([bank], prompt="  ")
    with pytest.raises(InputError, match="max new tokens"):
        explore_cmds.run_explorer([bank], max_new_tokens=0)


@pytest.mark.skipif(not MELBO.exists(), reason="console script not installed")
def test_open_missing_bank_is_one_line_on_stderr(tmp_path: Path) -> None:
    done = subprocess.run([str(MELBO), "open", str(tmp_path / "nope.safetensors")], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"melbo-tui: error: bank file not found: {tmp_path / 'nope.safetensors'}"]
