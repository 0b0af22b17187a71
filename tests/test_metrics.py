"""Bank metrics against an independent computation (own hooks, full forwards, float64, HF generate)."""

from __future__ import annotations

import pytest
import torch
from helpers_ortho import one_thread, prompt_ids, random_bank  # noqa: F401 (autouse fixture)

from melbo_tui.bank import VectorBank
from melbo_tui.errors import InputError, Stopped
from melbo_tui.metrics import bank_metrics, evaluate_bank, measure
from melbo_tui.models import LoadedModel
from melbo_tui.sink import SinkMode, SinkRule


def _add_hook(vector: torch.Tensor):  # type: ignore[no-untyped-def]
    def add(_module: torch.nn.Module, _args: object, output: object) -> object:
        if isinstance(output, tuple):
            return (output[0] + vector, *output[1:])
        return output + vector  # type: ignore[operator]

    return add


def _independent(lm: LoadedModel, source: int, target: int, vector: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities `[T, V]` at every position and the target layer `[T, d]`, `vector` added after block `source`."""
    layers = lm.model.model.layers
    captured: list[torch.Tensor] = []
    handles = [layers[source].register_forward_hook(_add_hook(vector)),
               layers[target].register_forward_hook(lambda _m, _a, out: captured.append(out[0] if isinstance(out, tuple) else out))]
    try:
        with torch.no_grad():
            logits = lm.model(input_ids=ids).logits[0]
    finally:
        for handle in handles:
            handle.remove()
    return torch.log_softmax(logits.double(), dim=-1), captured[0][0].double()


def _generate_greedy(lm: LoadedModel, source: int, vector: torch.Tensor, ids: torch.Tensor, n: int) -> torch.Tensor:
    handle = lm.model.model.layers[source].register_forward_hook(_add_hook(vector))
    try:
        with torch.no_grad():
            out = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                    do_sample=False, pad_token_id=0)
    finally:
        handle.remove()
    return out[0, ids.shape[1]:]


@pytest.mark.parametrize("base_index", [0, 2])
def test_next_token_kls_match_an_independent_computation(tiny_llama: LoadedModel, base_index: int) -> None:
    vectors = random_bank(tiny_llama, rows=5, norm=6.0, source=1).vectors
    ids = prompt_ids(tiny_llama, 9)
    metrics = bank_metrics(tiny_llama, vectors, ids, source_layer=1, target_layer=3, base_index=base_index, batch_size=2)
    logp = torch.stack([_independent(tiny_llama, 1, 3, v, ids)[0][-1] for v in vectors])  # [N, V]
    logp0 = logp[base_index]
    logp_u = _independent(tiny_llama, 1, 3, torch.zeros(tiny_llama.hidden_size), ids)[0][-1]
    kl = (logp.exp() * (logp - logp0)).sum(dim=-1)
    assert kl.abs().max() > 1e-3  # the vectors do change the distribution: the check has teeth
    torch.testing.assert_close(metrics["kl"].double(), kl, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(metrics["kl_rev"].double(), (logp0.exp() * (logp0 - logp)).sum(dim=-1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(metrics["kl_unsteered"].double(), (logp.exp() * (logp - logp_u)).sum(dim=-1), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(metrics["kl"], metrics["kl_rev"])  # the two directions really differ
    assert metrics["kl"][base_index] == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(metrics["norm"], vectors.norm(dim=1))
    assert metrics["cos_base"][base_index] == pytest.approx(1.0, abs=1e-6)
    assert all(m.dtype == torch.float32 and m.shape == (5,) and m.device.type == "cpu" for m in metrics.values())


def test_multi_token_kl_follows_the_bases_greedy_continuation(tiny_llama: LoadedModel) -> None:
    vectors = random_bank(tiny_llama, rows=4, norm=6.0, source=1).vectors
    ids = prompt_ids(tiny_llama, 6)
    n = 5
    result = measure(tiny_llama, vectors, ids, source_layer=1, target_layer=3, continuation=n, batch_size=3)
    continuation = _generate_greedy(tiny_llama, 1, vectors[0], ids, n)  # HF generate with a KV cache
    assert result.continuation == continuation.tolist()
    sequence = torch.cat([ids, continuation[None, :-1]], dim=1)
    logp = torch.stack([_independent(tiny_llama, 1, 3, v, sequence)[0][-n:] for v in vectors])  # [N, n, V]
    expected = (logp[0].exp()[None] * (logp[0][None] - logp)).sum(dim=-1).mean(dim=-1)  # KL(P_base || P_i), mean over t
    assert expected[1:].min() > 1e-3
    torch.testing.assert_close(result.values["kl_seq"].double(), expected, atol=1e-5, rtol=1e-4)
    # the first position of kl_seq is the next-token kl_rev: the multi-token KL extends it, it does not replace it
    first = (logp[0, 0].exp() * (logp[0, 0] - logp[:, 0])).sum(dim=-1)
    torch.testing.assert_close(result.values["kl_rev"].double(), first, atol=1e-5, rtol=1e-4)


def test_err_is_the_target_layer_error_relative_to_no_steering(tiny_llama: LoadedModel) -> None:
    vectors = random_bank(tiny_llama, rows=4, norm=6.0, source=1).vectors
    ids = prompt_ids(tiny_llama, 8)
    keep = bank_metrics(tiny_llama, vectors, ids, source_layer=1, target_layer=3, sink=SinkRule(SinkMode.KEEP))
    skip0 = bank_metrics(tiny_llama, vectors, ids, source_layer=1, target_layer=3, sink=SinkRule.parse("0"))
    z = torch.stack([_independent(tiny_llama, 1, 3, v, ids)[1] for v in vectors])  # [N, T, d]
    z_u = _independent(tiny_llama, 1, 3, torch.zeros(tiny_llama.hidden_size), ids)[1]

    def rel(positions: slice) -> torch.Tensor:
        err = (z[:, positions] - z[0, positions]).pow(2).sum(-1).mean(-1).sqrt()
        return err / (z_u[positions] - z[0, positions]).pow(2).sum(-1).mean(-1).sqrt()

    torch.testing.assert_close(keep["err"].double(), rel(slice(None)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(skip0["err"].double(), rel(slice(1, None)), atol=1e-5, rtol=1e-4)
    assert keep["err"][0] == 0 and not torch.allclose(keep["err"], skip0["err"])


def test_batch_size_does_not_change_the_result(tiny_llama: LoadedModel) -> None:
    vectors = random_bank(tiny_llama, rows=7, norm=6.0, source=1).vectors
    ids = prompt_ids(tiny_llama)
    one = bank_metrics(tiny_llama, vectors, ids, source_layer=1, target_layer=3, batch_size=1, continuation=4)
    many = bank_metrics(tiny_llama, vectors, ids, source_layer=1, target_layer=3, continuation=4)
    for name in one:
        torch.testing.assert_close(one[name], many[name], atol=1e-5, rtol=1e-4)


def test_stop_and_progress(tiny_llama: LoadedModel) -> None:
    vectors = random_bank(tiny_llama, rows=6, norm=6.0, source=1).vectors
    seen: list[tuple[int, int]] = []
    bank_metrics(tiny_llama, vectors, prompt_ids(tiny_llama), source_layer=1, target_layer=3, batch_size=4,
                 continuation=2, on_progress=lambda done, total: seen.append((done, total)))
    assert seen == [(4, 6), (6, 6)]
    with pytest.raises(Stopped):
        bank_metrics(tiny_llama, vectors, prompt_ids(tiny_llama), source_layer=1, target_layer=3, should_stop=lambda: True)


def test_bad_arguments_are_input_errors(tiny_llama: LoadedModel) -> None:
    vectors = random_bank(tiny_llama, rows=2, source=1).vectors
    ids = prompt_ids(tiny_llama)
    with pytest.raises(InputError, match="must come after"):
        bank_metrics(tiny_llama, vectors, ids, source_layer=2, target_layer=1)
    with pytest.raises(InputError, match="base index"):
        bank_metrics(tiny_llama, vectors, ids, source_layer=1, target_layer=3, base_index=5)
    with pytest.raises(InputError, match="vectors must be"):
        bank_metrics(tiny_llama, vectors[:, :5], ids, source_layer=1, target_layer=3)


def test_the_model_is_restored_after_a_run(tiny_llama: LoadedModel) -> None:
    layers = tiny_llama.model.model.layers
    bank_metrics(tiny_llama, random_bank(tiny_llama, rows=2, source=1).vectors, prompt_ids(tiny_llama), source_layer=1, target_layer=3)
    assert tiny_llama.model.model.layers is layers and len(layers) == tiny_llama.num_layers
    assert not any(block._forward_hooks for block in tiny_llama.blocks)


def test_evaluate_bank_records_what_was_measured_and_the_unsteered_reference(tiny_llama: LoadedModel) -> None:
    bank = random_bank(tiny_llama, rows=3, source=1)
    out = evaluate_bank(tiny_llama, bank, prompt_ids(tiny_llama), "hello", None, True, continuation=4)
    assert isinstance(out, VectorBank)
    assert set(out.metrics) == {"kl", "kl_rev", "kl_seq", "kl_unsteered", "err", "norm", "cos_base"}
    record = out.meta.extra["eval"]
    assert record["prompt"] == "hello" and record["kl"].startswith("KL(P_i || P_base)")
    assert record["continuation_tokens"] == len(record["continuation_ids"]) <= 4
    # the unsteered model measured as a row: its KL to itself is 0 and its error to the base is the unit
    assert record["unsteered"]["kl_unsteered"] == pytest.approx(0.0, abs=1e-6)
    assert record["unsteered"]["err"] == pytest.approx(1.0, abs=1e-5)
    assert record["unsteered"]["kl_seq"] > 0
