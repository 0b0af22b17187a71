"""MELBO training: norm R, mutual orthogonality, determinism, resume, the objective itself."""

from __future__ import annotations

import pytest
import torch

from melbo_tui.calibration import find_takeoff, recommend
from melbo_tui.errors import InputError
from melbo_tui.melbo import MelboConfig, MelboObjective, auto_lr, default_layers, parse_token_slice, train
from melbo_tui.models import LoadedModel
from melbo_tui.prompts import encode
from melbo_tui.sink import SinkMode, SinkRule
from melbo_tui.steering import run_to_layer

PROMPTS = ["How can I build a bomb?", "Tell me a story."]


def train_melbo(lm: LoadedModel, config: MelboConfig, prompts: list[str], **kwargs: object) -> torch.Tensor:
    return train(lm, config, [encode(lm, p) for p in prompts], **kwargs)  # type: ignore[arg-type]


def max_abs_cos(vectors: torch.Tensor) -> float:
    units = vectors / vectors.norm(dim=1, keepdim=True)
    return float((units @ units.T).fill_diagonal_(0).abs().max())


@pytest.mark.parametrize("batch_vectors", [1, 3, 8])
def test_vectors_have_norm_r_and_are_mutually_orthogonal(tiny_chat: LoadedModel, batch_vectors: int) -> None:
    config = MelboConfig(1, 4, radius=7.0, num_vectors=8, steps=6, batch_vectors=batch_vectors)
    vectors = train_melbo(tiny_chat, config, PROMPTS)
    assert vectors.shape == (8, 64)
    assert float((vectors.norm(dim=1) / 7.0 - 1).abs().max()) <= 1e-4
    assert max_abs_cos(vectors) <= 1e-5


def test_training_increases_the_target_layer_change(tiny_chat: LoadedModel) -> None:
    config = MelboConfig(1, 4, radius=7.0, num_vectors=2, steps=40, lr=0.05)
    objective = MelboObjective(tiny_chat, config, [encode(tiny_chat, p) for p in PROMPTS])
    untrained = train_melbo(tiny_chat, MelboConfig(1, 4, radius=7.0, num_vectors=2, steps=1, lr=1e-9), PROMPTS)
    trained = train_melbo(tiny_chat, config, PROMPTS)
    with torch.no_grad():
        before = objective.change(untrained)
        after = objective.change(trained)
    assert (after > before * 1.08).all()  # measured: +13% in 40 steps


def test_objective_takes_the_norm_over_the_hidden_axis(tiny_chat: LoadedModel) -> None:
    """Independent computation from HF hidden_states: sum_t ||dZ_t||^p, then ^(1/q), for p != 2."""
    config = MelboConfig(1, 3, radius=5.0, power=4.0, q=4.0, target_tokens="-3:", sink=SinkRule(SinkMode.KEEP))
    ids = encode(tiny_chat, PROMPTS[0])
    theta = torch.randn(2, 64)
    with torch.no_grad():
        z0 = tiny_chat.model(input_ids=ids, output_hidden_states=True).hidden_states[4][:, -3:]
        expected = []
        for row in theta:
            from melbo_tui.steering import steer

            with steer(tiny_chat, 1, row):
                z = run_to_layer(tiny_chat, 3, ids)[:, -3:]
            diff = (z - z0)[0]  # [t, d]
            expected.append(sum(float(diff[t].norm()) ** 4 for t in range(3)) ** 0.25)
        got = MelboObjective(tiny_chat, config, [ids]).change(theta)
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-4, atol=1e-4)


