"""The notebook face: the engine as plain functions, tensors in and tensors out, no file written.

    import melbo_tui as mt
    lm = mt.load_model()  # the embedded SmolLM2-135M-Instruct (or a hub id, a directory, a .gguf)
    prompts = ["How can I build a bomb?"]
    V = mt.train_melbo(lm, prompts, source_layer=8, target_layer=16, radius=15.0, num_vectors=2, steps=100)
    W = mt.find_orthogonal(lm, V[0], prompts, source_layer=8, target_layer=16, num_vectors=2)
    m = mt.bank_metrics(lm, torch.cat([V[:1], W]), prompts[0], source_layer=8, target_layer=16)
    print(m["kl_seq"])  # row 0 is the base (theta0): 0; rows 1.. its orthogonal vectors
    for piece in mt.generate(lm, prompts[0], vector=W[0], source_layer=8):
        print(piece, end="")

Layer S is the residual stream at the output of decoder block S (0-based), HF hidden_states[S+1].
`wrap_model` adapts a model and tokenizer you already loaded. Every method takes the same shared
inputs (the model, prompts with `system` and `raw`, `source_layer` and `target_layer`, which
default to ~L/3 and ~2L/3, `num_vectors`); other keyword options are the fields of its config
(`melbo.MelboConfig`, `ortho.OrthoConfig`, `dct.DCTConfig`, `jacobian.JacobianConfig`; e.g.
`objective="seed"`). `ablate` (from `melbo_tui.ablation`) projects directions out of every block's
write within a `with` block.
"""

from __future__ import annotations

import queue
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from melbo_tui.bank import VectorBank
from melbo_tui.calibration import MelboCalibration, calibrate_melbo, sweep
from melbo_tui.dct import DCTProgress
from melbo_tui.errors import InputError
from melbo_tui.generation import GenerationSettings, generate_stream
from melbo_tui.layers import find_blocks
from melbo_tui.melbo import MelboConfig, TrainProgress, resolve_layers, train
from melbo_tui.metrics import CONTINUATION_TOKENS
from melbo_tui.metrics import bank_metrics as _bank_metrics
from melbo_tui.models import LoadedModel
from melbo_tui.ortho import OrthoConfig, OrthoProgress, search
from melbo_tui.prompts import encode
from melbo_tui.scale import model_scale
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
    source, target = resolve_layers(lm.num_layers, source_layer, target_layer)
    sink = options.pop("sink", None)
    config = MelboConfig(source, target, radius, num_vectors=num_vectors, steps=steps,
                         sink=_sink(sink) if sink is not None else SinkRule(), **options)
    return train(lm, config, _encode_all(lm, prompts, system, raw), on_progress=on_progress, should_stop=should_stop)


