"""Steered text generation, streamed piece by piece and stoppable from another thread.

One steering vector (or none) per call, or one per batch row in `generate_batch`. The vector is
added after `source_layer` at every position, prompt and generated tokens alike, with the KV
cache on (see `steering.steer`). Temperature 0 means greedy decoding; otherwise plain
temperature sampling (no top-k/top-p) seeded by `seed`, so a completion can be reproduced.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

from melbo_tui.errors import InputError
from melbo_tui.models import LoadedModel
from melbo_tui.steering import steer


MAX_NEW_TOKENS_LIMIT = 4096  # one bound for every face: beyond it a "completion" is a job, not a preview


@dataclass(frozen=True)
class GenerationSettings:
    """How to decode. The defaults are every face's defaults (CLI, dump, sweep, explorer):
    greedy, so a completion is reproducible and comparable across vectors, and 48 tokens,
    enough to read a behaviour at ~27 tokens/s on a 2-core CPU."""

    max_new_tokens: int = 48
    temperature: float = 0.0
    seed: int = 0

    def check(self) -> None:
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise InputError(f"max new tokens must be 1..{MAX_NEW_TOKENS_LIMIT}, got {self.max_new_tokens}")
        if not self.temperature >= 0 or self.temperature == float("inf"):
            raise InputError(f"temperature must be a finite number >= 0, got {self.temperature}")


@dataclass(frozen=True)
class GenerationResult:
    text: str
    num_tokens: int
    seconds: float
    stopped: bool  # True when `should_stop` cut it short

    @property
    def tokens_per_second(self) -> float:
        return self.num_tokens / self.seconds if self.seconds > 0 else 0.0


class _CallbackStreamer(TextStreamer):
    """TextStreamer that hands each decoded piece to a callback instead of printing it."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self._on_text = on_text
        self.num_tokens = 0

    def put(self, value: torch.Tensor) -> None:
        if not self.next_tokens_are_prompt:
            self.num_tokens += int(value.numel())
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self._on_text(text)


class _StopWhen(StoppingCriteria):
    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self._should_stop = should_stop
        self.fired = False

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        self.fired = self.fired or self._should_stop()
        return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)


def generate_stream(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    source_layer: int,
    vector: torch.Tensor | None,
    settings: GenerationSettings,
    on_text: Callable[[str], None],
    should_stop: Callable[[], bool] | None = None,
) -> GenerationResult:
    """Generate from `input_ids  # [1, T]` steered by `vector  # [d_model]` (None: unsteered)."""
    settings.check()
    streamer = _CallbackStreamer(lm.tokenizer, on_text)
    pieces: list[str] = []

    def collect(text: str) -> None:
        pieces.append(text)
        on_text(text)

    streamer._on_text = collect
    stopper = _StopWhen(should_stop or (lambda: False))
    start = time.perf_counter()
    with steer(lm, source_layer, vector), _seeded(settings.seed, lm.device):
        lm.model.generate(  # type: ignore[operator]
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([stopper]),
            **_sampling_kwargs(lm, settings),
        )
    return GenerationResult("".join(pieces), streamer.num_tokens, time.perf_counter() - start, stopper.fired)


def generate_batch(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    source_layer: int,
    vectors: torch.Tensor | None,
    settings: GenerationSettings,
) -> list[str]:
    """Completions of one prompt `[1, T]` under each of `vectors  # [B, d_model]` in one call."""
    settings.check()
    batch = 1 if vectors is None else int(vectors.shape[0])
    ids = input_ids.expand(batch, -1)
    with torch.no_grad(), steer(lm, source_layer, vectors), _seeded(settings.seed, lm.device):
        out = lm.model.generate(  # type: ignore[operator]
            input_ids=ids, attention_mask=torch.ones_like(ids), **_sampling_kwargs(lm, settings)
        )
    new_tokens = out[:, input_ids.shape[1]:]
    return [str(t) for t in lm.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def _sampling_kwargs(lm: LoadedModel, settings: GenerationSettings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        "pad_token_id": lm.tokenizer.pad_token_id,
    }
    if settings.temperature == 0:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(do_sample=True, temperature=settings.temperature, top_p=1.0, top_k=0)
    return kwargs


class _seeded:
    """Seed torch's RNG for one generation without disturbing the caller's RNG state."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self._seed = seed
        devices = [device] if device.type == "cuda" else []
        self._fork = torch.random.fork_rng(devices=devices)

    def __enter__(self) -> None:
        self._fork.__enter__()
        torch.manual_seed(self._seed)

    def __exit__(self, *exc: Any) -> None:
        self._fork.__exit__(*exc)
