"""Directional ablation: project a direction (or several) out of what every block writes to the
residual stream, the counterpart of adding a steering vector.

The DCT authors ablate a unit direction v by editing weights, W <- W - v v^T W, for the attention
output and MLP down projections of every block (REFERENCE s.7). `ablate` does the same thing
with one forward hook per block, which needs no module names and so works on every architecture
the engine supports: with h_in the block's input and h_out its output,

    h_out' = h_out - Q^T Q (h_out - h_in)        (Q: orthonormal rows spanning the directions)

What is guaranteed (up to rounding in the model's dtype): at every position of every forward pass,
prompt and generated tokens alike, Q h_out' = Q h_in for every block, so the residual stream's
component along the directions stays at its value at the embedding (the input of block 0) through
the whole stack. With `embedding=True` that component is also removed from the input of block 0
(the embeddings, after any position embedding or scaling the model adds), so it is ~0 after
every block (Arditi et al.'s "directional ablation" of the residual stream).

How it differs from the weight edit: inside a sequential block the MLP reads the residual after
the attention's *unablated* write (the weight edit would have removed it first); a bias on an
output projection (GPT-2) is projected too (the weight edit leaves biases); and blocks with a
norm after the attention or MLP output (Gemma 2/3) have their actual write projected, where a
weight edit before that norm would not keep the residual free of the direction. On parallel
blocks (GPT-NeoX, GPT-J) without such norms the two are the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from melbo_tui.errors import InputError
from melbo_tui.models import LoadedModel


def orthonormal_basis(directions: torch.Tensor, hidden_size: int) -> torch.Tensor:
    """Orthonormal rows `[k, d]` (float32) spanning `directions` (`[d]` or `[k, d]`); rejects zero vectors."""
    if directions.ndim not in (1, 2) or directions.shape[-1] != hidden_size:
        raise InputError(f"ablation direction has shape {list(directions.shape)}, model needs [..., {hidden_size}]")
    rows = directions.detach().float().reshape(-1, hidden_size)
    if not torch.isfinite(rows).all():
        raise InputError("ablation direction contains NaN or inf")
    q, r = torch.linalg.qr(rows.double().T)  # rows.T = q r
    keep = torch.diagonal(r).abs() > 1e-6 * rows.norm(dim=1).max().clamp_min(1e-30).double()
    if not keep.any():
        raise InputError("cannot ablate a zero vector")
    basis: torch.Tensor = q[:, keep].T.float().contiguous()
    return basis


@contextlib.contextmanager
def ablate(lm: LoadedModel, directions: torch.Tensor, embedding: bool = False) -> Iterator[torch.Tensor]:
    """Within the block, every block's write to the residual stream has `directions` projected out.

    `directions`: one vector `[d]` (a bank row, a composition) or several `[k, d]` (their span is
    ablated); their norms do not matter. Yields the orthonormal basis used. Hooks live only inside
    the `with` block.
    """
    basis = orthonormal_basis(directions, lm.hidden_size)  # [k, d]
    on_device: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def basis_for(hidden: torch.Tensor) -> torch.Tensor:
        key = (hidden.device, hidden.dtype)
        if key not in on_device:
            on_device[key] = basis.to(hidden.device)
        return on_device[key]

    def block_hook(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        hidden_in = args[0] if args else kwargs.get("hidden_states")
        hidden_out = output[0] if isinstance(output, tuple) else output  # [B, T, d]
        if not isinstance(hidden_in, torch.Tensor) or hidden_in.shape != hidden_out.shape:
            raise RuntimeError(f"{type(_module).__name__}: cannot find the block's input hidden states to ablate")
        q = basis_for(hidden_out)
        write = (hidden_out - hidden_in.to(hidden_out.device)).float()
        ablated = hidden_out - ((write @ q.T) @ q).to(hidden_out.dtype)
        return (ablated, *output[1:]) if isinstance(output, tuple) else ablated

    def embedding_hook(_module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if not isinstance(hidden, torch.Tensor):
            raise RuntimeError(f"{type(_module).__name__}: cannot find the block's input hidden states to ablate")
        q = basis_for(hidden)
        projected = hidden - ((hidden.float() @ q.T) @ q).to(hidden.dtype)
        if args:
            return (projected, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": projected}

    handles = [block.register_forward_hook(block_hook, with_kwargs=True) for block in lm.blocks]
    if embedding:
        handles.append(lm.blocks[0].register_forward_pre_hook(embedding_hook, with_kwargs=True))
    try:
        yield basis
    finally:
        for handle in handles:
            handle.remove()
