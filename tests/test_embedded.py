"""Integration on the embedded SmolLM2-135M-Instruct: the real model, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from melbo_tui.api import train_melbo
from melbo_tui.bank import load_bank, save_bank
from melbo_tui.generation import GenerationSettings, generate_stream
from melbo_tui.jobs import melbo_bank
from melbo_tui.melbo import MelboConfig
from melbo_tui.models import EMBEDDED_NAME, LoadedModel, embedded_model_dir, load_model
from melbo_tui.prompts import encode, format_prompt

pytestmark = pytest.mark.embedded


def test_embedded_model_shape_and_chat_template(embedded: LoadedModel) -> None:
    assert embedded.name == EMBEDDED_NAME
    assert (embedded.num_layers, embedded.hidden_size) == (30, 576)
    assert embedded.dtype == torch.float32 and embedded.device.type == "cpu"
    text = format_prompt(embedded, "How can I build a bomb?")
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nHow can I build a bomb?<|im_end|>\n<|im_start|>assistant\n")
    custom = format_prompt(embedded, "hi", system="You are a helpful assistant.")
    assert "You are a helpful assistant." in custom and "SmolLM" not in custom
    assert format_prompt(embedded, "raw text", raw=True) == "raw text"


def test_train_generate_round_trip(embedded: LoadedModel, tmp_path: Path) -> None:
    config = MelboConfig(8, 16, radius=55.0, num_vectors=2, steps=4)
    prompts = ["How can I build a bomb?"]
    vectors = train_melbo(embedded, prompts, source_layer=8, target_layer=16, radius=55.0, num_vectors=2, steps=4)
    assert torch.allclose(vectors.norm(dim=1), torch.full((2,), 55.0), rtol=1e-4)
    assert abs(float(vectors[0] @ vectors[1])) / 55.0**2 <= 1e-5
    path = tmp_path / "b.safetensors"
    save_bank(melbo_bank(embedded, config, vectors, prompts, None, False, "test"), path)
    bank = load_bank(path)
    ids = encode(embedded, prompts[0])
    settings = GenerationSettings(max_new_tokens=16)
    pieces: list[str] = []
    steered = generate_stream(embedded, ids, 8, bank.vectors[1], settings, pieces.append)
    plain = generate_stream(embedded, ids, 8, None, settings, lambda _: None)
    assert len(pieces) > 1 and "".join(pieces) == steered.text  # streamed piece by piece
    assert steered.num_tokens == 16 and steered.text != plain.text
    assert plain.text.startswith("Building a bomb")  # the model's own answer on this prompt


def test_generation_stops_when_asked(embedded: LoadedModel) -> None:
    ids = encode(embedded, "Write a long story about a dragon.")
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] >= 3

    result = generate_stream(embedded, ids, 8, None, GenerationSettings(max_new_tokens=60), lambda _: None, stop)
    assert result.stopped and result.num_tokens <= 4


@pytest.mark.slow
def test_gguf_is_converted_once_into_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real GGUF path: dequantise (~20 s), save safetensors, and load the copy afterwards."""
    monkeypatch.setenv("MELBO_TUI_CACHE", str(tmp_path))
    directory = embedded_model_dir()
    assert (directory / "model.safetensors").is_file() and directory.parent == tmp_path / "models"
    assert not [p for p in directory.parent.iterdir() if p.name.startswith(".convert-")]
    lm = load_model("embedded")
    ids = encode(lm, "Hi")
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits
    assert torch.isfinite(logits).all() and logits.shape[-1] == len(lm.tokenizer)


def readme_notebook_cell() -> str:
    """The README's Python block, as a user would paste it into a notebook cell."""
    import re

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block is not None, "the README has no python block"
    return block.group(1)


@pytest.mark.slow
def test_the_readme_notebook_cell_trains_finds_and_measures_without_files_or_ui(tmp_path: Path) -> None:
    """Issue 12's done-when: ~10 lines, the embedded model, no file written, no Textual/typer/plotext imported."""
    import os
    import re
    import subprocess
    import sys

    cell = readme_notebook_cell() + '\nimport sys; print("\\nui", sorted(m for m in ("textual", "typer", "plotext") if m in sys.modules))\n'
    done = subprocess.run([sys.executable, "-c", cell], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                          check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    first = re.search(r"tensor\(\[([^\]]*)\]\) tensor\(\[([^\]]*)\]\)", done.stdout)
    assert first is not None, done.stdout[:500]
    kl_seq, err = ([float(v) for v in group.split(",")] for group in first.groups())
    assert len(kl_seq) == 3 and kl_seq[0] == 0.0 and all(v > 0 for v in kl_seq[1:])  # row 0 is theta0 itself
    assert err[0] == 0.0 and all(v > 0 for v in err[1:])
    streamed = done.stdout[first.end():].split("\nui")[0]
    assert streamed.strip()  # the steered completion streamed
    assert "ui []" in done.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written where the notebook runs
