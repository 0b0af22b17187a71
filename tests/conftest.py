"""Shared fixtures: tiny random-weight models of several architectures, and the embedded model.

Tiny models are built from a config (no download), so most tests need neither the hub nor the
98 MB GGUF. `embedded` is the real SmolLM2-135M-Instruct, loaded once per session from the
safetensors cache (converted from the GGUF on first use).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers

from melbo_tui.layers import find_blocks
from melbo_tui.models import LoadedModel, load_model

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

_COMMON = dict(vocab_size=96, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64)

TINY_CONFIGS: dict[str, Callable[[], transformers.PretrainedConfig]] = {
    "llama": lambda: transformers.LlamaConfig(num_key_value_heads=2, **_COMMON),
    "qwen2": lambda: transformers.Qwen2Config(num_key_value_heads=2, **_COMMON),
    "mistral": lambda: transformers.MistralConfig(num_key_value_heads=2, **_COMMON),
    "gemma": lambda: transformers.GemmaConfig(num_key_value_heads=2, head_dim=8, **_COMMON),
    "gemma3": lambda: transformers.Gemma3TextConfig(num_key_value_heads=2, head_dim=8, **_COMMON),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=96, n_embd=32, n_layer=4, n_head=4, n_positions=128),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(**_COMMON),
}

# Models whose blocks differ by layer (sliding-window vs global attention, per-type RoPE bases):
# the place where running a shortened block list can misalign per-layer settings. The window
# (4 tokens) is shorter than the test prompts, so a sliding layer run as a global one shows.
_WINDOW = {"sliding_window": 4}
MIXED_LAYER_CONFIGS: dict[str, Callable[[], transformers.PretrainedConfig]] = {
    "gemma2": lambda: transformers.Gemma2Config(num_key_value_heads=2, head_dim=8, **_WINDOW, **_COMMON),
    "gemma3_mixed": lambda: transformers.Gemma3TextConfig(
        num_key_value_heads=2, head_dim=8, layer_types=["sliding_attention", "full_attention"] * 2, **_WINDOW, **_COMMON),
    "qwen2_sliding": lambda: transformers.Qwen2Config(
        num_key_value_heads=2, use_sliding_window=True, max_window_layers=2, **_WINDOW, **_COMMON),
}


def tiny_model(arch: str, seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    config = {**TINY_CONFIGS, **MIXED_LAYER_CONFIGS}[arch]()
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=None, name=f"tiny-{arch}", blocks=find_blocks(model))


@pytest.fixture(params=sorted(TINY_CONFIGS))
def any_tiny(request: pytest.FixtureRequest) -> LoadedModel:
    return tiny_model(request.param)


@pytest.fixture
def tiny_llama() -> LoadedModel:
    return tiny_model("llama")


@pytest.fixture(scope="session")
def embedded() -> LoadedModel:
    return load_model()


@pytest.fixture(scope="session")
def embedded_tokenizer() -> transformers.PreTrainedTokenizerBase:
    """The embedded model's tokenizer alone (its chat template included), without loading its weights."""
    from melbo_tui.models import embedded_model_dir

    return transformers.AutoTokenizer.from_pretrained(embedded_model_dir())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, embedded_tokenizer: transformers.PreTrainedTokenizerBase) -> Path:
    """A tiny random Llama with the embedded chat tokenizer, saved as a local HF directory.

    CLI tests load it with `--model DIR` in a fraction of a second and still go through the
    real loading, chat-template and generation code.
    """
    directory = tmp_path_factory.mktemp("tiny-chat-llama")
    torch.manual_seed(0)
    tokenizer = embedded_tokenizer
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_chat(tiny_model_dir: Path) -> LoadedModel:
    """The tiny chat Llama loaded through the real loader (tokenizer and chat template included)."""
    return load_model(str(tiny_model_dir))


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """`melbo-tui ARGS` in this process (its entry point, exit code and both streams), for CLI tests."""
    import sys

    from melbo_tui.cli import main

    monkeypatch.setattr(sys, "argv", ["melbo-tui", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
