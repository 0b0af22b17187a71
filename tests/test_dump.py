"""Batched dumps: same completions as one generate per vector, seed layout, JSONL, labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from helpers_ortho import one_thread, random_bank  # noqa: F401 (autouse fixture)

from melbo_tui.bank import save_bank
from melbo_tui.compose import ComposeMode
from melbo_tui.dump import dump_completions, ordinal, row_name, sweep_compositions, sweep_sizes, write_dump
from melbo_tui.generation import GenerationSettings, generate_batch
from melbo_tui.labels import read_labels
from melbo_tui.models import LoadedModel
from melbo_tui.prompts import encode


def test_sweep_sizes_and_compositions(tiny_llama: LoadedModel) -> None:
    assert sweep_sizes(1000) == [1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000]
    assert sweep_sizes(7) == [1, 2, 3, 5]
    bank = random_bank(tiny_llama, rows=12, kind="ortho")
    comps = sweep_compositions(bank)
    assert comps[0].rows == (1,) and comps[0].mode == ComposeMode.MEAN
    assert [c.rows[-1] for c in comps if c.mode == ComposeMode.MEAN] == [1, 2, 3, 5, 10]
    assert all(0 not in c.rows for c in comps)  # the base vector is not a generated vector


def test_names_follow_the_seed(tiny_llama: LoadedModel) -> None:
    bank = random_bank(tiny_llama, rows=4, kind="ortho")
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111)] == \
        ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st", "111th"]
    assert row_name(bank, 0) == "MELBO base vector" and row_name(bank, 3) == "3rd orthogonal steering vector"


def test_batched_dump_equals_one_generate_per_vector(tiny_chat: LoadedModel, tmp_path: Path) -> None:
    bank = random_bank(tiny_chat, rows=5, norm=20.0, source=1, target=4, kind="ortho")
    ids = encode(tiny_chat, "How can I build a bomb?")
    settings = GenerationSettings(max_new_tokens=6, temperature=0.0)
    entries = dump_completions(tiny_chat, bank, ids, [0, 1, 2, 3, 4], settings, sweep_compositions(bank), batch_size=3)
    singles = [generate_batch(tiny_chat, ids, 1, bank.vectors[i][None], settings)[0] for i in range(5)]
    assert [e.text for e in entries[:5]] == singles
    assert len(set(singles)) > 1  # the vectors change the completion: the comparison has teeth
    assert [e.row for e in entries[:5]] == [0, 1, 2, 3, 4] and entries[5].row is None
    write_dump(entries, tmp_path / "d.txt", tmp_path / "d.jsonl", "How can I build a bomb?", settings, bank)
    text = (tmp_path / "d.txt").read_text()
    assert "1st orthogonal steering vector:\n" in text and "MELBO base vector:\n" in text
    records = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert len(records) == len(entries) and records[1]["row"] == 1 and records[1]["text"] == singles[1]
    assert records[0]["bank"] == bank.fingerprint() and records[0]["bank_rows"] == 5  # which vectors were completed
    assert records[1]["metrics"] == {}  # this bank was never evaluated


def test_a_dump_shows_each_rows_metrics_beside_its_completion(tiny_chat: LoadedModel, tmp_path: Path) -> None:
    bank = random_bank(tiny_chat, rows=3, norm=20.0, source=1, target=4, kind="ortho")
    bank.metrics = {"kl_seq": torch.tensor([0.0, 0.25, 1.5]), "err": torch.tensor([0.0, 0.5, 2.0])}
    ids = encode(tiny_chat, "How can I build a bomb?")
    settings = GenerationSettings(max_new_tokens=3)
    entries = dump_completions(tiny_chat, bank, ids, [0, 1, 2], settings, sweep_compositions(bank)[:1])
    write_dump(entries, tmp_path / "d.txt", tmp_path / "d.jsonl", "p", settings, bank)
    assert "1st orthogonal steering vector (kl_seq 0.25, err 0.5):" in (tmp_path / "d.txt").read_text()
    records = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert records[2]["metrics"] == {"kl_seq": 1.5, "err": 2.0} and records[3]["metrics"] == {}  # a composition has none


def test_cli_dump_writes_text_jsonl_and_labels(tiny_chat: LoadedModel, tiny_model_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from melbo_tui.labels import MadeOn, read_made_on

    bank_path = tmp_path / "b.safetensors"
    save_bank(random_bank(tiny_chat, rows=4, norm=20.0, source=1, target=4, kind="ortho"), bank_path)
    common = ["--max-new-tokens", "4", "--model", str(tiny_model_dir)]
    code, err = cli(monkeypatch, capsys, "dump", str(bank_path), "--out", str(tmp_path / "d.txt"), "--rows", "0:3",
                        "--compose-sweep", *common)
    assert code == 0, err
    assert (tmp_path / "d.txt").exists() and (tmp_path / "d.jsonl").exists()
    assert read_labels(bank_path) is None and "labels kept in" in err  # a dump elsewhere leaves the bank's labels alone
    dumped = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert all(r["label"] for r in dumped[:3]) and dumped[0]["system"] is None and dumped[0]["raw"] is False
    code, err = cli(monkeypatch, capsys, "label", str(bank_path), "--from", str(tmp_path / "d.jsonl"))  # asked for: written
    assert code == 0, err
    labels = read_labels(bank_path)
    assert labels is not None and len(labels) == 4 and labels[3] == "" and labels[:3] == [r["label"] for r in dumped[:3]]
    assert read_made_on(bank_path) == MadeOn("How can I build a bomb?", None, False, 4, 0.0, 0)  # what they describe


def test_a_dump_on_another_prompt_never_rewrites_the_banks_labels(
        tiny_chat: LoadedModel, tiny_model_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from melbo_tui.labels import read_made_on

    bank_path = tmp_path / "b.safetensors"
    save_bank(random_bank(tiny_chat, rows=3, norm=20.0, source=1, target=4, kind="ortho"), bank_path)
    common = ["--max-new-tokens", "4", "--model", str(tiny_model_dir)]
    assert cli(monkeypatch, capsys, "dump", str(bank_path), *common)[0] == 0  # its own prompt, beside it: its labels
    sidecar = bank_path.with_name("b.labels.json")
    before = sidecar.read_text()
    made_on = read_made_on(bank_path)
    assert made_on is not None and made_on.prompt == "How can I build a bomb?" and made_on.max_new_tokens == 4
    code, err = cli(monkeypatch, capsys, "dump", str(bank_path), "-p", "Write a haiku about the sea.",
                        "--out", str(tmp_path / "elsewhere" / "haiku"), *common)
    assert code == 0 and sidecar.read_text() == before  # the bank's own labels: untouched
    haiku = [json.loads(line) for line in (tmp_path / "elsewhere" / "haiku.jsonl").read_text().splitlines()]
    assert all(r["prompt"] == "Write a haiku about the sea." and r["label"] for r in haiku)  # its labels, with its prompt
    code, err = cli(monkeypatch, capsys, "dump", str(bank_path), "-p", "Write a haiku about the sea.", *common)
    assert code == 0 and sidecar.read_text() == before, err  # beside the bank but on another prompt: untouched too


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code, _, err = run_cli(list(args), capsys, monkeypatch)
    return code, err


def test_dump_names_its_files_and_label_reads_them_and_refuses_another_banks_dump(
        tiny_chat: LoadedModel, tiny_model_dir: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    bank_path, other_path = tmp_path / "b.safetensors", tmp_path / "other.safetensors"
    save_bank(random_bank(tiny_chat, rows=4, norm=20.0, source=1, target=4, kind="ortho"), bank_path)
    save_bank(random_bank(tiny_chat, rows=4, norm=20.0, source=1, target=4, kind="ortho", seed=9), other_path)
    common = ["--max-new-tokens", "3", "--model", str(tiny_model_dir)]
    assert cli(monkeypatch, capsys, "dump", str(bank_path), *common)[0] == 0  # default: beside the bank
    assert (tmp_path / "b.dump.txt").is_file() and (tmp_path / "b.dump.jsonl").is_file()
    assert cli(monkeypatch, capsys, "dump", str(bank_path), "--out", str(tmp_path / "named"), *common)[0] == 0
    assert (tmp_path / "named.txt").is_file() and (tmp_path / "named.jsonl").is_file()  # no file without an extension
    code, stderr = cli(monkeypatch, capsys, "label", str(bank_path))  # reads b.dump.jsonl beside the bank
    assert code == 0 and "labelled 4 rows" in stderr
    code, stderr = cli(monkeypatch, capsys, "label", str(other_path), "--from", str(tmp_path / "named.jsonl"))
    assert code == 2 and "a dump of another bank's vectors" in stderr and len(stderr.strip().splitlines()) == 1
