"""Per-vector metrics of a bank: how far each vector's next-token distribution is from the base's.

For every row i, P_i = the model's next-token distribution at the *last prompt position* when
row i is added at the source layer; P_0 = the same for row `base_index`. Stored (nats):
- `kl`     = KL(P_i || P_0)  (what the seed's code computes),
- `kl_rev` = KL(P_0 || P_i)  (what the seed's plot title says),
- `norm`   = ||theta_i||, `cos_base` = cos(theta_i, theta_base).
log_softmax is taken in fp32 whatever the model's dtype.

Speed: blocks 0..S run once (`prefix.PrefixCache`), many vectors share one forward pass (one per
batch row) and only the last position goes through the LM head. The batch size is chosen from
the device (64 on CPU, 256 on a GPU) and halves on a CUDA out-of-memory error.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import replace

import torch

from melbo_tui.bank import Metric, VectorBank, check_bank_fits
from melbo_tui.errors import InputError
from melbo_tui.models import LoadedModel
from melbo_tui.prefix import PrefixCache

KL_DIRECTIONS = {"kl": "KL(P_i || P_0)", "kl_rev": "KL(P_0 || P_i)"}


def compute_metrics(lm: LoadedModel, bank: VectorBank, input_ids: torch.Tensor,
                    batch_size: int | None = None) -> dict[str, torch.Tensor]:
    """`kl`, `kl_rev`, `norm`, `cos_base`: float32 `[N]` cpu tensors for `input_ids  # [1, T]`."""
    check_bank_fits(bank, lm.hidden_size, lm.num_layers)
    if input_ids.ndim != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] == 0:
        raise InputError(f"metrics need one prompt [1, T], got token ids of shape {list(input_ids.shape)}")
    vectors = bank.vectors.float()
    base = bank.meta.base_index
    cache = PrefixCache(lm, bank.meta.source_layer, input_ids.to(lm.device))
    logp0 = last_logprobs(lm, cache, vectors[base:base + 1].to(lm.device))[0]  # [V]
    p0 = logp0.exp()

    def kl_pair(rows: torch.Tensor) -> torch.Tensor:  # [B, d] -> [B, 2]
        logp = last_logprobs(lm, cache, rows.to(lm.device))  # [B, V]
        forward = (logp.exp() * (logp - logp0)).sum(dim=-1)
        backward = (p0 * (logp0 - logp)).sum(dim=-1)
        return torch.stack([forward, backward], dim=1).cpu()

    pairs = batched(kl_pair, vectors, batch_size or default_batch_size(lm.device), lm.device)
    norms = vectors.norm(dim=1)
    base_vec = vectors[base]
    cos = (vectors @ base_vec) / (norms * base_vec.norm()).clamp_min(1e-30)
    return {
        "kl": pairs[:, 0].float().contiguous(),
        "kl_rev": pairs[:, 1].float().contiguous(),
        "norm": norms.float(),
        "cos_base": cos.float(),
    }


def evaluate_bank(lm: LoadedModel, bank: VectorBank, input_ids: torch.Tensor, prompt: str,
                  system: str | None, raw: bool, batch_size: int | None = None) -> VectorBank:
    """`bank` with its metrics replaced and the evaluation recorded in its metadata.

    What the making method measured (DCT's score, the Jacobian's sigma) and its aux tensors stay.
    """
    made = {name: values for name, values in bank.metrics.items() if name in (Metric.SCORE, Metric.SIGMA)}
    metrics = {**made, **compute_metrics(lm, bank, input_ids, batch_size)}
    extra = dict(bank.meta.extra)
    extra["eval"] = {"prompt": prompt, "system_prompt": system, "raw": raw, "position": "last prompt token",
                     "base_index": bank.meta.base_index, "units": "nats", "softmax_dtype": "float32",
                     **KL_DIRECTIONS}
    return VectorBank(vectors=bank.vectors, meta=replace(bank.meta, extra=extra), metrics=metrics, aux=bank.aux)


def last_logprobs(lm: LoadedModel, cache: PrefixCache, thetas: torch.Tensor) -> torch.Tensor:
    """fp32 log-probabilities `[K, V]` of the next token after the prompt, one row per theta."""
    with torch.no_grad(), cache.run(thetas) as ids:
        kwargs = {"logits_to_keep": 1} if _accepts_logits_to_keep(lm) else {}
        logits = lm.model(input_ids=ids, use_cache=False, **kwargs).logits[:, -1]  # [K, V]
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


def _accepts_logits_to_keep(lm: LoadedModel) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(lm.model.forward).parameters
    except (TypeError, ValueError):
        return False
