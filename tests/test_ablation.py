"""Ablation: what every block writes to the residual stream loses its component along a direction."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from test_cli import run_cli

from melbo_tui.ablation import ablate, orthonormal_basis
from melbo_tui.bank import BankMeta, VectorBank, save_bank
from melbo_tui.errors import InputError
from melbo_tui.generation import GenerationSettings, generate_batch
from melbo_tui.kinds import BankKind
from melbo_tui.models import LoadedModel, load_model
from melbo_tui.prompts import encode


def _stream(lm: LoadedModel, ids: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream [T, d] at the input of block 0, then at the output of every block."""
    captured: list[torch.Tensor] = []

    def take_input(_m: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        captured.append(args[0] if args else kwargs["hidden_states"])

    def take_output(_m: torch.nn.Module, _a: tuple, out: object) -> None:
        captured.append(out[0] if isinstance(out, tuple) else out)  # type: ignore[index]

    handles = [lm.blocks[0].register_forward_pre_hook(take_input, with_kwargs=True)]
    handles += [b.register_forward_hook(take_output) for b in lm.blocks]
    try:
        with torch.no_grad():
            lm.model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return [c[0].float() for c in captured]


def _direction(lm: LoadedModel, seed: int = 0) -> torch.Tensor:
    return torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(seed)) * 7.0  # the norm must not matter


def test_every_block_keeps_the_embeddings_component(any_tiny: LoadedModel) -> None:
    """After each block the residual's projection on v equals its value at the embedding; unablated it drifts."""
    ids = torch.tensor([[5, 17, 3, 40, 22, 9, 61, 2]])
    v = _direction(any_tiny)
    unit = v / v.norm()
    plain = [(h @ unit) for h in _stream(any_tiny, ids)]  # [T] per layer
    with ablate(any_tiny, v):
        ablated = [(h @ unit) for h in _stream(any_tiny, ids)]
    scale = max(float(h.norm(dim=-1).max()) for h in _stream(any_tiny, ids))
    for layer in range(1, len(ablated)):
        assert torch.allclose(ablated[layer], ablated[0], atol=1e-5 * scale), f"block {layer - 1}"
    drift = max(float((p - plain[0]).abs().max()) for p in plain[1:])
    assert drift > 1e-2 * scale  # the model does write along v when not ablated: the check has teeth
    assert torch.allclose(ablated[0], plain[0])  # the embedding itself is untouched by default


def test_with_embedding_the_component_is_zero_everywhere(any_tiny: LoadedModel) -> None:
    ids = torch.tensor([[5, 17, 3, 40, 22, 9]])
    v = _direction(any_tiny, seed=1)
    with ablate(any_tiny, v, embedding=True):
        stream = _stream(any_tiny, ids)
    scale = max(float(h.norm(dim=-1).max()) for h in stream)
    for layer, h in enumerate(stream[1:]):
        assert float((h @ (v / v.norm())).abs().max()) <= 1e-5 * scale, f"block {layer}"


