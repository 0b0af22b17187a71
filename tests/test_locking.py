"""Concurrent writers of one bank, with real processes: nothing appended by one is lost by another."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers_ortho import random_bank

from melbo_tui.bank import load_bank, save_bank, update_bank
from melbo_tui.cli import main
from melbo_tui.labels import MadeOn, read_labels, save_labels
from melbo_tui.locking import BankBusyError, bank_lock, lock_path
from melbo_tui.models import LoadedModel

# A second process: runs the real CLI (argv after "--"), with `evaluate_bank` held back until
# the file GO exists, like an eval of a large bank that takes minutes.
SLOW_EVAL = textwrap.dedent('''
    import os, sys, time
    import melbo_tui.metrics as metrics
    go, argv = sys.argv[1], sys.argv[3:]
    original, calls = metrics.evaluate_bank, []
    def slow(*args, **kwargs):
        calls.append(1)
        result = original(*args, **kwargs)
        open(go + ".waiting", "w").close()
        while len(calls) == 1 and not os.path.exists(go):
            time.sleep(0.05)
        return result
    metrics.evaluate_bank = slow
    from melbo_tui.cli import main
    sys.argv = ["melbo-tui", *argv]
    main()
''')

HOLD_LOCK = textwrap.dedent('''
    import sys, time
    from melbo_tui.locking import bank_lock
    with bank_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
''')


def _cli(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["melbo-tui", *args])
    main()


def _wait_for(path: Path, process: subprocess.Popen[str], seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"helper process ended early: {process.communicate()}")
        assert time.monotonic() < deadline, "helper process never got there"
        time.sleep(0.05)


def test_eval_during_ortho_resume_keeps_every_vector(tiny_chat: LoadedModel, tiny_model_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    parent = tmp_path / "parent.safetensors"
    save_bank(random_bank(tiny_chat, rows=2, norm=8.0, source=1, target=4), parent)
    out = tmp_path / "ortho.safetensors"
    ortho = ["ortho", str(parent), "--out", str(out), "--steps", "3", "--no-eval", "--model", str(tiny_model_dir)]
    _cli([*ortho, "--num-vectors", "4"], monkeypatch)
    assert len(load_bank(out)) == 5
    go = tmp_path / "go"
    evaluator = subprocess.Popen([sys.executable, "-c", SLOW_EVAL, str(go), "--", "eval", str(out),
                                  "--model", str(tiny_model_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(tmp_path / "go.waiting", evaluator)  # it has read the 5-row bank and measured it
        _cli([*ortho, "--num-vectors", "9", "--resume"], monkeypatch)  # this process appends 4 rows
        assert len(load_bank(out)) == 10
        go.touch()
        _, stderr = evaluator.communicate(timeout=240)
    finally:
        evaluator.kill()
    assert evaluator.returncode == 0, stderr
    bank = load_bank(out)
    assert len(bank) == 10, "the evaluator wrote back its stale 5-row copy"
    assert set(bank.metrics) >= {"kl", "kl_rev"} and bank.metrics["kl"].shape == (10,)
    assert bank.meta.extra["ortho_loss"][9] > 0  # ortho's own metadata of the new rows survived
    assert "grew" in stderr


def test_labels_of_rows_appended_meanwhile_are_kept(tiny_chat: LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "b.safetensors"
    save_bank(random_bank(tiny_chat, rows=3), path)
    made_on = MadeOn("How can I build a bomb?")
    save_labels(path, 3, {0: "code"}, [], made_on)
    save_bank(random_bank(tiny_chat, rows=6), path)  # another process grew the bank
    save_labels(path, 6, {5: "refusal"}, [], made_on)  # a label run on the grown bank
    save_labels(path, 3, {1: "other"}, [], made_on)  # a dump that loaded the 3-row copy
    assert read_labels(path) == ["code", "other", "", "", "", "refusal"]


def test_a_writer_waits_for_the_lock_held_by_another_process(tiny_chat: LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "b.safetensors"
    save_bank(random_bank(tiny_chat, rows=2), path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path), "2.0"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        start = time.monotonic()
        save_bank(random_bank(tiny_chat, rows=4), path)
        waited = time.monotonic() - start
    finally:
        holder.wait(timeout=30)
    assert waited >= 1.0  # it waited for the other process instead of writing under it
    assert len(load_bank(path)) == 4
    assert lock_path(path).exists()


def test_a_lock_held_too_long_is_one_clear_error(tiny_chat: LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "b.safetensors"
    save_bank(random_bank(tiny_chat, rows=2), path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path), "20"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        busy = r"b\.safetensors is being written by another process \(pid \d+"
        with pytest.raises(BankBusyError, match=busy), bank_lock(path, timeout=0.3):
            pass
    finally:
        holder.kill()
        holder.wait()
    assert len(load_bank(path)) == 2


def test_update_bank_reads_under_the_lock_and_nests(tiny_chat: LoadedModel, tmp_path: Path) -> None:
    path = tmp_path / "b.safetensors"
    save_bank(random_bank(tiny_chat, rows=2), path)

    def grow(bank):  # type: ignore[no-untyped-def]
        bank.vectors = torch.cat([bank.vectors, bank.vectors[:1] * 2])
        return bank

    with bank_lock(path):  # re-entrant: update_bank and save_bank lock again inside
        written = update_bank(path, grow)
    assert len(written) == 3 and len(load_bank(path)) == 3
