"""Bad output paths fail before any work, a full disk fails with one line and the old file intact,
and an out-of-memory error is one line with a hint."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from helpers_ortho import random_bank

from melbo_tui.bank import load_bank, save_bank
from melbo_tui.errors import OutputError
from melbo_tui.models import LoadedModel

NO_MODEL = "/nonexistent/model-dir"  # a command that reached the model load would say so


def cli_error(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """Exit code and stderr without progress-bar lines (a bar drawn before the error is not the error)."""
    code, _, err = run_cli(args, capsys, monkeypatch)
    lines = err.splitlines()
    return code, "\n".join(line for line in lines if not re.search(r"\d+/\d+ +\d+:\d\d:\d\d", line)) + "\n"


@contextlib.contextmanager
def _mount(options: str) -> Iterator[Path]:
    """A fresh tmpfs (root only; skipped where mounting is not allowed)."""
    import tempfile

    where = Path(tempfile.mkdtemp(prefix="melbo-mnt-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, check=False)
    if done.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)
        where.rmdir()


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory no file can be created in: a read-only mount for root (root ignores modes), else mode 0500."""
    if os.geteuid() != 0:
        directory = tmp_path / "ro"
        directory.mkdir()
        directory.chmod(0o500)
        yield directory
        directory.chmod(0o700)
        return
    with _mount("ro,size=1m") as directory:
        yield directory


@pytest.fixture
def bank_file(tiny_chat: LoadedModel, tmp_path: Path) -> Path:
    path = tmp_path / "bank.safetensors"
    save_bank(random_bank(tiny_chat, rows=3, norm=6.0, source=1, target=4, kind="ortho"), path)
    return path


def _commands(bank: Path, out: Path) -> dict[str, list[str]]:
    model = ["--model", NO_MODEL]
    return {
        "train": ["train", "--out", str(out), *model],
        "ortho": ["ortho", str(bank), "--out", str(out), *model],
        "dump": ["dump", str(bank), "--out", str(out), *model],
        "export": ["export", str(bank), "--gguf", str(out)],
        "doctor": ["doctor", "--out", str(out), *model],
    }


@pytest.mark.parametrize("command", ["train", "ortho", "dump", "export", "doctor"])
@pytest.mark.parametrize("case", ["directory", "plain directory", "parent is a file", "read-only directory"])
def test_a_bad_out_fails_at_once_with_one_line(command: str, case: str, bank_file: Path, tmp_path: Path,
                                               read_only_dir: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "out.txt").mkdir()  # a directory with a file's name
    (tmp_path / "outdir").mkdir()  # and one without: dump's --out NAME is a prefix (NAME.txt), but not a directory's
    out = {"directory": tmp_path / "out.txt", "plain directory": tmp_path / "outdir",
           "parent is a file": tmp_path / "a-file" / "out.safetensors",
           "read-only directory": read_only_dir / "out.txt"}[case]
    start = time.perf_counter()
    code, err = cli_error(_commands(bank_file, out)[command], capsys, monkeypatch)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("melbo-tui: error: --")
    assert NO_MODEL not in err  # found before the model load
    assert {"directory": "is a directory", "plain directory": "is a directory", "parent is a file": "is not a directory",
            "read-only directory": "cannot write in"}[case] in err
    assert time.perf_counter() - start < 5


@pytest.fixture
def bank_in_read_only_dir(tiny_chat: LoadedModel, tmp_path: Path) -> Iterator[Path]:
    """A valid bank in a directory that has become read-only."""
    bank = random_bank(tiny_chat, rows=3, norm=6.0, source=1, target=4, kind="ortho")
    if os.geteuid() != 0:
        directory = tmp_path / "ro"
        save_bank(bank, directory / "bank.safetensors")
        directory.chmod(0o500)
        yield directory / "bank.safetensors"
        directory.chmod(0o700)
        return
    with _mount("size=1m") as directory:
        save_bank(bank, directory / "bank.safetensors")
        subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True)
        yield directory / "bank.safetensors"


def test_eval_and_label_check_the_bank_directory_before_the_model(bank_in_read_only_dir: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    dump = tmp_path / "d.jsonl"
    dump.write_text('{"row": 0, "text": "I cannot help"}\n')
    for args in (["eval", str(bank_in_read_only_dir), "--model", NO_MODEL], ["label", str(bank_in_read_only_dir), "--from", str(dump)]):
        code, err = cli_error(args, capsys, monkeypatch)
        assert code == 2 and "cannot write in" in err and NO_MODEL not in err, err
        assert len(err.strip().splitlines()) == 1


def test_missing_parents_are_created(tiny_chat: LoadedModel, tmp_path: Path) -> None:
    from melbo_tui.cli.options import check_output

    check_output(tmp_path / "new" / "deeper" / "b.safetensors")  # fine: the write creates them
    save_bank(random_bank(tiny_chat), tmp_path / "new" / "deeper" / "b.safetensors")


def _full_disk(calls: list[Path]):  # type: ignore[no-untyped-def]
    """A Path.write_bytes that writes half the data, then fails like a full disk."""

    def write_bytes(path: Path, data: bytes) -> int:
        calls.append(path)
        with open(path, "wb") as handle:
            handle.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    return write_bytes


def test_a_full_disk_during_a_write_is_one_line_and_the_old_bank_survives(bank_file: Path, tiny_model_dir: Path,
                                                                         capsys: pytest.CaptureFixture[str],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    before = bank_file.read_bytes()
    calls: list[Path] = []
    monkeypatch.setattr(Path, "write_bytes", _full_disk(calls))
    code, err = cli_error(["eval", str(bank_file), "--model", str(tiny_model_dir)], capsys, monkeypatch)
    assert len(calls) == 1, err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "No space left on device" in err and "previous file is unchanged" in err and "internal error" not in err
    assert bank_file.read_bytes() == before
    assert sorted(p.name for p in bank_file.parent.iterdir() if p.name.endswith(".tmp")) == []


def test_a_real_full_tmpfs(tiny_chat: LoadedModel) -> None:
    """The same on a real 64 KiB tmpfs filled to the last block (root only)."""
    with _mount("size=64k") as mount:
        path = mount / "b.safetensors"
        save_bank(random_bank(tiny_chat, rows=2), path)
        before = path.read_bytes()
        with open(mount / "filler", "wb", buffering=0) as filler, contextlib.suppress(OSError):
            while True:
                filler.write(b"\0" * 512)
        with pytest.raises(OutputError, match=r"No space left on device \(the previous file is unchanged\)"):
            save_bank(random_bank(tiny_chat, rows=40), path)
        assert path.read_bytes() == before
        assert not [p for p in mount.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)"),
    RuntimeError("MPS backend out of memory (MPS allocated: 17.8 GB)"),
])
def test_out_of_memory_is_one_line_with_a_hint(error: Exception, bank_file: Path, tiny_model_dir: Path,
                                               capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_args: object, **_kwargs: object) -> None:
        raise error

    monkeypatch.setattr("melbo_tui.metrics.evaluate_bank", boom)
    code, err = cli_error(["eval", str(bank_file), "--model", str(tiny_model_dir)], capsys, monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("melbo-tui: error: out of memory (") and "--batch-size" in err and "--dtype" in err
    assert "internal error" not in err
    assert len(load_bank(bank_file)) == 3
