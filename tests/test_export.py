"""llama.cpp control-vector GGUF export, read back with the gguf package."""

from __future__ import annotations

import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from helpers_ortho import one_thread, random_bank  # noqa: F401 (autouse fixture)

from melbo_tui.bank import save_bank
from melbo_tui.compose import ComposeMode, Composition
from melbo_tui.errors import InputError
from melbo_tui.export import export_gguf, read_control_vector
from melbo_tui.models import LoadedModel


def _field(reader: gguf.GGUFReader, key: str) -> object:
    field = reader.get_field(key)
    assert field is not None, key
    return field.contents()


@pytest.mark.parametrize("mode", [ComposeMode.MEAN, ComposeMode.SUM, ComposeMode.MEAN_SQRT])
def test_export_reads_back(tiny_llama: LoadedModel, tmp_path: Path, mode: ComposeMode) -> None:
    bank = random_bank(tiny_llama, rows=4, source=2)
    path = tmp_path / "v.gguf"
    export_gguf(bank, Composition((1, 2, 3), mode, scale=2.0), path)
    reader = gguf.GGUFReader(str(path))
    assert _field(reader, "general.architecture") == "controlvector"
    assert _field(reader, "controlvector.layer_count") == 1
    assert _field(reader, "controlvector.model_hint") == tiny_llama.name  # a bank that records no architecture
    bank.meta.extra["provenance"] = tiny_llama.provenance()
    export_gguf(bank, Composition((1,), mode), path)
    assert _field(gguf.GGUFReader(str(path)), "controlvector.model_hint") == "llama"  # as llama.cpp's generator writes it
    assert [t.name for t in reader.tensors] == ["direction.2"]  # direction.k = output of block k, as ours
    data = np.asarray(reader.tensors[0].data, dtype=np.float32).reshape(-1)
    picked = bank.vectors[1:4]
    expected = {ComposeMode.MEAN: picked.mean(0), ComposeMode.SUM: picked.sum(0),
                ComposeMode.MEAN_SQRT: picked.mean(0) * 3 ** 0.5}[mode] * 2.0
    np.testing.assert_allclose(data, expected.numpy(), rtol=1e-6, atol=1e-6)
    assert reader.tensors[0].tensor_type == gguf.GGMLQuantizationType.F32


def test_single_vector_and_helper_reader(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    bank = random_bank(tiny_llama, rows=2, source=3)
    export_gguf(bank, Composition((1,)), tmp_path / "one.gguf")
    meta, tensors = read_control_vector(tmp_path / "one.gguf")
    assert meta["controlvector.layer_count"] == 1
    np.testing.assert_array_equal(tensors["direction.3"], bank.vectors[1].numpy())


def test_source_layer_zero_cannot_be_exported(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="direction.0"):
        export_gguf(random_bank(tiny_llama, source=0), Composition((0,)), tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_cli_export_and_its_errors(tiny_llama: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from melbo_tui.cli import main

    bank_path = tmp_path / "b.safetensors"
    save_bank(random_bank(tiny_llama, rows=5, source=1), bank_path)

    def run(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["melbo-tui", "export", str(bank_path), *args])
        try:
            main()
        except SystemExit as exc:
            return int(exc.code or 0), capsys.readouterr().err
        return 0, capsys.readouterr().err

    code, err = run("--gguf", str(tmp_path / "m.gguf"), "--rows", "1:4", "--mean-sqrt")
    assert code == 0, err
    _, tensors = read_control_vector(tmp_path / "m.gguf")
    from melbo_tui.bank import load_bank

    expected = load_bank(bank_path).vectors[1:4].mean(0) * 3 ** 0.5
    np.testing.assert_allclose(tensors["direction.1"], expected.numpy(), rtol=1e-6, atol=1e-6)
    for args, fragment in ((("--rows", "9"), "out of range"), (("--sum", "--mean"), "at most one")):
        code, err = run("--gguf", str(tmp_path / "bad.gguf"), *args)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and fragment in lines[0], err
    assert torch.isfinite(torch.from_numpy(tensors["direction.1"])).all()


def test_a_packaged_models_hint_is_its_ggufs_architecture(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    """llama.cpp's cvector-generator writes the model's GGUF architecture as the hint; for a packaged
    model we know it before any load (Gemma's is checked by the slow doctor test once its GGUF exists)."""
    from melbo_tui.models import EMBEDDED_NAME, packaged

    model = packaged(EMBEDDED_NAME)
    assert model is not None
    assert _field(gguf.GGUFReader(str(model.gguf())), "general.architecture") == model.architecture == "llama"
    bank = random_bank(tiny_llama, rows=2, source=2)
    bank.meta.model = EMBEDDED_NAME
    export_gguf(bank, Composition((1,), ComposeMode.MEAN), tmp_path / "v.gguf")
    assert _field(gguf.GGUFReader(str(tmp_path / "v.gguf")), "controlvector.model_hint") == "llama"
