"""Running a model from cached source-layer activations: blocks 0..S once, S+1.. per call.

Steering adds theta at the output of block S, so everything up to block S is the same for every
theta. `PrefixCache` runs it once for a batch of prompts; `PrefixCache.run(thetas)` then swaps the
model's block list for [stand-in 0, ..., stand-in S, blocks S+1..last] for the duration of one
forward pass: each stand-in ignores its input and returns `cache + theta`, so the model's own
forward (masks, rotary embeddings, final norm, head) runs unchanged, and blocks 0..S cost
nothing. Batch row r of the result belongs to theta r // P and prompt r % P.

Why a stand-in per skipped block rather than one for all of them: model loops look up per-layer
settings by the block's index in the list (`config.layer_types[i]` picks the sliding-window or
global mask in Gemma-2 and sliding Qwen2, and the RoPE base in Gemma-3), so block j must stay at
index j. A list shortened to [injector, S+1, ...] ran block S+1 with block 1's settings.

While a `run` is open the model is not usable for anything else (single-threaded use only).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from melbo_tui.models import LoadedModel
from melbo_tui.steering import check_layer, run_to_layer


class PrefixCache:
    """The output of block `layer` for `input_ids  # [P, T]` (unsteered), in the model's dtype or `dtype`."""

    def __init__(self, lm: LoadedModel, layer: int, input_ids: torch.Tensor, dtype: torch.dtype | None = None) -> None:
        check_layer(lm, layer, "source layer")
        self.lm, self.layer, self.input_ids = lm, layer, input_ids
        seen: list[bool] = []
        handle = lm.blocks[layer].register_forward_hook(lambda _m, _a, out: seen.append(isinstance(out, tuple)))
        try:
            with torch.no_grad():
                self.hidden = run_to_layer(lm, layer, input_ids).detach().to(dtype or lm.dtype)  # [P, T, d]
        finally:
            handle.remove()
        self._stream = _Stream(as_tuple=bool(seen and seen[0]))
        self._stand_ins = [_StandIn(lm.blocks[i], self._stream) for i in range(layer + 1)]

    @contextlib.contextmanager
    def run(self, thetas: torch.Tensor, last: int | None = None) -> Iterator[torch.Tensor]:
        """Within the block, the model runs blocks S+1..`last` (default: all) on `cache + thetas[K, d]`.

        Yields the token ids `[K*P, T]` to call the model with.
        """
        last = self.lm.num_layers - 1 if last is None else last
        p, t, d = self.hidden.shape
        k = thetas.shape[0]
        delta = thetas.to(self.hidden.device, self.hidden.dtype)[:, None, None, :]  # [K, 1, 1, d]
        self._stream.hidden = (self.hidden[None] + delta).reshape(k * p, t, d)
        stack = nn.ModuleList([*self._stand_ins, *self.lm.blocks[self.layer + 1: last + 1]])
        try:
            with swapped_blocks(self.lm, stack):
                yield self.input_ids.repeat(k, 1)
        finally:
            self._stream.hidden = None


    def target(self, thetas: torch.Tensor, layer: int, blocks: Sequence[nn.Module] | None = None) -> torch.Tensor:
        """Block `layer`'s output `[K*P, T, d]` on `cache + thetas`; later blocks never run.

        `blocks` replaces the model's blocks S+1..layer (fp32 copies of a bf16 model, say): the
        model is then called with zero input embeddings in the cache's dtype, which the stand-ins
        ignore but from which the model builds its masks and rotary tables in that dtype.
        """
        chosen = list(blocks) if blocks is not None else list(self.lm.blocks[self.layer + 1: layer + 1])
        if len(chosen) != layer - self.layer:
            raise ValueError(f"{len(chosen)} blocks given for blocks {self.layer + 1}..{layer}")
        captured: list[torch.Tensor] = []

        def stop(_module: nn.Module, _args: Any, output: Any) -> Any:
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _Reached

        k, (p, t, d) = thetas.shape[0], self.hidden.shape
        delta = thetas.to(self.hidden.device, self.hidden.dtype)[:, None, None, :]  # [K, 1, 1, d]
        self._stream.hidden = (self.hidden[None] + delta).reshape(k * p, t, d)
        handle = chosen[-1].register_forward_hook(stop)
        try:
            with swapped_blocks(self.lm, nn.ModuleList([*self._stand_ins, *chosen])):
                if blocks is None:
                    self.lm.model(input_ids=self.input_ids.repeat(k, 1), use_cache=False)
                else:
                    zeros = torch.zeros(k * p, t, d, dtype=self.hidden.dtype, device=self.lm.device)
                    self.lm.model(inputs_embeds=zeros, use_cache=False)
        except _Reached:
            pass
        finally:
            handle.remove()
            self._stream.hidden = None
        return captured[0]


class _Reached(Exception):  # noqa: N818  (control flow: the target block has run)
    """Raised by the capture hook to skip every block after the target."""


class _Stream:
    """The steered source-layer stream `[K*P, T, d]` that the stand-ins return during a run."""

    def __init__(self, as_tuple: bool) -> None:
        self.as_tuple = as_tuple
        self.hidden: torch.Tensor | None = None


class _StandIn(nn.Module):
    """Stands in for one of blocks 0..S at its own index: ignores its input, returns the cached stream.

    Copies the per-layer attributes some models' block loops read from the block itself.
    """

    def __init__(self, template: nn.Module, stream: _Stream) -> None:
        super().__init__()
        self._stream = stream
        for name in ("attention_type", "layer_idx", "is_sliding", "layer_type"):
            if hasattr(template, name):
                setattr(self, name, getattr(template, name))

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        hidden = self._stream.hidden
        if hidden is None:
            raise RuntimeError("prefix stand-in called outside PrefixCache.run")
        return (hidden,) if self._stream.as_tuple else hidden


@contextlib.contextmanager
def swapped_blocks(lm: LoadedModel, blocks: nn.ModuleList) -> Iterator[None]:
    """Temporarily replace the model's decoder-block list."""
    parent, name = _parent_of(lm.model, lm.blocks)
    setattr(parent, name, blocks)
    try:
        yield
    finally:
        setattr(parent, name, lm.blocks)


def _parent_of(root: nn.Module, child: nn.Module) -> tuple[nn.Module, str]:
    for module in root.modules():
        for name, sub in module.named_children():
            if sub is child:
                return module, name
    raise RuntimeError("cannot find the decoder-block list inside the model")
