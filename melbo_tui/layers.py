"""Finding the decoder blocks of a causal LM, whatever its architecture.

Each matcher is an attribute path to the `nn.ModuleList` of blocks; a new architecture is one
more line in `BLOCK_PATHS`. As a fallback, the only ModuleList whose length equals the config's
layer count is taken.
"""

from __future__ import annotations

from torch import nn

from melbo_tui.errors import ModelError

BLOCK_PATHS = (
    "model.layers",  # Llama, Qwen2, Mistral, Gemma, Gemma 3 text, Phi-3
    "model.language_model.layers",  # multimodal wrappers (Gemma 3, Llava-style)
    "transformer.h",  # GPT-2, GPT-J, Bloom, Falcon
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
)


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of `model`, in order; `ModelError` if none can be found."""
    for path in BLOCK_PATHS:
        found = _get_path(model, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return found
    expected = num_layers_from_config(model)
    candidates = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == expected]
    if len(candidates) == 1:
        return candidates[0]
    raise ModelError(
        f"cannot find the decoder blocks of {type(model).__name__}: tried {', '.join(BLOCK_PATHS)}; "
        "add its path to melbo_tui.layers.BLOCK_PATHS"
    )


def num_layers_from_config(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    text_config = getattr(config, "text_config", None) or config
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(text_config, name, None)
        if isinstance(value, int):
            return value
    return -1


def _get_path(root: nn.Module, path: str) -> object:
    node: object = root
    for name in path.split("."):
        node = getattr(node, name, None)
        if node is None:
            return None
    return node
