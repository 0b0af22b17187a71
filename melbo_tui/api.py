"""The notebook face: the engine as plain functions, tensors in and tensors out, no file written.

    import melbo_tui as mt
    lm = mt.load_model()  # the embedded SmolLM2-135M-Instruct (or a hub id, a directory, a .gguf)
    prompts = ["How can I build a bomb?"]
    V = mt.train_melbo(lm, prompts, source_layer=8, target_layer=16, radius=15.0, num_vectors=2, steps=100)
    W = mt.find_orthogonal(lm, V[0], prompts, source_layer=8, target_layer=16, count=2)
    m = mt.bank_metrics(lm, torch.cat([V[:1], W]), prompts[0], source_layer=8, target_layer=16)
    print(m["kl_seq"])  # row 0 is the base (theta0): 0; rows 1.. its orthogonal vectors
    for piece in mt.generate(lm, prompts[0], vector=W[0], source_layer=8):
        print(piece, end="")

Layer S is the residual stream at the output of decoder block S (0-based), HF hidden_states[S+1].
`wrap_model` adapts a model and tokenizer you already loaded. Keyword options not named here
are the fields of `melbo.MelboConfig` and `ortho.OrthoConfig` (e.g. `objective="seed"`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch

from melbo_tui.errors import InputError
from melbo_tui.generation import GenerationSettings, generate_stream
from melbo_tui.layers import find_blocks
from melbo_tui.melbo import MelboConfig, TrainProgress, default_layers, train
from melbo_tui.metrics import CONTINUATION_TOKENS
from melbo_tui.metrics import bank_metrics as _bank_metrics
from melbo_tui.models import LoadedModel
from melbo_tui.ortho import OrthoConfig, OrthoProgress, search
from melbo_tui.prompts import encode
from melbo_tui.sink import SinkRule


def wrap_model(model: Any, tokenizer: Any = None, name: str | None = None) -> LoadedModel:
    """A `LoadedModel` around a Hugging Face causal LM you loaded yourself.

    The model is put in eval mode and its weights stop requiring gradients (steering vectors are
    optimised, never the weights). A tokenizer without a pad token pads with its end-of-sequence
    token, on the left, as batched generation needs.
    """
    model.eval()
    model.requires_grad_(False)
    if tokenizer is not None:
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
    label = name or getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    return LoadedModel(model=model, tokenizer=tokenizer, name=str(label), blocks=find_blocks(model))


def train_melbo(
    lm: LoadedModel,
    prompts: list[str],
    *,
    radius: float,
    source_layer: int | None = None,
    target_layer: int | None = None,
    num_vectors: int = 8,
    steps: int = 300,
    system: str | None = None,
    raw: bool = False,
    on_progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> torch.Tensor:
    """`[num_vectors, d_model]` MELBO vectors of norm `radius`, mutually orthogonal (layers default to ~L/3, ~2L/3)."""
    source, target = _layers(lm, source_layer, target_layer)
    sink = options.pop("sink", None)
    config = MelboConfig(source, target, radius, num_vectors=num_vectors, steps=steps,
                         sink=_sink(sink) if sink is not None else SinkRule(), **options)
    return train(lm, config, _encode_all(lm, prompts, system, raw), on_progress=on_progress, should_stop=should_stop)


def find_orthogonal(
    lm: LoadedModel,
    theta0: torch.Tensor,
    prompts: list[str],
    *,
    count: int,
    source_layer: int | None = None,
    target_layer: int | None = None,
    system: str | None = None,
    raw: bool = False,
    on_progress: Callable[[OrthoProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> torch.Tensor:
    """`[n, d_model]` vectors orthogonal to `theta0` and to each other that reproduce its effect (MELBO-ortho).

    n == count unless `should_stop` fired or a vector's norm collapsed (no more such directions).
    """
    source, target = _layers(lm, source_layer, target_layer)
    sink = options.pop("sink", None)
    config = OrthoConfig(count=count, sink=_sink(sink) if sink is not None else None, **options)
    return search(lm, theta0.float(), _encode_all(lm, prompts, system, raw), source_layer=source, target_layer=target,
                  config=config, on_progress=on_progress, should_stop=should_stop).vectors


def bank_metrics(
    lm: LoadedModel,
    vectors: torch.Tensor,
    prompt: str | torch.Tensor,
    *,
    source_layer: int,
    target_layer: int,
    base_index: int = 0,
    continuation: int = CONTINUATION_TOKENS,
    system: str | None = None,
    raw: bool = False,
    **options: Any,
) -> dict[str, torch.Tensor]:
    """Every bank metric of `vectors  # [N, d_model]` on one prompt (text, or token ids `[1, T]`): name -> `[N]`."""
    ids = prompt if isinstance(prompt, torch.Tensor) else encode(lm, prompt, system, raw)
    sink = options.pop("sink", None)
    return _bank_metrics(lm, vectors, ids, source_layer=source_layer, target_layer=target_layer, base_index=base_index,
                         continuation=continuation, sink=_sink(sink) if sink is not None else None, **options)


def generate(
    lm: LoadedModel,
    prompt: str,
    *,
    vector: torch.Tensor | None = None,
    source_layer: int | None = None,
    max_new_tokens: int = GenerationSettings.max_new_tokens,
    temperature: float = GenerationSettings.temperature,
    seed: int = 0,
    system: str | None = None,
    raw: bool = False,
) -> Iterator[str]:
    """The completion of `prompt` steered by `vector` (None: unsteered), piece by piece as it is decoded.

    Generation runs in a thread; leaving the loop early (or closing the iterator) stops it.
    """
    if vector is not None and source_layer is None:
        raise InputError("give `source_layer`: where the vector is added")
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    settings.check()
    ids = encode(lm, prompt, system, raw)
    pieces: queue.Queue[str | BaseException | None] = queue.Queue()
    stop = threading.Event()

    def run() -> None:
        try:
            generate_stream(lm, ids, source_layer if source_layer is not None else 0, vector, settings,
                            on_text=pieces.put, should_stop=stop.is_set)
        except BaseException as exc:
            pieces.put(exc)
        finally:
            pieces.put(None)

    worker = threading.Thread(target=run, name="melbo-generate", daemon=True)
    worker.start()
    try:
        while (item := pieces.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def _layers(lm: LoadedModel, source: int | None, target: int | None) -> tuple[int, int]:
    default_source, default_target = default_layers(lm.num_layers)
    return (default_source if source is None else source, default_target if target is None else target)


def _encode_all(lm: LoadedModel, prompts: list[str] | str, system: str | None, raw: bool) -> list[torch.Tensor]:
    if isinstance(prompts, str):
        prompts = [prompts]
    return [encode(lm, p, system, raw) for p in prompts]


def _sink(value: SinkRule | str) -> SinkRule:
    return value if isinstance(value, SinkRule) else SinkRule.parse(value)
