"""Per-vector metrics of a bank: how each vector's behaviour compares with the base's and no steering.

For every row i, with `P_i` the next-token distribution steered by row i (P_base: the base row,
P_unsteered: no vector), all stored in nats, log_softmax in fp32 whatever the model's dtype:
- `kl`     = KL(P_i || P_base) at the last prompt position (what the seed's code computes),
- `kl_rev` = KL(P_base || P_i) there (what the seed's plot title says),
- `kl_seq` = mean over the first N positions of the base's greedy continuation of
             KL(P_base,t || P_i,t), teacher-forced along that continuation (N = 32 by default;
             fewer if the base ends its answer sooner). One next-token KL can be driven to ~0 by
             vectors that do not reproduce the base one token later (REFERENCE.md s.2a): this one
             cannot,
- `kl_unsteered` = KL(P_i || P_unsteered) at the last prompt position: how much the vector changes
             the model, the KL worth reading where row 0 is not a base (MELBO, DCT banks),
- `err`    = target-layer RMS error to the base over the compared prompt positions (the sink left
             out, `sink.SinkRule`: massive unsteered or under the base), divided by that of no steering: < 1 means closer to the base's
             effect than not steering at all,
- `norm`   = ||theta_i||, `cos_base` = cos(theta_i, theta_base).

Speed: blocks 0..S run once (`prefix.PrefixCache`), many vectors share one forward (one per batch
row), the target layer is captured during the same forward, and only the positions needed go
through the LM head. The batch halves on a CUDA out-of-memory error.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch

from melbo_tui.bank import VectorBank, check_bank_fits
from melbo_tui.errors import InputError, Stopped
from melbo_tui.kinds import Metric
from melbo_tui.models import LoadedModel
from melbo_tui.prefix import PrefixCache
from melbo_tui.sink import SinkRule, select_positions
from melbo_tui.steering import check_layers, steer

CONTINUATION_TOKENS = 32
KL_DIRECTIONS = {
    Metric.KL: "KL(P_i || P_base), last prompt position",
    Metric.KL_REV: "KL(P_base || P_i), last prompt position",
    Metric.KL_SEQ: "mean_t KL(P_base,t || P_i,t) along the base's greedy continuation, teacher-forced",
    Metric.KL_UNSTEERED: "KL(P_i || P_unsteered), last prompt position",
}
MODEL_METRICS = (Metric.KL, Metric.KL_REV, Metric.KL_SEQ, Metric.KL_UNSTEERED, Metric.ERR)
LOGITS_BUDGET = 2**27  # floats of [batch, positions, vocab] log-probabilities held at once (512 MB)

OnProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class Measurement:
    """Metrics of some vectors on one prompt, and what they were measured against."""

    values: dict[str, torch.Tensor]  # Metric name -> [N] float32 cpu
    continuation: list[int]  # the base's greedy continuation (token ids) that kl_seq follows
    compared_positions: list[int]  # prompt positions `err` compares (the sink left out)
    excluded_positions: list[int]


def bank_metrics(
    lm: LoadedModel,
    vectors: torch.Tensor,  # [N, d_model]
    prompt_ids: torch.Tensor,  # [1, T]
    *,
    source_layer: int,
    target_layer: int,
    base_index: int = 0,
    continuation: int = CONTINUATION_TOKENS,
    sink: SinkRule | None = None,
    base_sinks: bool = True,
    batch_size: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_progress: OnProgress | None = None,
) -> dict[str, torch.Tensor]:
    """Every `Metric` that needs the model, plus norm and cos_base: float32 `[N]` cpu tensors."""
    return measure(lm, vectors, prompt_ids, source_layer=source_layer, target_layer=target_layer,
                   base_index=base_index, continuation=continuation, sink=sink, base_sinks=base_sinks,
                   batch_size=batch_size, should_stop=should_stop, on_progress=on_progress).values


def measure(
    lm: LoadedModel,
    vectors: torch.Tensor,
    prompt_ids: torch.Tensor,
    *,
    source_layer: int,
    target_layer: int,
    base_index: int = 0,
    continuation: int = CONTINUATION_TOKENS,
    sink: SinkRule | None = None,
    base_sinks: bool = True,
    batch_size: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_progress: OnProgress | None = None,
) -> Measurement:
    """`bank_metrics` with the record of what was measured (continuation, compared positions).

    `base_sinks`: the sink rule also leaves out positions the base row makes massive (an ortho
    search's theta0 can create sinks of its own, and `err` would then be about them). Only where
    the base row is a reference: in a MELBO, DCT or Jacobian bank row 0 is just another vector,
    and its sinks must not decide which positions every other row is compared on.
    """
    _check_inputs(lm, vectors, prompt_ids, source_layer, target_layer, base_index, continuation)
    sink = sink or SinkRule()
    vectors = vectors.detach().float().cpu()
    ids = prompt_ids.to(lm.device)
    base = vectors[base_index]
    zero = torch.zeros_like(base)
    stop = should_stop or (lambda: False)

    cache = PrefixCache(lm, source_layer, ids)
    refs = _forward(lm, cache, torch.stack([base, zero]), target_layer)  # row 0: base, row 1: unsteered
    positions = select_positions(refs.target[1].norm(dim=-1), sink,
                                 base_norms=refs.target[0].norm(dim=-1) if base_sinks else None)
    kept = positions.kept.to(refs.target.device)
    base_target = refs.target[0, kept]  # [k, d]
    unsteered_err = _rms(refs.target[1, kept] - base_target)
    logp_base, logp_unsteered = refs.logp[0], refs.logp[1]  # [V]

    cont = greedy_continuation(lm, ids, source_layer, base, continuation)
    seq_ids = torch.cat([ids, torch.tensor([cont[:-1]], dtype=ids.dtype, device=ids.device)], dim=1)
    seq_cache = PrefixCache(lm, source_layer, seq_ids) if cont else None
    seq_base = _sequence_logprobs(lm, seq_cache, base[None], len(cont))[0] if seq_cache is not None else None

    n, done = vectors.shape[0], [0]

    def chunk_metrics(chunk: torch.Tensor) -> torch.Tensor:  # [B, d] -> [B, len(MODEL_METRICS)]
        if stop():
            raise Stopped
        out = _forward(lm, cache, chunk, target_layer)
        row = {
            Metric.KL: _kl(out.logp, logp_base),
            Metric.KL_REV: _kl(logp_base[None], out.logp),
            Metric.KL_SEQ: _kl_seq(lm, seq_cache, chunk, seq_base, len(cont)),
            Metric.KL_UNSTEERED: _kl(out.logp, logp_unsteered),
            Metric.ERR: _rms(out.target[:, kept] - base_target[None]) / max(unsteered_err, 1e-30),
        }
        done[0] += chunk.shape[0]
        if on_progress is not None:
            on_progress(done[0], n)
        return torch.stack([row[m].float().cpu() for m in MODEL_METRICS], dim=1)

    table = batched(chunk_metrics, vectors, batch_size or default_batch_size(lm.device), lm.device)
    values = {m: table[:, i].contiguous() for i, m in enumerate(MODEL_METRICS)}
    norms = vectors.norm(dim=1)
    values[Metric.NORM] = norms
    values[Metric.COS_BASE] = (vectors @ base) / (norms * base.norm()).clamp_min(1e-30)
    return Measurement({str(k): v.float() for k, v in values.items()}, cont, positions.kept.tolist(),
                       list(positions.excluded))


def evaluate_bank(lm: LoadedModel, bank: VectorBank, input_ids: torch.Tensor, prompt: str,
                  system: str | None, raw: bool, batch_size: int | None = None,
                  continuation: int = CONTINUATION_TOKENS, sink: SinkRule | None = None,
                  on_progress: OnProgress | None = None) -> VectorBank:
    """`bank` with its metrics replaced and the evaluation recorded in its metadata.

    The unsteered model is measured as one more row, so the record says what "no steering"
    scores on the same prompt (`kl_seq` of the unsteered model is the number to beat). What the
    making method measured (DCT's score, the Jacobian's sigma) and its aux tensors stay.
    """
    check_bank_fits(bank, lm.hidden_size, lm.num_layers)
    meta = bank.meta
    rows = torch.cat([bank.vectors.float(), torch.zeros(1, bank.hidden_size)])
    result = measure(lm, rows, input_ids, source_layer=meta.source_layer, target_layer=meta.target_layer,
                     base_index=meta.base_index, continuation=continuation, sink=sink, base_sinks=meta.kind.has_base,
                     batch_size=batch_size, on_progress=on_progress)
    made = {name: values for name, values in bank.metrics.items() if name in (Metric.SCORE, Metric.SIGMA)}
    metrics = {**made, **{name: values[:-1].contiguous() for name, values in result.values.items()}}
    unsteered = {name: float(values[-1]) for name, values in result.values.items() if name in MODEL_METRICS}
    extra = dict(meta.extra)
    extra["eval"] = {
        "prompt": prompt, "system_prompt": system, "raw": raw, "base_index": meta.base_index, "units": "nats",
        "softmax_dtype": "float32", **{str(k): v for k, v in KL_DIRECTIONS.items()},
        "continuation_tokens": len(result.continuation), "continuation_ids": result.continuation,
        "continuation_text": _decode(lm, result.continuation),
        "err": "target-layer RMS error to the base over the compared positions / that of no steering",
        "compared_positions": result.compared_positions, "excluded_positions": result.excluded_positions,
        "sink": (sink or SinkRule()).describe(), "base_sinks": meta.kind.has_base, "unsteered": unsteered,
    }
    return VectorBank(vectors=bank.vectors, meta=replace(meta, extra=extra), metrics=metrics, aux=bank.aux)


def last_logprobs(lm: LoadedModel, cache: PrefixCache, thetas: torch.Tensor) -> torch.Tensor:
    """fp32 log-probabilities `[K, V]` of the next token after the prompt, one row per theta."""
    with torch.no_grad(), cache.run(thetas) as ids:
        logits = lm.model(input_ids=ids, use_cache=False, **_keep(lm, 1)).logits[:, -1]  # [K, V]
    return torch.log_softmax(logits.float(), dim=-1)


def default_batch_size(device: torch.device) -> int:
    return 256 if device.type == "cuda" else 64


def batched(fn: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, batch_size: int,
            device: torch.device) -> torch.Tensor:
    """`torch.cat([fn(chunk) ...])` over chunks of `rows`, halving the chunk on CUDA out-of-memory."""
    if batch_size <= 0:
        raise InputError(f"batch size must be positive, got {batch_size}")
    out: list[torch.Tensor] = []
    start = 0
    while start < rows.shape[0]:
        chunk = rows[start:start + batch_size]
        try:
            out.append(fn(chunk))
        except torch.OutOfMemoryError:
            if device.type != "cuda" or batch_size == 1:
                raise
            torch.cuda.empty_cache()
            batch_size //= 2
            continue
        start += chunk.shape[0]
    return torch.cat(out)


# --- the forward passes ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Outputs:
    logp: torch.Tensor  # [K, V] fp32: next token after the prompt
    target: torch.Tensor  # [K, T, d] fp32: the target layer


def _forward(lm: LoadedModel, cache: PrefixCache, thetas: torch.Tensor, target_layer: int) -> _Outputs:
    """One pass per chunk: the target layer captured on the way, the head on the last position only."""
    captured: list[torch.Tensor] = []
    with torch.no_grad(), _capture(lm, target_layer, captured), cache.run(thetas) as ids:
        logits = lm.model(input_ids=ids, use_cache=False, **_keep(lm, 1)).logits[:, -1]
    return _Outputs(torch.log_softmax(logits.float(), dim=-1), captured[0].float())


def _sequence_logprobs(lm: LoadedModel, cache: PrefixCache, thetas: torch.Tensor, positions: int) -> torch.Tensor:
    """fp32 log-probabilities `[K, positions, V]` at the last `positions` positions of the cached sequence."""
    with torch.no_grad(), cache.run(thetas) as ids:
        logits = lm.model(input_ids=ids, use_cache=False, **_keep(lm, positions)).logits[:, -positions:]
    return torch.log_softmax(logits.float(), dim=-1)


def _kl_seq(lm: LoadedModel, cache: PrefixCache | None, chunk: torch.Tensor, base: torch.Tensor | None,
            positions: int) -> torch.Tensor:
    """`[B]`: mean over positions of KL(P_base,t || P_i,t), in sub-chunks that bound the memory held."""
    if cache is None or base is None:
        return torch.zeros(chunk.shape[0])
    step = max(1, LOGITS_BUDGET // (positions * base.shape[-1]))
    out = []
    for i in range(0, chunk.shape[0], step):
        logp = _sequence_logprobs(lm, cache, chunk[i:i + step], positions)  # [b, N, V]
        out.append((base.exp()[None] * (base[None] - logp)).sum(dim=-1).mean(dim=-1).cpu())
    return torch.cat(out)


def greedy_continuation(lm: LoadedModel, ids: torch.Tensor, source_layer: int, theta: torch.Tensor,
                         tokens: int) -> list[int]:
    """The base's own greedy answer, up to `tokens` ids, ending early at an end-of-sequence token.

    Full forwards without a cache (a few dozen tokens): the same argmax as cached generation up to
    ties, and no dependence on the generation settings a hub model ships.
    """
    eos = _eos_ids(lm)
    out: list[int] = []
    current = ids
    with torch.no_grad(), steer(lm, source_layer, theta):
        for _ in range(tokens):
            logits = lm.model(input_ids=current, use_cache=False, **_keep(lm, 1)).logits[0, -1]
            token = int(logits.float().argmax())
            out.append(token)
            if token in eos:
                break
            current = torch.cat([current, torch.tensor([[token]], dtype=ids.dtype, device=ids.device)], dim=1)
    return out


@contextmanager
def _capture(lm: LoadedModel, layer: int, into: list[torch.Tensor]) -> Iterator[None]:
    def hook(_module: torch.nn.Module, _args: Any, output: Any) -> None:
        into.append(output[0] if isinstance(output, tuple) else output)

    handle = lm.blocks[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) along the last axis, broadcasting: `[B, V]` x `[V]` or `[1, V]` x `[B, V]` -> `[B]`."""
    return (logp.exp() * (logp - logq)).sum(dim=-1).cpu()


def _rms(diff: torch.Tensor) -> Any:
    """RMS over positions of the per-position norm: `[..., k, d]` -> `[...]` (a float for `[k, d]`)."""
    value = diff.pow(2).sum(dim=-1).mean(dim=-1).sqrt()
    return float(value) if value.ndim == 0 else value.cpu()


def _keep(lm: LoadedModel, positions: int) -> dict[str, int]:
    try:
        accepts = "logits_to_keep" in inspect.signature(lm.model.forward).parameters
    except (TypeError, ValueError):
        accepts = False
    return {"logits_to_keep": positions} if accepts else {}


def _eos_ids(lm: LoadedModel) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(lm.model, "generation_config", None), getattr(lm.model, "config", None), lm.tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids


def _decode(lm: LoadedModel, ids: list[int]) -> str:
    if lm.tokenizer is None:
        return ""
    return str(lm.tokenizer.decode(ids, skip_special_tokens=True))


def _check_inputs(lm: LoadedModel, vectors: torch.Tensor, prompt_ids: torch.Tensor, source_layer: int,
                  target_layer: int, base_index: int, continuation: int) -> None:
    check_layers(lm, source_layer, target_layer)
    if vectors.ndim != 2 or vectors.shape[1] != lm.hidden_size or vectors.shape[0] == 0:
        raise InputError(f"vectors must be [N, {lm.hidden_size}], got {list(vectors.shape)}")
    if not -vectors.shape[0] <= base_index < vectors.shape[0]:
        raise InputError(f"base index {base_index} is outside rows 0..{vectors.shape[0] - 1}")
    if prompt_ids.ndim != 2 or prompt_ids.shape[0] != 1 or prompt_ids.shape[1] == 0:
        raise InputError(f"metrics need one prompt [1, T], got token ids of shape {list(prompt_ids.shape)}")
    if continuation < 1:
        raise InputError(f"continuation must be at least 1 token, got {continuation}")
