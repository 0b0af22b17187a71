"""Bank files: round trip, atomic writes, validation with errors that name the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from melbo_tui.bank import BankMeta, VectorBank, check_bank_fits, load_bank, save_bank
from melbo_tui.errors import BankError


def make_bank(rows: int = 5, width: int = 16) -> VectorBank:
    meta = BankMeta(kind="melbo", model="tiny", hidden_size=width, num_layers=4, source_layer=1,
                    target_layer=3, prompts=["hi"], radius=2.0, hyperparameters={"steps": 3})
    return VectorBank(torch.randn(rows, width), meta, {"norm": torch.rand(rows)})


def test_round_trip_keeps_vectors_metrics_and_metadata(tmp_path: Path) -> None:
    bank = make_bank()
    bank.meta.extra["parent"] = {"bank": "a.safetensors", "row": 3}
    save_bank(bank, tmp_path / "b.safetensors")
    loaded = load_bank(tmp_path / "b.safetensors")
    assert torch.equal(loaded.vectors, bank.vectors)
    assert torch.equal(loaded.metrics["norm"], bank.metrics["norm"])
    assert loaded.meta.prompts == ["hi"] and loaded.meta.source_layer == 1 and loaded.meta.radius == 2.0
    assert loaded.meta.extra["parent"] == {"bank": "a.safetensors", "row": 3}
    assert loaded.meta.created_at  # stamped on save


def test_metadata_is_plain_json_under_the_melbo_key(tmp_path: Path) -> None:
    path = tmp_path / "b.safetensors"
    save_bank(make_bank(), path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        data = json.loads(handle.metadata()["melbo"])
    for key in ("format_version", "kind", "model", "hidden_size", "num_layers", "source_layer", "target_layer",
                "prompts", "system_prompt", "radius", "base_index", "hyperparameters", "created_by", "created_at"):
        assert key in data


def test_write_is_atomic_no_temp_files_left_and_old_file_survives_failure(tmp_path: Path) -> None:
    path = tmp_path / "b.safetensors"
    save_bank(make_bank(3), path)
    bad = make_bank(3)
    bad.vectors[1, 0] = float("nan")
    with pytest.raises(BankError, match="NaN"):
        save_bank(bad, path)
    assert len(load_bank(path)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.safetensors.lock", "b.safetensors"]  # the write lock stays


def test_nan_rows_are_reported_by_index_never_dropped(tmp_path: Path) -> None:
    path = tmp_path / "nan.safetensors"
    vectors = torch.randn(6, 8)
    vectors[2, 1] = float("nan")
    vectors[4, 0] = float("inf")
    save_file({"vectors": vectors}, str(path), metadata={"melbo": make_bank(6, 8).meta.to_json()})
    with pytest.raises(BankError, match=r"2 row\(s\) contain NaN or inf: 2, 4"):
        load_bank(path)


@pytest.mark.parametrize(
    ("tensors", "metadata", "message"),
    [
        ({"other": torch.zeros(2, 8)}, True, "no 'vectors' tensor"),
        ({"vectors": torch.zeros(2, 8, dtype=torch.float16)}, True, "dtype"),
        ({"vectors": torch.zeros(2, 8)}, False, "no melbo metadata"),
        ({"vectors": torch.zeros(8)}, True, r"\[N, d_model\]"),
        ({"vectors": torch.zeros(2, 8), "kl": torch.zeros(3)}, True, "metric 'kl'"),
    ],
)
def test_malformed_files_are_one_clear_error(tmp_path: Path, tensors: dict, metadata: bool, message: str) -> None:
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata={"melbo": make_bank(2, 8).meta.to_json()} if metadata else None)
    with pytest.raises(BankError, match=message):
        load_bank(path)


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(BankError, match="not found"):
        load_bank(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01 definitely not safetensors")
    with pytest.raises(BankError, match="not a readable safetensors bank"):
        load_bank(junk)


def test_bank_must_fit_the_model() -> None:
    bank = make_bank(width=16)
    check_bank_fits(bank, 16, 4)
    with pytest.raises(BankError, match="hidden size 16"):
        check_bank_fits(bank, 32, 4)
    with pytest.raises(BankError, match="target layer 3 is outside"):
        check_bank_fits(bank, 16, 3)


def test_written_files_get_ordinary_permissions(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        save_bank(make_bank(), tmp_path / "b.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "b.safetensors").stat().st_mode) == 0o644


def test_aux_tensors_round_trip_and_are_validated(tmp_path: Path) -> None:
    """A method's extra tensors (DCT's U) travel as `aux.<name>`; bad ones are refused on save and on load."""
    bank = make_bank()
    bank.aux = {"u": torch.randn(5, 16), "curve": torch.arange(3.0)}
    path = tmp_path / "b.safetensors"
    save_bank(bank, path)
    loaded = load_bank(path)
    assert set(loaded.aux) == {"u", "curve"} and torch.equal(loaded.aux["u"], bank.aux["u"])
    assert set(loaded.metrics) == {"norm"}  # aux tensors are not metrics
    with pytest.raises(BankError, match="aux tensor 'u' contains NaN"):
        save_bank(VectorBank(bank.vectors, bank.meta, aux={"u": torch.full((2,), float("nan"))}), tmp_path / "c.safetensors")
    with pytest.raises(BankError, match="aux tensor name 'a.b'"):
        save_bank(VectorBank(bank.vectors, bank.meta, aux={"a.b": torch.ones(2)}), tmp_path / "c.safetensors")
    tensors = {"vectors": bank.vectors, "aux.u": torch.ones(3, dtype=torch.float16)}
    save_file(tensors, str(tmp_path / "d.safetensors"), metadata={"melbo": bank.meta.to_json()})
    with pytest.raises(BankError, match="aux tensor 'u' has dtype torch.float16"):
        load_bank(tmp_path / "d.safetensors")
