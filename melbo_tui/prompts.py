"""Turning a user prompt into token ids: through the model's chat template, or raw.

Chat models are steered on what they actually see at inference: the template with its system
prompt (SmolLM2's own when `system` is None) and the assistant header. Base models (no
template) and `--raw` take the text as is.
"""

from __future__ import annotations

import torch

from melbo_tui.errors import InputError
from melbo_tui.models import LoadedModel


def format_prompt(lm: LoadedModel, prompt: str, system: str | None = None, raw: bool = False) -> str:
    """The exact text fed to the model for `prompt`."""
    if not prompt or not prompt.strip():
        raise InputError("empty prompt: give some text with `prompt`")
    if raw or not lm.has_chat_template:
        return prompt
    messages = [{"role": "user", "content": prompt}]
    if system is not None:
        messages.insert(0, {"role": "system", "content": system})
    text = lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return str(text)


def encode(lm: LoadedModel, prompt: str, system: str | None = None, raw: bool = False) -> torch.Tensor:
    """Token ids `[1, T]` on the model's input device."""
    text = format_prompt(lm, prompt, system, raw)
    # the template already holds the special tokens; raw text gets the tokenizer's BOS if any
    ids = lm.tokenizer(text, add_special_tokens=raw or not lm.has_chat_template, return_tensors="pt")["input_ids"]
    on_device: torch.Tensor = ids.to(lm.device)
    return on_device
