"""KL / norm metrics against an independent computation (own hook, full forward, float64)."""

from __future__ import annotations

import pytest
import torch
from helpers_ortho import one_thread, prompt_ids, random_bank  # noqa: F401 (autouse fixture)

from melbo_tui.bank import VectorBank
from melbo_tui.metrics import compute_metrics, evaluate_bank
from melbo_tui.models import LoadedModel


def _independent_logprobs(lm: LoadedModel, layer: int, vector: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities with `vector` added to block `layer`'s output: no engine code."""
    def add(_module: torch.nn.Module, _args: object, output: object) -> object:
        if isinstance(output, tuple):
            return (output[0] + vector, *output[1:])
        return output + vector

    handle = lm.model.model.layers[layer].register_forward_hook(add)
    try:
        with torch.no_grad():
            logits = lm.model(input_ids=ids).logits[0, -1]
    finally:
        handle.remove()
    return torch.log_softmax(logits.double(), dim=-1)


@pytest.mark.parametrize("base_index", [0, 2])
def test_kl_matches_an_independent_computation(tiny_llama: LoadedModel, base_index: int) -> None:
    bank = random_bank(tiny_llama, rows=5, norm=6.0, source=1)
    bank.meta.base_index = base_index
    ids = prompt_ids(tiny_llama, 9)
    metrics = compute_metrics(tiny_llama, bank, ids, batch_size=2)
    logp = torch.stack([_independent_logprobs(tiny_llama, 1, v, ids) for v in bank.vectors])  # [N, V]
    logp0 = logp[base_index]
    kl = (logp.exp() * (logp - logp0)).sum(dim=-1)
    kl_rev = (logp0.exp() * (logp0 - logp)).sum(dim=-1)
    assert kl.abs().max() > 1e-3  # the vectors do change the distribution: the check has teeth
    torch.testing.assert_close(metrics["kl"].double(), kl, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(metrics["kl_rev"].double(), kl_rev, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(metrics["kl"], metrics["kl_rev"])  # the two directions really differ
    assert metrics["kl"][base_index] == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(metrics["norm"], bank.vectors.norm(dim=1))
    assert metrics["cos_base"][base_index] == pytest.approx(1.0, abs=1e-6)
    assert all(m.dtype == torch.float32 and m.shape == (5,) and m.device.type == "cpu" for m in metrics.values())


def test_batch_size_does_not_change_the_result(tiny_llama: LoadedModel) -> None:
    bank = random_bank(tiny_llama, rows=7, norm=6.0, source=1)
    ids = prompt_ids(tiny_llama)
    one = compute_metrics(tiny_llama, bank, ids, batch_size=1)
    many = compute_metrics(tiny_llama, bank, ids)
    torch.testing.assert_close(one["kl"], many["kl"], atol=1e-5, rtol=1e-4)


def test_the_model_is_restored_after_a_run(tiny_llama: LoadedModel) -> None:
    layers = tiny_llama.model.model.layers
    compute_metrics(tiny_llama, random_bank(tiny_llama, rows=2, source=1), prompt_ids(tiny_llama))
    assert tiny_llama.model.model.layers is layers and len(layers) == tiny_llama.num_layers
    assert not tiny_llama.blocks[1]._forward_hooks


def test_evaluate_bank_records_prompt_and_directions(tiny_llama: LoadedModel) -> None:
    bank = random_bank(tiny_llama, rows=3, source=1)
    out = evaluate_bank(tiny_llama, bank, prompt_ids(tiny_llama), "hello", None, True)
    assert isinstance(out, VectorBank) and set(out.metrics) == {"kl", "kl_rev", "norm", "cos_base"}
    assert out.meta.extra["eval"]["prompt"] == "hello"
    assert out.meta.extra["eval"]["kl"] == "KL(P_i || P_0)" and out.meta.extra["eval"]["kl_rev"] == "KL(P_0 || P_i)"
