"""Steering hooks and layer discovery, on tiny random models of every supported architecture."""

from __future__ import annotations

import pytest
import torch

from melbo_tui.errors import InputError, ModelError
from melbo_tui.layers import find_blocks
from melbo_tui.models import LoadedModel
from melbo_tui.steering import run_to_layer, steer

IDS = torch.tensor([[5, 17, 3, 44, 9, 21, 60]])


def test_blocks_found_for_each_architecture(any_tiny: LoadedModel) -> None:
    assert any_tiny.num_layers == 4
    assert any_tiny.hidden_size == 32


def test_layer_convention_block_output_is_hidden_states_s_plus_1(any_tiny: LoadedModel) -> None:
    # layer S = output of block S = HF hidden_states[S + 1] (the last entry is after the final norm)
    with torch.no_grad():
        states = any_tiny.model(input_ids=IDS, output_hidden_states=True).hidden_states
        for layer in range(any_tiny.num_layers - 1):
            torch.testing.assert_close(run_to_layer(any_tiny, layer, IDS), states[layer + 1])


def test_steering_shifts_the_block_output_by_exactly_theta(any_tiny: LoadedModel) -> None:
    vector = torch.randn(any_tiny.hidden_size) * 3
    with torch.no_grad():
        before = [run_to_layer(any_tiny, layer, IDS) for layer in range(3)]
        logits_before = any_tiny.model(input_ids=IDS).logits
        with steer(any_tiny, 1, vector):
            after = [run_to_layer(any_tiny, layer, IDS) for layer in range(3)]
            logits_after = any_tiny.model(input_ids=IDS).logits
    torch.testing.assert_close(after[0], before[0])  # block 0 output untouched
    torch.testing.assert_close(after[1], before[1] + vector)  # every position shifted by theta
    assert not torch.allclose(after[2], before[2])
    assert not torch.allclose(logits_after, logits_before)


def test_leaving_the_context_restores_logits_bit_identical(any_tiny: LoadedModel) -> None:
    with torch.no_grad():
        before = any_tiny.model(input_ids=IDS).logits
        with steer(any_tiny, 2, torch.randn(any_tiny.hidden_size)):
            steered = any_tiny.model(input_ids=IDS).logits
        after = any_tiny.model(input_ids=IDS).logits
    assert not torch.equal(before, steered)
    assert torch.equal(before, after)


def test_hook_removed_even_when_the_body_raises(tiny_llama: LoadedModel) -> None:
    with pytest.raises(RuntimeError), steer(tiny_llama, 1, torch.ones(32)):
        raise RuntimeError("boom")
    assert not tiny_llama.blocks[1]._forward_hooks


def test_one_vector_per_batch_row_matches_each_alone(tiny_llama: LoadedModel) -> None:
    vectors = torch.randn(3, 32) * 2
    with torch.no_grad():
        with steer(tiny_llama, 1, vectors):
            batched = run_to_layer(tiny_llama, 3, IDS.expand(3, -1))
        for row in range(3):
            with steer(tiny_llama, 1, vectors[row]):
                alone = run_to_layer(tiny_llama, 3, IDS)
            torch.testing.assert_close(batched[row : row + 1], alone, atol=1e-5, rtol=1e-5)


def test_run_to_layer_skips_later_blocks(tiny_llama: LoadedModel) -> None:
    calls: list[int] = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, b in enumerate(tiny_llama.blocks)]
    try:
        run_to_layer(tiny_llama, 1, IDS)
    finally:
        for h in handles:
            h.remove()
    assert calls == [0, 1]


def test_generation_with_kv_cache_steers_generated_tokens_too(tiny_llama: LoadedModel) -> None:
    """Greedy generation with the cache equals a cache-free loop steered at every position."""
    vector = torch.randn(32) * 4
    with torch.no_grad(), steer(tiny_llama, 1, vector):
        cached = tiny_llama.model.generate(input_ids=IDS, attention_mask=torch.ones_like(IDS), max_new_tokens=8,
                                           do_sample=False, pad_token_id=0)
        ids = IDS
        for _ in range(8):
            logits = tiny_llama.model(input_ids=ids, use_cache=False).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, ids)
    unsteered = tiny_llama.model.generate(input_ids=IDS, attention_mask=torch.ones_like(IDS), max_new_tokens=8,
                                          do_sample=False, pad_token_id=0)
    assert not torch.equal(unsteered, cached)


def test_gradients_flow_into_theta(tiny_llama: LoadedModel) -> None:
    theta = torch.zeros(32, requires_grad=True)
    with steer(tiny_llama, 0, theta):
        run_to_layer(tiny_llama, 2, IDS).pow(2).sum().backward()
    assert theta.grad is not None and theta.grad.abs().sum() > 0


def test_bad_layer_and_shape_are_input_errors(tiny_llama: LoadedModel) -> None:
    with pytest.raises(InputError, match="out of range"), steer(tiny_llama, 4, torch.ones(32)):
        pass
    with pytest.raises(InputError, match="shape"), steer(tiny_llama, 1, torch.ones(31)):
        pass
    with pytest.raises(InputError, match="batch"), steer(tiny_llama, 1, torch.ones(2, 32)):
        run_to_layer(tiny_llama, 2, IDS)


def test_unknown_architecture_is_a_model_error() -> None:
    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stack = torch.nn.Sequential(torch.nn.Linear(2, 2))

    with pytest.raises(ModelError, match="cannot find the decoder blocks"):
        find_blocks(Odd())
