"""Steered text generation, streamed piece by piece and stoppable from another thread.

One steering vector (or none) per call, or one per batch row in `generate_batch`. The vector is
added after `source_layer` at every position, prompt and generated tokens alike, with the KV
cache on (see `steering.steer`). Temperature 0 means greedy decoding; otherwise plain
temperature sampling (no top-k/top-p) seeded by `seed`, so a completion can be reproduced.

Three things `model.generate` would otherwise do behind our back, all settled here:
- a hub model's `generation_config.json` (repetition_penalty, top_k/top_p, temperature,
  no_repeat_ngram_size, ...) fills every setting the call leaves unset, so "greedy" was not
  greedy: generate runs with an explicit `GenerationConfig` and the model's own defaults are
  swapped for a neutral one (only its token ids: eos, bos, pad) for the length of the call;
- with a static cache (Gemma configs, CUDA) generate compiles its decode step, and the
  compiled graph does not see a steering hook added after compilation (measured on CPU with
  the compiled path forced: only the first token was steered): compilation is disabled;
- sampling drew from one global RNG, so a row's completion depended on its batch (and the
  batch halves on OOM): each row draws from its own generator seeded by (seed, key), where the
  key names the row (`dump` uses the bank row), so batch 1 and batch 32 give the same texts.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList, TextStreamer

from melbo_tui.decoding import MAX_NEW_TOKENS_LIMIT, GenerationResult, GenerationSettings
from melbo_tui.errors import InputError
from melbo_tui.models import LoadedModel
from melbo_tui.steering import steer

__all__ = ["MAX_NEW_TOKENS_LIMIT", "GenerationResult", "GenerationSettings", "complete_batch", "generate_batch", "generate_stream"]


class _CallbackStreamer(TextStreamer):
    """TextStreamer that hands each decoded piece to a callback instead of printing it."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self._on_text = on_text
        self.num_tokens = 0

    def put(self, value: torch.Tensor) -> None:
        if not self.next_tokens_are_prompt:
            self.num_tokens += int(value.numel())
        super().put(value)  # type: ignore[no-untyped-call]  # transformers leaves it unannotated

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
    key: str = "0",
) -> GenerationResult:
    """Generate from `input_ids  # [1, T]` steered by `vector  # [d_model]` (None: unsteered).

    `key` names the sampling stream (see `RowSampler`); "0" is what `dump` uses for bank row 0.
    """
    settings.check()
    streamer = _CallbackStreamer(lm.tokenizer, on_text)
    pieces: list[str] = []

    def collect(text: str) -> None:
        pieces.append(text)
        on_text(text)

    streamer._on_text = collect
    stopper = _StopWhen(should_stop or (lambda: False))
    start = time.perf_counter()
    with torch.no_grad(), steer(lm, source_layer, vector):
        run_generate(lm, input_ids, settings, [key], streamer=streamer, stopping_criteria=StoppingCriteriaList([stopper]))
    return GenerationResult("".join(pieces), streamer.num_tokens, time.perf_counter() - start, stopper.fired)


def generate_batch(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    source_layer: int,
    vectors: torch.Tensor | None,
    settings: GenerationSettings,
    keys: Sequence[str] | None = None,
) -> list[str]:
    """Completions of one prompt `[1, T]` under each of `vectors  # [B, d_model]` in one call.

    `keys` (default "0".."B-1") name each row's sampling stream: the same key, seed and vector
    give the same completion in any batch.
    """
    return [r.text for r in complete_batch(lm, input_ids, source_layer, vectors, settings, keys)]


