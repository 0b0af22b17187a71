"""The prefix cache (blocks 0..S once, S+1.. per call) against the plain steered full forward.

Every source layer, on models whose blocks differ by layer (sliding-window and global
attention, per-type RoPE bases) with prompts longer than the sliding window: a block that runs
with another block's mask or rotary embedding shows up here as a different target layer.
"""

from __future__ import annotations

import pytest
import torch
from conftest import MIXED_LAYER_CONFIGS, TINY_CONFIGS, tiny_model

from melbo_tui.models import LoadedModel
from melbo_tui.prefix import PrefixCache
from melbo_tui.steering import run_to_layer, steer

IDS = torch.tensor([[5, 17, 3, 44, 9, 21, 60, 7, 33, 12, 80, 2], [8, 1, 90, 14, 6, 6, 31, 52, 70, 11, 4, 29]])  # [2, 12]
ARCHS = sorted(MIXED_LAYER_CONFIGS) + ["gemma3", "llama", "gpt2", "gpt_neox"]


@pytest.fixture(params=ARCHS, scope="module")
def model(request: pytest.FixtureRequest) -> LoadedModel:
    return tiny_model(request.param)


def _thetas(lm: LoadedModel) -> torch.Tensor:
    return torch.randn(3, lm.hidden_size, generator=torch.Generator().manual_seed(1)) * 2  # [K, d]


def test_prefix_path_matches_the_full_forward_at_every_source_layer(model: LoadedModel) -> None:
    thetas = _thetas(model)
    last = model.num_layers - 1
    for source in range(model.num_layers):
        cache = PrefixCache(model, source, IDS)
        with torch.no_grad(), cache.run(thetas) as ids:
            cached_logits = model.model(input_ids=ids, use_cache=False).logits  # [K*P, T, V]
            cached = run_to_layer(model, last, ids) if source < last else None  # [K*P, T, d]
        for k, theta in enumerate(thetas):
            with torch.no_grad(), steer(model, source, theta):
                full_logits = model.model(input_ids=IDS, use_cache=False).logits  # [P, T, V]
                full = run_to_layer(model, last, IDS)  # [P, T, d]
            rows = slice(k * IDS.shape[0], (k + 1) * IDS.shape[0])
            where = f"{model.name} source layer {source}"
            torch.testing.assert_close(cached_logits[rows], full_logits, atol=1e-5, rtol=1e-4,
                                       msg=lambda m, w=where: f"{w}: {m}")
            if cached is not None:
                torch.testing.assert_close(cached[rows], full, atol=1e-5, rtol=1e-4, msg=lambda m, w=where: f"{w}: {m}")


def test_prefix_path_to_an_intermediate_target_matches(model: LoadedModel) -> None:
    thetas = _thetas(model)[:1]
    for source in range(model.num_layers - 1):
        for target in range(source + 1, model.num_layers):
            cache = PrefixCache(model, source, IDS)
            with torch.no_grad(), cache.run(thetas, last=target) as ids:
                cached = run_to_layer(model, target, ids)
            with torch.no_grad(), steer(model, source, thetas[0]):
                full = run_to_layer(model, target, IDS)
            torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)


def test_the_model_is_whole_again_after_a_run(model: LoadedModel) -> None:
    with torch.no_grad():
        before = model.model(input_ids=IDS, use_cache=False).logits
        cache = PrefixCache(model, 1, IDS)
        with cache.run(_thetas(model)) as ids:
            model.model(input_ids=ids, use_cache=False)
        after = model.model(input_ids=IDS, use_cache=False).logits
    assert torch.equal(before, after)
    assert all(not block._forward_hooks for block in model.blocks)


def test_the_mixed_configs_really_mix_layer_kinds() -> None:
    # the tests above only mean something if a block's kind depends on its index
    for arch in MIXED_LAYER_CONFIGS:
        kinds = tiny_model(arch).model.config.layer_types
        assert len(set(kinds)) == 2, (arch, kinds)
    assert "gemma3" in TINY_CONFIGS
