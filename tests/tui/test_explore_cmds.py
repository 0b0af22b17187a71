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
                 "ortho-b.dump.txt", "gemma-melbo-a.safetensors", "gemma-ortho.safetensors"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in explore_cmds.default_banks()] == [
        "ortho-b.safetensors", "ortho-b-l2-0.1.safetensors", "ortho-z.safetensors", "gemma-ortho.safetensors",
        "melbo-a.safetensors", "gemma-melbo-a.safetensors"]


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


def test_the_explorer_starts_without_importing_torch() -> None:
    """The first frame must not wait for torch (~2 s): the CLI entry and the app import neither torch nor transformers."""
    code = ("import sys, melbo_tui.cli.explore_cmds, melbo_tui.tui.app; "
            "print(sorted(m for m in ('torch', 'transformers', 'safetensors') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]"


def test_open_threads_reaches_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`melbo-tui open --threads N` gives the explorer's backend a request for N torch threads."""
    from typer.testing import CliRunner

    from melbo_tui.cli.app import app as cli
    from melbo_tui.tui.app import ExplorerApp

    started: list[ExplorerApp] = []
    monkeypatch.setattr(ExplorerApp, "run", lambda self, **kwargs: started.append(self))
    monkeypatch.setattr(explore_cmds, "_leave_without_waiting_for_workers", lambda code: None)
    bank = tmp_path / "x.safetensors"
    bank.write_bytes(b"")
    result = CliRunner().invoke(cli, ["open", str(bank), "--threads", "3", "-n", "20"])
    assert result.exit_code == 0, result.output
    backend = started[0].backend
    assert backend.request.threads == 3  # type: ignore[attr-defined]
    assert started[0].options.generation.max_new_tokens == 20


@pytest.mark.embedded
def test_the_model_loads_with_the_threads_asked_for(tiny_model_dir: Path) -> None:
    import torch

    from melbo_tui.models import ModelRequest
    from melbo_tui.tui.backend import EngineBackend

    before = torch.get_num_threads()
    try:
        description = EngineBackend(ModelRequest(str(tiny_model_dir), device="cpu", threads=2)).load(str(tiny_model_dir))
        assert torch.get_num_threads() == 2 and "· 2 threads" in description
        description = EngineBackend(ModelRequest(str(tiny_model_dir), device="cpu", threads=1)).load(str(tiny_model_dir))
        assert torch.get_num_threads() == 1 and "· 1 thread" in description
    finally:
        torch.set_num_threads(before)
