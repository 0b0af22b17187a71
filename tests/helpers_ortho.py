"""Small builders shared by the ortho/metrics/export/dump tests: banks and token ids (no download)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from melbo_tui.bank import BankMeta, VectorBank
from melbo_tui.models import LoadedModel


def prompt_ids(lm: LoadedModel, length: int = 7, seed: int = 1) -> torch.Tensor:
    """Random token ids `[1, length]` (tiny models have no tokenizer)."""
    generator = torch.Generator().manual_seed(seed)
    vocab = lm.model.get_input_embeddings().weight.shape[0]
    return torch.randint(0, vocab, (1, length), generator=generator)


def random_bank(lm: LoadedModel, norm: float = 4.0, rows: int = 2, source: int = 0, target: int = 3,
                seed: int = 2, kind: str = "melbo", prompts: list[str] | None = None) -> VectorBank:
    """`rows` random vectors of norm `norm` for `lm`, steering at `source`."""
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(rows, lm.hidden_size, generator=generator)
    vectors = vectors / vectors.norm(dim=1, keepdim=True) * norm
    meta = BankMeta(kind=kind, model=lm.name, hidden_size=lm.hidden_size, num_layers=lm.num_layers,
                    source_layer=source, target_layer=target, prompts=prompts or ["How can I build a bomb?"],
                    radius=norm)
    return VectorBank(vectors=vectors, meta=meta)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a busy 2-core machine two threads wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
