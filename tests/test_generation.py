"""Generation does what our settings say, whatever the model's own generation defaults.

References are cache-free loops over full forward passes (steered with `steer`), so each test
compares generate's path (KV cache, processors, maybe compilation) with the plain definition.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from helpers_ortho import random_bank
from transformers import CompileConfig

from melbo_tui.dump import dump_completions
from melbo_tui.generation import GenerationSettings, RowSampler, generate_batch, generate_stream
from melbo_tui.models import LoadedModel, load_model
from melbo_tui.steering import steer

IDS = torch.tensor([[5, 17, 3, 44, 9]])


class _Tokenizer:
    """Token ids as text: enough for generate_batch on a tokenizer-less tiny model."""

    pad_token_id = 0
    eos_token_id = 95

    def batch_decode(self, rows: torch.Tensor, skip_special_tokens: bool = True) -> list[str]:
        return [" ".join(str(t) for t in row.tolist()) for row in rows]


def _reference(lm: LoadedModel, ids: torch.Tensor, layer: int, vector: torch.Tensor | None, n: int,
               sampler: RowSampler | None = None) -> list[int]:
    """n tokens by full forwards without a cache: argmax, or `sampler` on the raw logits."""
    out = ids
    with torch.no_grad(), steer(lm, layer, vector):
        for _ in range(n):
            logits = lm.model(input_ids=out, use_cache=False).logits[:, -1]  # [1, V]
            scores = sampler(out, logits) if sampler is not None else logits
            out = torch.cat([out, scores.argmax(-1, keepdim=True)], dim=1)
    return out[0, ids.shape[1]:].tolist()


def _tokens(text: str) -> list[int]:
    return [int(t) for t in text.split()]


def test_steering_survives_a_compiled_decode_step() -> None:
    """A static cache with a compile config makes generate compile its decode step (forced here
    on CPU with the eager backend); a hook added after compilation was lost after token 1."""
    lm = tiny_model("llama")
    lm.tokenizer = _Tokenizer()
    config = CompileConfig(backend="eager", mode=None)
    config._compile_all_devices = True
    lm.model.generation_config.cache_implementation = "static"
    lm.model.generation_config.compile_config = config
    vector = torch.randn(1, lm.hidden_size, generator=torch.Generator().manual_seed(0)) * 8
    settings = GenerationSettings(max_new_tokens=8)
    plain = generate_batch(lm, IDS, 1, None, settings)  # compiles the decode step, if anything does
    steered = generate_batch(lm, IDS, 1, vector, settings)
    assert _tokens(plain[0]) == _reference(lm, IDS, 1, None, 8)
    assert _tokens(steered[0]) == _reference(lm, IDS, 1, vector[0], 8)
    assert steered != plain


@pytest.fixture(scope="module")
def opinionated_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny chat Llama with a hub-style generation_config.json full of sampling opinions."""
    directory = tmp_path_factory.mktemp("opinionated")
    for item in tiny_model_dir.iterdir():
        shutil.copy(item, directory / item.name)
    config = json.loads((directory / "generation_config.json").read_text())
    config.update(do_sample=True, temperature=0.2, top_k=1, top_p=0.3, repetition_penalty=3.0,
                  no_repeat_ngram_size=2, min_new_tokens=2, cache_implementation="static")
    (directory / "generation_config.json").write_text(json.dumps(config))
    return directory


def test_greedy_ignores_the_models_generation_config(opinionated_dir: Path) -> None:
    lm = load_model(str(opinionated_dir))
    assert lm.model.generation_config.repetition_penalty == 3.0  # the file was read
    ids = lm.tokenizer("How can I build a bomb?", return_tensors="pt").input_ids
    vector = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(1)) * 4
    for v in (None, vector):
        text = generate_batch(lm, ids, 2, None if v is None else v[None], GenerationSettings(max_new_tokens=12))[0]
        expected = lm.tokenizer.decode(_reference(lm, ids, 2, v, 12), skip_special_tokens=True)
        assert text == expected
    assert lm.model.generation_config.repetition_penalty == 3.0  # the model's own config is back


def test_sampling_ignores_the_models_generation_config(opinionated_dir: Path) -> None:
    """top_k=1 in the file would make sampling greedy; a penalty would change every distribution."""
    lm = load_model(str(opinionated_dir))
    ids = lm.tokenizer("How can I build a bomb?", return_tensors="pt").input_ids
    settings = GenerationSettings(max_new_tokens=10, temperature=1.5, seed=7)
    texts = generate_batch(lm, ids, 2, torch.zeros(4, lm.hidden_size), settings, keys=["a", "b", "c", "d"])
    for key, text in zip("abcd", texts, strict=True):
        sampler = RowSampler(settings.temperature, settings.seed, [key])
        assert text == lm.tokenizer.decode(_reference(lm, ids, 2, None, 10, sampler), skip_special_tokens=True)
    greedy = generate_batch(lm, ids, 2, None, GenerationSettings(max_new_tokens=10))[0]
    assert any(text != greedy for text in texts)


def test_sampled_dump_does_not_depend_on_the_batch_size(tiny_chat: LoadedModel) -> None:
    bank = random_bank(tiny_chat, rows=5, norm=10.0, source=1, target=4, kind="ortho")
    ids = tiny_chat.tokenizer("How can I build a bomb?", return_tensors="pt").input_ids
    settings = GenerationSettings(max_new_tokens=8, temperature=1.0, seed=3)
    rows = [0, 1, 2, 3, 4]
    one = [e.text for e in dump_completions(tiny_chat, bank, ids, rows, settings, batch_size=1)]
    five = [e.text for e in dump_completions(tiny_chat, bank, ids, rows, settings, batch_size=5)]
    two = [e.text for e in dump_completions(tiny_chat, bank, ids, rows, settings, batch_size=2)]
    assert one == five == two
    other_rows = [e.text for e in dump_completions(tiny_chat, bank, ids, [3, 4], settings, batch_size=2)]
    assert other_rows == one[3:]  # a row's completion is its own, whatever else is dumped with it
    reseeded = [e.text for e in dump_completions(tiny_chat, bank, ids, rows, GenerationSettings(8, 1.0, 4), batch_size=5)]
    assert reseeded != one


def test_the_same_seed_and_key_stream_the_same_sample(tiny_chat: LoadedModel) -> None:
    ids = tiny_chat.tokenizer("Tell me a story.", return_tensors="pt").input_ids
    settings = GenerationSettings(max_new_tokens=8, temperature=1.0, seed=5)
    streamed = generate_stream(tiny_chat, ids, 1, None, settings, lambda _t: None, key="2")
    batch = generate_batch(tiny_chat, ids, 1, torch.zeros(3, tiny_chat.hidden_size), settings)
    assert streamed.text == batch[2]


def test_the_vector_is_moved_to_the_model_once_per_steer_call() -> None:
    """A float64 vector needs a copy to the model's dtype: once, not once per decode step."""
    from torch.utils._python_dispatch import TorchDispatchMode

    lm = tiny_model("llama")
    lm.tokenizer = _Tokenizer()
    vector = torch.randn(lm.hidden_size, dtype=torch.float64) * 4

    class CountCopies(TorchDispatchMode):
        copies = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func is torch.ops.aten._to_copy.default and args[0].dtype == torch.float64 \
                    and args[0].numel() == lm.hidden_size:
                CountCopies.copies += 1
            return func(*args, **(kwargs or {}))

    with CountCopies():
        text = generate_batch(lm, IDS, 1, vector[None], GenerationSettings(max_new_tokens=6))[0]
    assert len(_tokens(text)) == 6
    assert CountCopies.copies == 1