def complete_batch(
    lm: LoadedModel,
    input_ids: torch.Tensor,
    source_layer: int,
    vectors: torch.Tensor | None,
    settings: GenerationSettings,
    keys: Sequence[str] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[GenerationResult]:
    """`generate_batch` with each row's token count and time, stoppable between decode steps.

    A stop cuts every row short (`stopped` set on each): the explorer's read-ahead gives way
    this way to a completion the user asked for, within one decode step.
    """
    settings.check()
    batch = 1 if vectors is None else int(vectors.shape[0])
    keys = [str(i) for i in range(batch)] if keys is None else list(keys)
    if len(keys) != batch:
        raise InputError(f"{len(keys)} sampling keys for {batch} rows")
    ids = input_ids.expand(batch, -1)
    stopper = _StopWhen(should_stop or (lambda: False))
    start = time.perf_counter()
    with torch.no_grad(), steer(lm, source_layer, vectors):
        out = run_generate(lm, ids, settings, keys, stopping_criteria=StoppingCriteriaList([stopper]))
    seconds = time.perf_counter() - start
    new_tokens = out[:, input_ids.shape[1]:]  # [B, new]
    counts = _generated_counts(lm, new_tokens)
    texts = lm.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [GenerationResult(str(text), n, seconds, stopper.fired) for text, n in zip(texts, counts, strict=True)]


def _generated_counts(lm: LoadedModel, new_tokens: torch.Tensor) -> list[int]:
    """Tokens each row generated, its stop token included: the padding after it is not generated."""
    eos = _token_ids(lm)["eos_token_id"]
    stops = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    counts = []
    for row in new_tokens.tolist():
        end = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
        counts.append(end)
    return counts


def run_generate(lm: LoadedModel, input_ids: torch.Tensor, settings: GenerationSettings, keys: Sequence[str],
                 min_new_tokens: int | None = None, **kwargs: Any) -> torch.Tensor:
    """The one call of `model.generate`: explicit settings, no hub defaults, no compilation.

    `input_ids  # [B, T]` (no padding); returns `[B, T + new]`. `min_new_tokens` ignores the
    stop tokens until then (the benchmark's fixed lengths); extra `kwargs` (streamer,
    stopping_criteria) go to generate. Steering hooks are the caller's.
    """
    processors = LogitsProcessorList()
    if settings.temperature > 0:
        processors.append(RowSampler(settings.temperature, settings.seed, keys))
    config = generation_config(lm, settings)
    if min_new_tokens is not None:
        config.min_new_tokens = min_new_tokens
    with neutral_model_defaults(lm):
        return lm.model.generate(  # type: ignore[operator, no-any-return]
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
            generation_config=config, logits_processor=processors, **kwargs)


def generation_config(lm: LoadedModel, settings: GenerationSettings) -> GenerationConfig:
    """Greedy decoding of `max_new_tokens`, the model's stop tokens, nothing else.

    Sampling is greedy too: `RowSampler` has already reduced the scores to the drawn token.
    """
    return GenerationConfig(max_new_tokens=settings.max_new_tokens, do_sample=False, num_beams=1,
                            disable_compile=True, cache_implementation=None, **_token_ids(lm))


@contextlib.contextmanager
def neutral_model_defaults(lm: LoadedModel) -> Iterator[None]:
    """Swap the model's own generation defaults for its token ids only, for one generate call.

    generate fills every setting left unset from `model.generation_config`; a chat model's
    file sets repetition penalties, top-k/top-p, temperature or a static cache there.
    """
    model = lm.model
    own = model.generation_config
    model.generation_config = GenerationConfig(**_token_ids(lm))
    try:
        yield
    finally:
        model.generation_config = own


def _token_ids(lm: LoadedModel) -> dict[str, Any]:
    own = getattr(lm.model, "generation_config", None)
    eos = getattr(own, "eos_token_id", None)
    tokenizer = lm.tokenizer
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    if pad is None:
        pad = getattr(own, "pad_token_id", None)
    if pad is None:
        pad = eos[0] if isinstance(eos, list) and eos else eos
    return {"eos_token_id": eos, "pad_token_id": pad, "bos_token_id": getattr(own, "bos_token_id", None)}


class RowSampler(LogitsProcessor):
    """Plain temperature sampling with one random stream per row, independent of the batch.

    Row r draws one uniform number per step from a CPU generator seeded by (seed, keys[r]) and
    takes the token where the cumulative softmax(scores / T) passes it (inverse-CDF sampling:
    an exact draw from the distribution). The returned scores keep only that token, so
    generate's greedy step picks it. CPU generators make the draws the same on every device.
    """

    def __init__(self, temperature: float, seed: int, keys: Sequence[str]) -> None:
        self.temperature = temperature
        self.generators = [torch.Generator().manual_seed(_stream_seed(seed, key)) for key in keys]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.generators):
            raise RuntimeError(f"sampler made for {len(self.generators)} rows got {scores.shape[0]}")
        probs = torch.softmax(scores.double() / self.temperature, dim=-1)  # [B, V]
        cdf = probs.cumsum(dim=-1)
        u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators])  # [B] in [0, 1)
        u = u.to(cdf.device)[:, None] * cdf[:, -1:]  # cdf[-1] is 1 up to rounding
        tokens = torch.searchsorted(cdf, u, right=True)  # [B, 1]: first token whose cdf exceeds u
        # u rounding up to cdf[-1] would give V: take the last token that can be drawn
        possible = probs > 0
        last = probs.shape[-1] - 1 - possible.flip(-1).int().argmax(dim=-1, keepdim=True)
        tokens = torch.minimum(tokens, last)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, tokens, 0.0)  # type: ignore[return-value]


def _stream_seed(seed: int, key: str) -> int:
    """A 63-bit seed for (seed, key); a hash, so that nearby seeds and keys give unrelated streams."""
    digest = hashlib.sha256(f"melbo-tui:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
