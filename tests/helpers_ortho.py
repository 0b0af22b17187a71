"""Tiny random-weight models and banks for the ortho/metrics/export/dump tests (no download)."""

from __future__ import annotations

from pathlib import Path

import torch

from melbo_tui.bank import BankMeta, VectorBank, save_bank
from melbo_tui.layers import find_blocks
from melbo_tui.models import LoadedModel

TINY_NAME = "tiny-llama-test"


def tiny_model(hidden: int = 32, layers: int = 4, seed: int = 0, vocab: int = 64, name: str = TINY_NAME) -> LoadedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                         max_position_embeddings=128, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=None, name=name, blocks=find_blocks(model))


def prompt_ids(lm: LoadedModel, length: int = 7, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    vocab = lm.model.get_input_embeddings().weight.shape[0]
    return torch.randint(0, vocab, (1, length), generator=generator)


def base_bank(lm: LoadedModel, norm: float = 4.0, rows: int = 2, source: int = 0, target: int = 3,
              seed: int = 2) -> VectorBank:
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(rows, lm.hidden_size, generator=generator)
    vectors = vectors / vectors.norm(dim=1, keepdim=True) * norm
    meta = BankMeta(kind="melbo", model=lm.name, hidden_size=lm.hidden_size, num_layers=lm.num_layers,
                    source_layer=source, target_layer=target, prompts=["hello"], radius=norm)
    return VectorBank(vectors=vectors, meta=meta)


def write_bank(bank: VectorBank, path: Path) -> Path:
    save_bank(bank, path)
    return path
