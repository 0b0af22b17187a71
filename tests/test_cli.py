"""The command line as a user meets it: real commands on a tiny real model, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from melbo_tui.bank import load_bank, save_bank


@pytest.fixture(scope="module")
def trained_bank(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("banks") / "tiny.safetensors"
    result = subprocess.run(
        [sys.executable, "-m", "melbo_tui", "train", "--model", str(tiny_model_dir), "--prompt", "How can I build a bomb?",
         "--source-layer", "1", "--target-layer", "4", "--radius", "20", "--num-vectors", "4", "--steps", "5",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stderr
    return out


def test_train_writes_a_complete_bank(trained_bank: Path, tiny_model_dir: Path) -> None:
    bank = load_bank(trained_bank)
    assert bank.vectors.shape == (4, 64)
    assert torch.allclose(bank.norms(), torch.full((4,), 20.0), rtol=1e-4)
    units = bank.vectors / 20.0
    assert (units @ units.T - torch.eye(4)).abs().max() <= 1e-5
    meta = bank.meta
    assert (meta.kind, meta.source_layer, meta.target_layer, meta.radius) == ("melbo", 1, 4, 20.0)
    assert meta.prompts == ["How can I build a bomb?"] and meta.model == str(tiny_model_dir)
    assert meta.created_by.startswith("melbo-tui train --model") and "--radius 20" in meta.created_by
    assert meta.hyperparameters["steps"] == 5 and meta.extra["complete"] is True


def test_info_json(trained_bank: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run_cli(["info", str(trained_bank), "--json"], capsys, monkeypatch)
    assert code == 0
    data = json.loads(out)
    assert data["vectors"] == 4 and data["metadata"]["source_layer"] == 1
    assert data["metrics"]["norm"]["min"] == pytest.approx(20.0, rel=1e-4)


def test_info_lists_rows_as_a_table_json_and_csv_sorted_by_a_metric(trained_bank: Path, capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import csv
    import io

    code, out, _ = run_cli(["info", str(trained_bank), "--rows", "1:4", "--sort", "-idx", "--csv"], capsys, monkeypatch)
    assert code == 0
    records = list(csv.DictReader(io.StringIO(out)))
    assert [r["idx"] for r in records] == ["3", "2", "1"] and {"label", "norm", "cos_base"} <= set(records[0])
    assert float(records[0]["norm"]) == pytest.approx(20.0, rel=1e-4)
    code, out, _ = run_cli(["info", str(trained_bank), "--rows", ":", "--json"], capsys, monkeypatch)
    assert code == 0 and [r["idx"] for r in json.loads(out)] == [0, 1, 2, 3]
    code, out, _ = run_cli(["info", str(trained_bank), "--rows", ":"], capsys, monkeypatch)
    assert code == 0 and "4 of 4 rows" in " ".join(out.split())  # the title (holding the tmp path) may wrap
    code, _, err = run_cli(["info", str(trained_bank), "--rows", ":", "--sort", "kl_seq"], capsys, monkeypatch)
    assert code == 2 and "--sort kl_seq: this bank has idx, label, norm, cos_base" in err
    code, _, err = run_cli(["info", str(trained_bank), "--csv"], capsys, monkeypatch)
    assert code == 2 and "give --rows" in err


def test_generate_steered_differs_from_unsteered(trained_bank: Path, tiny_model_dir: Path,
                                                 capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    common = ["--model", str(tiny_model_dir), "--max-new-tokens", "12"]
    code, steered, err = run_cli(["generate", str(trained_bank), "--vector", "1", *common], capsys, monkeypatch)
    assert code == 0 and "vector 1" in err and "12 tokens" in err
    code, plain, _ = run_cli(["generate", str(trained_bank), "--unsteered", *common], capsys, monkeypatch)
    assert code == 0
    assert steered.strip() and steered != plain  # (the random tiny model alone prints newlines)
    code, again, _ = run_cli(["generate", str(trained_bank), "--vector", "1", *common], capsys, monkeypatch)
    assert again == steered  # greedy is deterministic
    code, _, err = run_cli(["generate", str(trained_bank), "--mean-sqrt", "0:3", "--scale", "2", *common], capsys, monkeypatch)
    assert code == 0 and "mean-sqrt[0:3] x2" in err


def test_sampling_is_reproducible_by_seed(trained_bank: Path, tiny_model_dir: Path,
                                          capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["generate", str(trained_bank), "--vector", "2", "--model", str(tiny_model_dir), "--max-new-tokens", "10",
            "--temperature", "1.0"]
    outs = [run_cli([*args, "--seed", seed], capsys, monkeypatch)[1] for seed in ("3", "3", "4")]
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_import_seed_file(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    q, _ = torch.linalg.qr(torch.randn(64, 5))
    vectors = q.T * 7.0
    vectors[3] = float("nan")
    torch.save(vectors, tmp_path / "seed.pt")
    out = tmp_path / "imported.safetensors"
    code, _, err = run_cli(["import", str(tmp_path / "seed.pt"), "--out", str(out), "--source-layer", "1",
                            "--target-layer", "4", "--model", str(tiny_model_dir)], capsys, monkeypatch)
    assert code == 0, err
    assert "dropped 1 row(s) with NaN/inf (as the seed did): 3" in err
    bank = load_bank(out)
    assert bank.meta.kind == "imported" and bank.meta.extra["source_rows"] == [0, 1, 2, 4]
    assert bank.meta.radius == pytest.approx(7.0)


def _bank_of_width(path: Path, width: int) -> Path:
    from melbo_tui.bank import BankMeta, VectorBank

    meta = BankMeta(kind="melbo", model="other", hidden_size=width, num_layers=30, source_layer=8, target_layer=16,
                    prompts=["hi"])
    save_bank(VectorBank(torch.randn(3, width), meta), path)
    return path


ERROR_CASES = {
    "missing bank": (["generate", "{tmp}/nope.safetensors", "--vector", "0"], "bank file not found"),
    "corrupt bank": (["generate", "{corrupt}", "--vector", "0"], "not a readable safetensors bank"),
    "wrong hidden size": (["generate", "{wide}", "--vector", "0", "--model", "{model}"], "hidden size 576"),
    "layer out of range": (["train", "--out", "{tmp}/o.safetensors", "--source-layer", "9", "--model", "{model}"], "out of range"),
    "empty prompt": (["generate", "{bank}", "--vector", "0", "--prompt", " ", "--model", "{model}"], "empty prompt"),
    "index out of range": (["generate", "{bank}", "--vector", "7"], "index 7 out of range"),
    "empty selection": (["generate", "{bank}", "--mean", ""], "empty selection"),
    "non-finite scale": (["generate", "{bank}", "--vector", "0", "--scale", "inf"], "scale must be a finite number"),
    "unknown model": (["generate", "{bank}", "--vector", "0", "--model", "no-such-org/no-such-model"], "cannot load model"),
    "no selector": (["generate", "{bank}"], "choose exactly one"),
    "negative tokens": (["generate", "{bank}", "--vector", "0", "--max-new-tokens", "0"], "max new tokens"),
    "bad radii": (["calibrate", "--radii", "1,x"], "--radii"),
    "unknown command": (["frobnicate"], "No such command"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bad_input_is_one_line_and_nonzero(case: str, tmp_path: Path, trained_bank: Path, tiny_model_dir: Path,
                                           capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"garbage" * 10)
    wide = _bank_of_width(tmp_path / "wide.safetensors", 576)
    args, message = ERROR_CASES[case]
    fill = dict(tmp=tmp_path, corrupt=corrupt, wide=wide, model=tiny_model_dir, bank=trained_bank)
    code, out, err = run_cli([a.format(**fill) for a in args], capsys, monkeypatch)
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note:")]
    assert len(lines) == 1, err
    assert lines[0].startswith("melbo-tui: error: ") and message in lines[0]
    assert "Traceback" not in err + out


def test_error_in_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "melbo_tui", "info", str(tmp_path / "missing.safetensors")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == f"melbo-tui: error: bank file not found: {tmp_path / 'missing.safetensors'}"


def test_train_resume_continues_to_the_same_bank(tmp_path: Path, tiny_model_dir: Path,
                                                 capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    common = ["train", "--model", str(tiny_model_dir), "--source-layer", "1", "--target-layer", "3", "--radius", "9",
              "--steps", "3", "--batch-vectors", "2"]
    full, part = tmp_path / "full.safetensors", tmp_path / "part.safetensors"
    assert run_cli([*common, "--num-vectors", "4", "--out", str(full)], capsys, monkeypatch)[0] == 0
    # an interrupted run leaves the batches it finished: here, the first two vectors
    assert run_cli([*common, "--num-vectors", "2", "--out", str(part)], capsys, monkeypatch)[0] == 0
    assert load_bank(part).meta.extra["complete"] is True
    code, _, err = run_cli([*common, "--num-vectors", "4", "--out", str(part), "--resume"], capsys, monkeypatch)
    assert code == 0, err
    torch.testing.assert_close(load_bank(part).vectors, load_bank(full).vectors)
    code, _, err = run_cli([*common, "--num-vectors", "6", "--radius", "5", "--out", str(part), "--resume"], capsys, monkeypatch)
    assert code == 2 and "it was made with radius 9.0, this run asks 5.0" in err


def test_calibrate_prints_table_chart_and_a_recommendation(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run_cli(["calibrate", "--model", str(tiny_model_dir), "--source-layer", "1", "--target-layer", "4",
                              "--radii", "1,4,16,64", "--num-vectors", "2", "--steps", "2"], capsys, monkeypatch)
    assert code == 0, err
    assert "per unit R" in out and "\x1b[" not in out
    assert ("take-off at R = " in out and "Recommended: --radius" in out) or "no take-off within these radii" in out
    for radius in ("1", "4", "16", "64"):
        assert f"\n│ {radius:>3}" in out or f" {radius} " in out