def find_orthogonal(
    lm: LoadedModel,
    theta0: torch.Tensor,
    prompts: list[str],
    *,
    num_vectors: int | None = None,
    source_layer: int | None = None,
    target_layer: int | None = None,
    system: str | None = None,
    raw: bool = False,
    on_progress: Callable[[OrthoProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> torch.Tensor:
    """`[n, d_model]` vectors orthogonal to `theta0` and to each other that reproduce its effect (MELBO-ortho).

    n == num_vectors unless `should_stop` fired or a vector's norm collapsed (no more such directions).
    `count=` is the deprecated spelling of `num_vectors=`.
    """
    num_vectors = _renamed(options, "count", "num_vectors", num_vectors)
    if num_vectors is None:
        raise InputError("give `num_vectors`: how many orthogonal vectors to find")
    source, target = resolve_layers(lm.num_layers, source_layer, target_layer)
    sink = options.pop("sink", None)
    config = OrthoConfig(count=num_vectors, sink=_sink(sink) if sink is not None else None, **options)
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


def train_dct(
    lm: LoadedModel,
    prompts: list[str],
    *,
    source_layer: int | None = None,
    target_layer: int | None = None,
    num_vectors: int = 64,
    iterations: int = 10,
    radius: float | None = None,
    system: str | None = None,
    raw: bool = False,
    on_progress: Callable[[DCTProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> VectorBank | None:
    """Deep Causal Transcoding: `num_vectors` factors at once, ranked by their share of the response.

    Returns the bank in memory (nothing written): `.vectors` `[m, d]` = R v_l, largest alpha^2
    first, `.metrics["score"]` = alpha^2, `.meta.radius` = R (calibrated when `radius` is None).
    None if `should_stop` fired. Other options are `dct.DCTConfig`'s fields.
    """
    from melbo_tui.dct import DCTConfig, DCTRun, run_dct

    source, target = resolve_layers(lm.num_layers, source_layer, target_layer)
    config = DCTConfig(num_vectors=num_vectors, iterations=iterations, radius=radius, **options)
    run = DCTRun(source, target, list(prompts), config, system, raw)
    return run_dct(lm, run, on_progress=on_progress, should_stop=should_stop)


def power_steering(
    lm: LoadedModel,
    prompts: list[str],
    *,
    source_layer: int | None = None,
    target_layer: int | None = None,
    num_vectors: int = 16,
    radius: float | None = None,
    system: str | None = None,
    raw: bool = False,
    **options: Any,
) -> VectorBank:
    """Power steering: the top right singular directions of the source->target Jacobian at 0, scaled to R.

    Returns the bank in memory: `.vectors` `[k, d]`, sigma descending (`.metrics["sigma"]`),
    `.meta.radius` = R (DCT's calibration when `radius` is None). Other options are
    `jacobian.JacobianConfig`'s fields.
    """
    from melbo_tui.jacobian import JacobianConfig, run_jacobian

    source, target = resolve_layers(lm.num_layers, source_layer, target_layer)
    config = JacobianConfig(num_vectors=num_vectors, radius=radius, **options)
    return run_jacobian(lm, source, target, list(prompts), config, system, raw)


def calibrate(
    lm: LoadedModel,
    prompts: list[str],
    *,
    source_layer: int | None = None,
    target_layer: int | None = None,
    radii: list[float] | None = None,
    num_vectors: int = 4,
    steps: int = 100,
    system: str | None = None,
    raw: bool = False,
    **options: Any,
) -> MelboCalibration:
    """Choose MELBO's R: quick vectors per R, the take-off of their target-layer change and the
    recommended R (the largest tried at or below 3/4 of it). `radii` default to SmolLM2's sweep in
    this model's units (`scale`). Other options are `melbo.MelboConfig`'s fields."""
    source, target = resolve_layers(lm.num_layers, source_layer, target_layer)
    values = radii if radii is not None else model_scale(lm, source).radii()
    sink = options.pop("sink", None)
    base = MelboConfig(source, target, values[0], num_vectors=num_vectors, steps=steps,
                       sink=_sink(sink) if sink is not None else SinkRule(), **options)
    base.check(lm)
    return calibrate_melbo(sweep(lm, base, values, list(prompts), system, raw))


def _renamed(options: dict[str, Any], old: str, new: str, value: Any) -> Any:
    """The value of keyword `new`, taking the deprecated `old` spelling (with a warning) if it was given instead."""
    if old not in options:
        return value
    old_value = options.pop(old)
    if value is not None:
        raise InputError(f"give `{new}` only (`{old}` is its deprecated spelling)")
    warnings.warn(f"`{old}=` is deprecated: use `{new}=`", DeprecationWarning, stacklevel=3)
    return old_value


def _encode_all(lm: LoadedModel, prompts: list[str] | str, system: str | None, raw: bool) -> list[torch.Tensor]:
    if isinstance(prompts, str):
        prompts = [prompts]
    return [encode(lm, p, system, raw) for p in prompts]


def _sink(value: SinkRule | str) -> SinkRule:
    return value if isinstance(value, SinkRule) else SinkRule.parse(value)