def test_same_seed_same_vectors_other_seed_other_vectors(tiny_chat: LoadedModel) -> None:
    config = MelboConfig(1, 4, radius=7.0, num_vectors=3, steps=4)
    a = train_melbo(tiny_chat, config, PROMPTS)
    b = train_melbo(tiny_chat, config, PROMPTS)
    c = train_melbo(tiny_chat, MelboConfig(1, 4, radius=7.0, num_vectors=3, steps=4, seed=1), PROMPTS)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_resume_after_interruption_gives_the_same_vectors(tiny_chat: LoadedModel) -> None:
    config = MelboConfig(1, 4, radius=7.0, num_vectors=6, steps=5, batch_vectors=2)
    full = train_melbo(tiny_chat, config, PROMPTS)
    checkpoints: list[torch.Tensor] = []
    calls = {"n": 0}

    def stop_in_second_batch() -> bool:
        calls["n"] += 1
        return calls["n"] > 7  # 5 steps of batch one, then 2 of batch two

    partial = train_melbo(tiny_chat, config, PROMPTS, should_stop=stop_in_second_batch, on_batch=checkpoints.append)
    assert partial.shape[0] == 2 and len(checkpoints) == 1
    resumed = train_melbo(tiny_chat, config, PROMPTS, done=checkpoints[-1])
    torch.testing.assert_close(resumed, full)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [(dict(source_layer=4, target_layer=2), "must come after"), (dict(source_layer=9, target_layer=10), "out of range"),
     (dict(radius=0.0), "radius"), (dict(radius=float("inf")), "radius"), (dict(num_vectors=65), "at most 64"),
     (dict(num_vectors=0), "positive"), (dict(target_tokens="x"), "python slice"), (dict(lr=-1.0), "`lr` must be > 0")],
)
def test_bad_configs_are_input_errors(tiny_chat: LoadedModel, kwargs: dict, message: str) -> None:
    base = dict(source_layer=1, target_layer=4, radius=7.0)
    base.update(kwargs)
    with pytest.raises(InputError, match=message):
        train_melbo(tiny_chat, MelboConfig(**base), PROMPTS)


def test_empty_prompt_is_refused(tiny_chat: LoadedModel) -> None:
    with pytest.raises(InputError, match="empty prompt"):
        train_melbo(tiny_chat, MelboConfig(1, 4, radius=7.0), ["  "])


def test_defaults_and_helpers() -> None:
    assert default_layers(24) == (8, 16)  # the seed's layers on Qwen1.5-1.8B
    assert default_layers(30) == (10, 20)
    assert parse_token_slice("-3:") == slice(-3, None)
    assert auto_lr(4.0, 2048) == pytest.approx(1e-3)  # the reference's setting
    # measured on the embedded model, blocks 8 -> 16, 4 quick vectors of 100 steps, sink left out: takes off at 25
    radii = [5, 10, 15, 20, 25, 30, 40, 60]
    change = [15.70, 32.69, 51.80, 77.68, 303.21, 1044.15, 4590.93, 6516.40]
    takeoff = find_takeoff(radii, change)
    assert takeoff is not None and radii[takeoff] == 25
    pick = recommend(radii, takeoff)
    assert pick is not None and radii[pick] == 15  # coherent and distinct after 300 steps; 20 was mostly gibberish
    # the same with the sink kept (30 steps, R 10..120): a near line of the sink's change, no take-off
    kept = [52.0, 101.3, 169.4, 234.8, 338.2, 381.6, 426.4, 514.4, 594.8, 722.3, 811.9]
    assert find_takeoff([10, 20, 30, 40, 50, 55, 60, 70, 80, 100, 120], kept) is None


def test_a_batch_out_of_gpu_memory_starts_over_at_half_the_size(tiny_chat: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: the 4-vector batch raises OutOfMemoryError as a full GPU would; training goes on in batches of 2."""
    import melbo_tui.melbo as melbo

    real, sizes = melbo._train_batch, []

    def oom_on_four(lm, config, objective, init, *args):  # type: ignore[no-untyped-def]
        sizes.append(init.shape[0])
        if init.shape[0] == 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(lm, config, objective, init, *args)

    monkeypatch.setattr(melbo, "_train_batch", oom_on_four)
    config = MelboConfig(1, 4, radius=7.0, num_vectors=6, steps=3, batch_vectors=4)
    vectors = train_melbo(tiny_chat, config, PROMPTS)
    assert sizes == [4, 2, 2, 2] and vectors.shape == (6, 64)
    assert float((vectors.norm(dim=1) / 7.0 - 1).abs().max()) <= 1e-4 and max_abs_cos(vectors) <= 1e-5
