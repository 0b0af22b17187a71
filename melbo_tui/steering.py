"""Adding steering vectors to the residual stream, and stopping a forward pass early.

Convention (REFERENCE.md s.3): layer S means the residual stream at the *output of decoder
block S* (0-based) = the seed's `blocks.S.hook_resid_post` = HF `hidden_states[S + 1]`.

`steer` adds the vector at every position of every forward pass it sees, so during generation
with a KV cache the prompt positions (first pass) and each generated token (later passes) are
all steered: the seed's setting. Hooks live only inside the `with` block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from melbo_tui.errors import InputError
from melbo_tui.models import LoadedModel


class _StopForward(Exception):  # noqa: N818  (control flow: the target block has run)
    """Raised by the capture hook to skip every block after the target layer."""


def check_layer(lm: LoadedModel, layer: int, what: str = "layer") -> None:
    if not 0 <= layer < lm.num_layers:
        raise InputError(f"{what} {layer} is out of range: {lm.name} has blocks 0..{lm.num_layers - 1}")


def check_layers(lm: LoadedModel, source_layer: int, target_layer: int) -> None:
    """Both layers in range, the target after the source (the one rule every method shares)."""
    check_layer(lm, source_layer, "source layer")
    check_layer(lm, target_layer, "target layer")
    check_layer_order(source_layer, target_layer)


def check_layer_order(source_layer: int, target_layer: int) -> None:
    """The target layer must come after the source layer: steering cannot reach an earlier block."""
    if target_layer <= source_layer:
        raise InputError(f"target layer {target_layer} must come after source layer {source_layer}")


@contextlib.contextmanager
def steer(lm: LoadedModel, layer: int, vectors: torch.Tensor | None) -> Iterator[None]:
    """Add `vectors` (`[d_model]` shared, or `[B, d_model]` one per batch row) after block `layer`.

    `None` steers nothing (the unsteered baseline goes through the same code path). Gradients
    flow into `vectors` if it requires them.
    """
    check_layer(lm, layer, "source layer")
    if vectors is None:
        yield
        return
    if vectors.shape[-1] != lm.hidden_size or vectors.ndim not in (1, 2):
        raise InputError(f"steering vector has shape {list(vectors.shape)}, model needs [..., {lm.hidden_size}]")

    moved: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def on(hidden: torch.Tensor) -> torch.Tensor:
        """`vectors` on the block output's device and dtype, copied once per steer() call.

        During generation the hook runs once per decode step; a CPU vector would otherwise be
        copied to the GPU at every step. A vector that needs gradients is converted each time
        (the conversion is part of the graph of each backward pass; for a vector already on the
        device in its dtype it is no copy).
        """
        if vectors.requires_grad:
            return vectors.to(device=hidden.device, dtype=hidden.dtype)
        where = (hidden.device, hidden.dtype)
        if where not in moved:
            moved[where] = vectors.detach().to(device=hidden.device, dtype=hidden.dtype)
        return moved[where]

    def hook(_module: torch.nn.Module, _args: Any, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output  # [B, T, d_model]
        delta = on(hidden)
        if delta.ndim == 2:
            if delta.shape[0] != hidden.shape[0]:
                raise InputError(f"{delta.shape[0]} steering vectors for a batch of {hidden.shape[0]} rows")
            delta = delta[:, None, :]
        steered = hidden + delta
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    handle = lm.blocks[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def run_to_layer(lm: LoadedModel, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Residual stream `[B, T, d_model]` at the output of block `layer`; later blocks never run."""
    check_layer(lm, layer, "target layer")
    captured: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, _args: Any, output: Any) -> Any:
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _StopForward

    handle = lm.blocks[layer].register_forward_hook(hook)
    try:
        lm.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"block {layer} was never reached in the forward pass")
    return captured[0]