def test_several_directions_are_all_removed_and_hooks_go_away(tiny_llama: LoadedModel) -> None:
    ids = torch.tensor([[5, 17, 3, 40, 22, 9]])
    directions = torch.randn(3, tiny_llama.hidden_size, generator=torch.Generator().manual_seed(2))
    before = _stream(tiny_llama, ids)
    with ablate(tiny_llama, directions) as basis:
        assert basis.shape == (3, tiny_llama.hidden_size)
        assert torch.allclose(basis @ basis.T, torch.eye(3), atol=1e-5)
        stream = _stream(tiny_llama, ids)
    for h in stream[1:]:
        assert torch.allclose(h @ basis.T, stream[0] @ basis.T, atol=1e-4)
    after = _stream(tiny_llama, ids)
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_generation_is_ablated_at_generated_tokens_too(tiny_chat: LoadedModel) -> None:
    """With the KV cache on, each new token's residual keeps its embedding's component; the next token changes."""
    ids = encode(tiny_chat, "How can I build a bomb?")
    v = _stream(tiny_chat, ids)[-1][-1]  # what the model writes at the last position: ablating it must matter
    unit = v / v.norm()
    passes: list[list[torch.Tensor]] = []

    def take_input(_m: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        passes.append([args[0] if args else kwargs["hidden_states"]])

    def take_output(_m: torch.nn.Module, _a: tuple, out: object) -> None:
        passes[-1].append(out[0] if isinstance(out, tuple) else out)  # type: ignore[index]

    settings = GenerationSettings(max_new_tokens=6)
    with ablate(tiny_chat, v):
        handles = [tiny_chat.blocks[0].register_forward_pre_hook(take_input, with_kwargs=True)]
        handles += [b.register_forward_hook(take_output) for b in tiny_chat.blocks]
        try:
            generate_batch(tiny_chat, ids, 0, None, settings)
        finally:
            for h in handles:
                h.remove()
        with torch.no_grad():
            ablated_logits = tiny_chat.model(input_ids=ids).logits[0, -1]
    assert len(passes) == 6 and passes[1][0].shape[1] == 1  # prompt pass, then one cached pass per new token
    for stream in passes:
        at_embedding = stream[0].float() @ unit
        for h in stream[1:]:
            assert torch.allclose(h.float() @ unit, at_embedding, atol=1e-4 * float(h.norm(dim=-1).max()))
    with torch.no_grad():
        plain_logits = tiny_chat.model(input_ids=ids).logits[0, -1]
    assert (ablated_logits - plain_logits).abs().max() > 1e-3


def test_bad_directions_are_one_line_errors() -> None:
    with pytest.raises(InputError, match="zero vector"):
        orthonormal_basis(torch.zeros(8), 8)
    with pytest.raises(InputError, match="shape"):
        orthonormal_basis(torch.ones(4), 8)
    with pytest.raises(InputError, match="NaN"):
        orthonormal_basis(torch.full((8,), float("nan")), 8)


def test_equals_the_authors_weight_edit_on_parallel_blocks() -> None:
    """REFERENCE s.7's definition, W <- W - v v^T W on every attention and MLP output projection (and,
    as the hook also projects them, their biases): on GPT-NeoX's parallel blocks both give the same model."""
    lm = tiny_model("gpt_neox")
    assert lm.model.config.use_parallel_residual
    ids = torch.tensor([[5, 17, 3, 40, 22, 9, 61]])
    v = _direction(lm, seed=3)
    unit = v / v.norm()
    with torch.no_grad(), ablate(lm, v):
        hooked = lm.model(input_ids=ids).logits
    with torch.no_grad():
        plain = lm.model(input_ids=ids).logits
        for block in lm.blocks:
            for proj in (block.attention.dense, block.mlp.dense_4h_to_h):
                proj.weight -= torch.outer(unit, unit @ proj.weight)
                proj.bias -= unit * (unit @ proj.bias)
        edited = lm.model(input_ids=ids).logits
    assert (hooked - plain).abs().max() > 1e-3
    assert torch.allclose(hooked, edited, atol=1e-5)


def test_cli_generate_ablate(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    lm = load_model(str(tiny_model_dir))
    ids = encode(lm, "How can I build a bomb?")
    v = _stream(lm, ids)[-1][-1]  # what the model writes at the last position
    meta = BankMeta(kind=BankKind.DCT, model=str(tiny_model_dir), hidden_size=lm.hidden_size, num_layers=lm.num_layers,
                    source_layer=1, target_layer=4, prompts=["How can I build a bomb?"], radius=float(v.norm()))
    bank_path = tmp_path / "b.safetensors"
    save_bank(VectorBank(vectors=torch.stack([v, -v]), meta=meta), bank_path)
    common = ["generate", str(bank_path), "--model", str(tiny_model_dir), "--max-new-tokens", "4"]
    code, _, err = run_cli([*common, "--vector", "0", "--ablate"], capsys, monkeypatch)
    assert code == 0 and "vector 0" in err and "ablated from every block's writes" in err
    code, _, err = run_cli([*common, "--unsteered", "--ablate"], capsys, monkeypatch)
    assert code == 2 and err.strip() == "melbo-tui: error: --ablate needs a vector to ablate: --vector, --mean, --sum or --mean-sqrt"
    code, _, err = run_cli([*common, "--vector", "0", "--ablate-embedding"], capsys, monkeypatch)
    assert code == 2 and err.strip() == "melbo-tui: error: --ablate-embedding goes with --ablate"
