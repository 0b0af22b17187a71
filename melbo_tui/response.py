"""The target layer's response to a vector added at the source layer: the map that DCT, power
(Jacobian) steering and DCT's calibration of R differentiate.

    Delta_p,t(theta) = Z_T,t(theta) - Z_T,t(0)   for prompt p, token position t

where theta is added at every position of the output of block S (our layer convention; the DCT
code's source `hidden_states[s]` is block s's *input*, i.e. our S = s - 1) and Z_T is the output
of block T. Only the last `positions` token positions of each prompt are kept (DCT: the last 3,
averaged; power steering: the last 2). Position 0 holds the attention sink (REFERENCE s.2a: a
residual ~100x larger than elsewhere that carries no content), so a prompt must have more than
`positions` tokens: the sink is then never among the kept positions.

Why a class with a `with` block: inside it the model is prepared for exact derivatives and
restored on exit.
- Blocks 0..S run once per prompt (`prefix.PrefixCache`); each call runs blocks S+1..T only.
- Prompts of different lengths are never padded (the DCT authors' code attends to pads): they are
  grouped by length and each group is one batch, so every row sees exactly its own prompt.
- Eager attention: PyTorch's fused CPU attention has neither a forward-mode derivative (needed
  by the calibration's JVP) nor a double backward (needed by power iteration); for DCT's plain
  backward the two were within noise of each other on the embedded model (melbo_tui/dct.py).
- `upcast=True` (the default) runs blocks S+1..T in float32 when the model is not: derivatives
  and the differences Z(theta) - Z(0) lose most of their digits in bf16 (the DCT authors found
  bf16 finite differences too noisy). The blocks are cast back afterwards (bf16 -> fp32 -> bf16
  is exact). Everything returned is float32.

Rows are independent: row k of the output depends only on `thetas[k]`, so one batched forward
and one backward give every factor's vector-Jacobian product at once, and a forward-mode JVP
with a batch of tangents gives J v for every v.
"""

from __future__ import annotations

import contextlib
from types import TracebackType
from typing import Any, Self

import torch

from melbo_tui.errors import InputError, ModelError
from melbo_tui.models import LoadedModel
from melbo_tui.prefix import PrefixCache
from melbo_tui.steering import check_layers, run_to_layer


class TargetResponse:
    """`theta [K, d] -> Delta [K, P, positions, d]` (float32), for fixed prompts and layers.

    Use as a context manager; calls outside the `with` block fail.
    """

    def __init__(self, lm: LoadedModel, source: int, target: int, inputs: list[torch.Tensor],
                 positions: int, upcast: bool = True) -> None:
        check_inputs(lm, source, target, inputs, positions)
        self.lm, self.source, self.target, self.positions = lm, source, target, positions
        self.num_prompts = len(inputs)
        self.groups = _group_by_length(inputs)  # [P_g, T_g] each
        self.upcast = upcast and lm.dtype != torch.float32
        self._caches: list[PrefixCache] = []
        self._base: list[torch.Tensor] = []  # [P_g, positions, d] float32 each
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Self:
        stack = self._stack
        try:
            stack.enter_context(_eager_attention(self.lm))
            if self.upcast:
                stack.enter_context(_float32_blocks(self.lm, self.source + 1, self.target))
            self._caches = [PrefixCache(self.lm, self.source, ids) for ids in self.groups]
            if self.upcast:
                for cache in self._caches:
                    cache.hidden = cache.hidden.float()
            with torch.no_grad():
                self._base = [self._run(cache, torch.zeros(1, self.lm.hidden_size, device=self.lm.device))[0]
                              for cache in self._caches]
        except BaseException:
            stack.close()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._caches, self._base = [], []
        self._stack.close()

    @property
    def hidden_size(self) -> int:
        return self.lm.hidden_size

    def __call__(self, thetas: torch.Tensor) -> torch.Tensor:
        """Delta at the kept positions: `[K, P, positions, d]` float32, prompts in input order of their groups."""
        if not self._caches:
            raise RuntimeError("TargetResponse used outside its `with` block")
        parts = [self._run(cache, thetas) - base for cache, base in zip(self._caches, self._base, strict=True)]
        return torch.cat(parts, dim=1)

    def mean(self, thetas: torch.Tensor) -> torch.Tensor:
        """DCT's Delta: averaged over the kept positions and the prompts, `[K, d]` float32."""
        return self(thetas).mean(dim=(1, 2))

    def _run(self, cache: PrefixCache, thetas: torch.Tensor) -> torch.Tensor:
        """Z_T at the kept positions, `[K, P_g, positions, d]` float32, for `thetas [K, d]` on any device."""
        k = thetas.shape[0]
        p = cache.hidden.shape[0]
        with cache.run(thetas, last=self.target) as ids:
            hidden = run_to_layer(self.lm, self.target, ids)  # [K*P_g, T_g, d]
        kept = hidden[:, -self.positions:].float()
        return kept.reshape(k, p, self.positions, -1).to(thetas.device)


def check_inputs(lm: LoadedModel, source: int, target: int, inputs: list[torch.Tensor], positions: int) -> None:
    """Layers in range and in order, and every prompt longer than `positions` tokens (the sink rule)."""
    check_layers(lm, source, target)
    if positions <= 0:
        raise InputError(f"the number of target positions must be positive, got {positions}")
    if not inputs:
        raise InputError("give at least one `prompt`")
    for i, ids in enumerate(inputs):
        if ids.shape[1] <= positions:
            raise InputError(
                f"prompt {i + 1} has {ids.shape[1]} tokens; the last {positions} positions are used and the first "
                f"token (the attention sink) must not be one of them: give a prompt of at least {positions + 1} tokens")


def _group_by_length(inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Prompts `[1, T]` stacked into `[P, T]` batches of equal length: no padding, no mask needed."""
    by_length: dict[int, list[torch.Tensor]] = {}
    for ids in inputs:
        by_length.setdefault(int(ids.shape[1]), []).append(ids)
    return [torch.cat(group) for _, group in sorted(by_length.items())]


@contextlib.contextmanager
def _eager_attention(lm: LoadedModel) -> Any:
    """Switch the model to eager attention for the `with` block, then back."""
    config = lm.model.config
    previous = getattr(config, "_attn_implementation", None)
    if previous in (None, "eager"):
        yield
        return
    setter = getattr(lm.model, "set_attn_implementation", None)
    if setter is None:
        raise ModelError(f"{lm.name}: cannot switch to eager attention (needed for exact Jacobian products)")
    setter("eager")
    if getattr(config, "_attn_implementation", None) != "eager":
        raise ModelError(f"{lm.name}: cannot switch to eager attention (needed for exact Jacobian products)")
    try:
        yield
    finally:
        setter(previous)


@contextlib.contextmanager
def _float32_blocks(lm: LoadedModel, first: int, last: int) -> Any:
    """Blocks `first..last` in float32 for the `with` block; each parameter and buffer back to its dtype after."""
    blocks = list(lm.blocks[first:last + 1])
    dtypes = [{name: t.dtype for name, t in [*b.named_parameters(), *b.named_buffers()]} for b in blocks]
    try:
        for block in blocks:
            block.float()
        yield
    finally:
        for block, saved in zip(blocks, dtypes, strict=True):
            for name, tensor in [*block.named_parameters(), *block.named_buffers()]:
                if saved.get(name, tensor.dtype) != tensor.dtype:
                    tensor.data = tensor.data.to(saved[name])
