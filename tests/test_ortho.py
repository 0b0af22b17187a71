"""MELBO-ortho: constraints, collapse, resume, fast == sequential where they must agree, CLI errors."""

from __future__ import annotations

import statistics
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers_ortho import one_thread, prompt_ids, random_bank  # noqa: F401 (autouse fixture)

from melbo_tui.bank import load_bank, save_bank
from melbo_tui.errors import BankError, InputError
from melbo_tui.jobs import OrthoSource, run_ortho
from melbo_tui.models import LoadedModel
from melbo_tui.ortho import (
    Objective,
    OrthoConfig,
    OrthoLoss,
    SearchResult,
    _CachedForward,
    _FullForward,
    extend_basis,
    max_abs_cos,
    project,
    search,
)
from melbo_tui.sink import SinkMode, SinkRule


def _search(lm: LoadedModel, config: OrthoConfig, **kwargs: object) -> SearchResult:
    """From row 0 of a random bank, on one prompt of random token ids, blocks 0 -> 3."""
    theta0 = random_bank(lm, rows=3).vectors[0]
    return search(lm, theta0, [prompt_ids(lm)], source_layer=0, target_layer=3, config=config, **kwargs)  # type: ignore[arg-type]


def _source(lm: LoadedModel, base_index: int = 0) -> OrthoSource:
    bank = random_bank(lm, rows=3, norm=8.0, source=1, target=4)
    return OrthoSource(bank, "parent.safetensors", base_index, ["How can I build a bomb?"])


def test_basis_is_orthonormal_and_project_removes_it() -> None:
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(5, 16, generator=generator)
    basis = extend_basis(torch.zeros(0, 16, dtype=torch.float64), torch.cat([rows, rows[:1] * 2]))  # a repeat adds nothing
    assert basis.shape == (5, 16) and torch.allclose(basis @ basis.T, torch.eye(5, dtype=torch.float64), atol=1e-12)
    block = project(torch.randn(4, 16, generator=generator, dtype=torch.float64), basis)
    assert (block @ basis.T).abs().max() < 1e-12


@pytest.mark.parametrize("strategy", ["fast", "sequential"])
def test_orthogonal_all_the_way_to_d_model_minus_one(tiny_llama: LoadedModel, strategy: str) -> None:
    d = tiny_llama.hidden_size
    result = _search(tiny_llama, OrthoConfig(count=d - 1, strategy=strategy, steps=4, collapse_ratio=0.0))
    assert result.vectors.shape == (d - 1, d) and result.collapsed_norm is None
    theta0 = random_bank(tiny_llama, rows=3).vectors[0]
    assert max_abs_cos(torch.cat([theta0[None], result.vectors])) <= 1e-5
    assert (result.vectors.norm(dim=1) > 0).all()


def test_count_beyond_d_model_minus_one_is_refused(tiny_llama: LoadedModel) -> None:
    with pytest.raises(InputError, match="d_model - 1"):
        _search(tiny_llama, OrthoConfig(count=tiny_llama.hidden_size, steps=2))


def test_collapse_ends_the_search_cleanly(tiny_llama: LoadedModel) -> None:
    # a huge norm penalty drives every vector to ~0, like the seed's end of run
    result = _search(tiny_llama, OrthoConfig(count=12, steps=60, l2=100.0))
    assert result.collapsed_norm is not None and len(result.vectors) < 12
    theta0 = random_bank(tiny_llama, rows=3).vectors[0]
    assert (result.vectors.norm(dim=1) > 0.02 * float(theta0.norm())).all()  # no collapsed vector handed over


@pytest.mark.parametrize("objective", list(Objective))
def test_optimisation_lowers_the_loss(tiny_llama: LoadedModel, objective: Objective) -> None:
    short = _search(tiny_llama, OrthoConfig(count=4, steps=1, objective=objective))
    long = _search(tiny_llama, OrthoConfig(count=4, steps=60, objective=objective))
    assert (torch.tensor(long.losses) < torch.tensor(short.losses)).all()


def test_search_continued_from_done_gives_the_uninterrupted_result(tiny_llama: LoadedModel) -> None:
    config = OrthoConfig(count=6, steps=20)
    whole = _search(tiny_llama, config)
    first = _search(tiny_llama, replace(config, count=2))
    rest = _search(tiny_llama, config, done=first.vectors)
    torch.testing.assert_close(torch.cat([first.vectors, rest.vectors]), whole.vectors, atol=1e-6, rtol=0)


@pytest.mark.parametrize("objective", list(Objective))
def test_cached_prefix_objective_equals_the_full_forward(tiny_llama: LoadedModel, objective: Objective) -> None:
    # blocks S+1..T on cached activations, prompts grouped by length == the seed's full forward
    prompts = [prompt_ids(tiny_llama, 7, seed=1), prompt_ids(tiny_llama, 5, seed=2), prompt_ids(tiny_llama, 7, seed=3)]
    theta0, thetas = random_bank(tiny_llama, rows=4).vectors.split([1, 3])
    sink = SinkRule.parse("0")
    full = OrthoLoss(_FullForward(tiny_llama, 0, 3, prompts), objective, sink, theta0[0])
    cached = OrthoLoss(_CachedForward(tiny_llama, 0, 3, prompts), objective, sink, theta0[0])
    expected = full.value(thetas)
    assert (expected > 0).all()
    assert torch.allclose(cached.value(thetas), expected, rtol=1e-4, atol=1e-5)


def test_objectives_against_an_independent_computation(tiny_llama: LoadedModel) -> None:
    """seed: ||mean_t dZ_t|| over every position; tokens: mean_t ||dZ_t||^2 over positions >= 1 (position 0 named)."""
    ids = prompt_ids(tiny_llama, 6)
    theta0, thetas = random_bank(tiny_llama, rows=3).vectors.split([1, 2])

    def target(theta: torch.Tensor) -> torch.Tensor:  # [T, d] from HF hidden_states, own hook
        handle = tiny_llama.blocks[0].register_forward_hook(lambda _m, _a, out: (out[0] + theta, *out[1:]) if isinstance(out, tuple) else out + theta)
        try:
            with torch.no_grad():
                # hidden_states[3] = output of block 2 (the last entry has the final norm applied)
                return tiny_llama.model(input_ids=ids, output_hidden_states=True).hidden_states[3][0].double()
        finally:
            handle.remove()

    diffs = [target(t) - target(theta0[0]) for t in thetas]
    seed = OrthoLoss(_CachedForward(tiny_llama, 0, 2, [ids]), Objective.SEED, SinkRule(SinkMode.KEEP), theta0[0])
    tokens = OrthoLoss(_CachedForward(tiny_llama, 0, 2, [ids]), Objective.TOKENS, SinkRule.parse("0"), theta0[0])
    expected_seed = torch.stack([d.mean(dim=0).norm() for d in diffs])
    expected_tokens = torch.stack([d[1:].pow(2).sum(dim=-1).mean() for d in diffs])
    torch.testing.assert_close(seed.value(thetas).double(), expected_seed, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tokens.value(thetas).double(), expected_tokens, rtol=1e-4, atol=1e-5)
    assert tokens.reported(float(expected_tokens[0])) == pytest.approx(float(expected_tokens[0]) ** 0.5)


@pytest.mark.slow
def test_fast_beats_the_seeds_loop_on_a_tiny_model_with_60_evaluations(tiny_llama: LoadedModel) -> None:
    # the same objective (the seed's): L-BFGS converges where Adam with the seed's lr is still on its way
    fast = _search(tiny_llama, OrthoConfig(count=3, objective=Objective.SEED))
    seq = _search(tiny_llama, OrthoConfig(count=3, strategy="sequential", objective=Objective.SEED))
    assert torch.tensor(fast.losses).median() <= torch.tensor(seq.losses).median()
    assert max(fast.steps) <= 80 and seq.steps == [1000] * 3


def test_resume_after_interruption_gives_the_uninterrupted_bank(tiny_chat: LoadedModel, tmp_path: Path) -> None:
    config = OrthoConfig(count=10, steps=30)
    run_ortho(tiny_chat, _source(tiny_chat), config, tmp_path / "whole.safetensors")
    calls = [0]

    def stop_in_the_fourth_vector() -> bool:
        calls[0] += 1
        return calls[0] > 100

    at_once = run_ortho(tiny_chat, _source(tiny_chat), config, tmp_path / "none.safetensors", should_stop=lambda: True)
    assert at_once.summary == "stopped before the first vector: nothing saved" and not (tmp_path / "none.safetensors").exists()
    out = tmp_path / "cut.safetensors"
    cut = run_ortho(tiny_chat, _source(tiny_chat), config, out, should_stop=stop_in_the_fourth_vector)
    assert cut.stopped and 0 < cut.found < 10 and "stopped" in cut.summary
    assert len(load_bank(out)) == cut.found + 1  # the checkpoint is a valid bank
    resumed = run_ortho(tiny_chat, _source(tiny_chat), config, out, resume=True)
    assert resumed.found == 10 and resumed.new == 10 - cut.found
    whole = load_bank(tmp_path / "whole.safetensors")
    assert torch.allclose(load_bank(out).vectors, whole.vectors, atol=1e-6)
    assert load_bank(out).meta.extra["ortho_steps"] == whole.meta.extra["ortho_steps"]


def test_resume_refuses_other_settings_and_existing_out_needs_resume(tiny_chat: LoadedModel, tmp_path: Path) -> None:
    out = tmp_path / "o.safetensors"
    run_ortho(tiny_chat, _source(tiny_chat), OrthoConfig(count=2, steps=3), out)
    with pytest.raises(BankError, match="`resume`"):
        run_ortho(tiny_chat, _source(tiny_chat), OrthoConfig(count=4, steps=3), out)
    with pytest.raises(BankError, match="steps"):
        run_ortho(tiny_chat, _source(tiny_chat), OrthoConfig(count=4, steps=4), out, resume=True)
    with pytest.raises(BankError, match="row 0"):
        run_ortho(tiny_chat, _source(tiny_chat, base_index=1), OrthoConfig(count=4, steps=3), out, resume=True)
    with pytest.raises(BankError, match="made with objective 'continuation', this run asks 'seed'"):
        run_ortho(tiny_chat, _source(tiny_chat), OrthoConfig(count=4, steps=3, objective=Objective.SEED), out, resume=True)
    with pytest.raises(BankError, match="sink"):
        run_ortho(tiny_chat, _source(tiny_chat), OrthoConfig(count=4, steps=3, sink=SinkRule(SinkMode.KEEP)), out, resume=True)


def test_bank_metadata_names_the_parent_and_how_it_was_made(tiny_chat: LoadedModel, tmp_path: Path) -> None:
    source = _source(tiny_chat, base_index=2)
    result = run_ortho(tiny_chat, source, OrthoConfig(count=2, steps=3), tmp_path / "o.safetensors")
    meta = load_bank(tmp_path / "o.safetensors").meta
    assert meta.kind == "ortho" and meta.base_index == 0
    assert meta.extra["parent_bank"] == "parent.safetensors" and meta.extra["parent_row"] == 2
    assert torch.equal(result.bank.vectors[0], source.parent.vectors[2])
    hyper = meta.hyperparameters
    assert hyper["steps"] == 3 and hyper["optimizer"].startswith("L-BFGS") and hyper["objective"] == "continuation" and hyper["continuation"] == 32
    assert hyper["sink"]["mode"] == "exclude" and "10x the median" in hyper["sink"]["rule"]
    assert OrthoConfig(count=1).resolved(4.0).steps == 60
    assert OrthoConfig(count=1, objective=Objective.SEED).resolved(4.0).sink == SinkRule(SinkMode.KEEP)
    # sequential: the seed's Adam lr 0.01 at |theta0| = 7, scaled with |theta0| = 4
    seq = OrthoConfig(count=1, strategy="sequential").resolved(4.0)
    assert seq.lr == pytest.approx(0.01 * 4.0 / 7.0) and seq.steps == 1000
    assert meta.source_layer == 1 and meta.target_layer == 4


# --- CLI ------------------------------------------------------------------------------------------


def _cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    from melbo_tui.cli import main

    monkeypatch.setattr(sys, "argv", ["melbo-tui", *args])
    code: int | str | None = 0
    try:
        main()
    except SystemExit as exit_info:
        code = exit_info.code
    return int(code) if code is not None else 0, capsys.readouterr().err


def _assert_one_line_error(code: int, stderr: str, fragment: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("melbo-tui: error:") and fragment in lines[0], stderr


def _chat_bank(tiny_chat: LoadedModel, path: Path, hidden: int | None = None) -> Path:
    bank = random_bank(tiny_chat, rows=3, norm=8.0, source=1, target=4)
    if hidden is not None:  # a bank made for another model
        bank.vectors = torch.randn(3, hidden)
        bank.meta.hidden_size = hidden
        bank.meta.model = "some-other-model"
    save_bank(bank, path)
    return path


def test_cli_errors_are_one_line(tiny_chat: LoadedModel, tiny_model_dir: Path, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    bank = _chat_bank(tiny_chat, tmp_path / "b.safetensors")
    other = _chat_bank(tiny_chat, tmp_path / "other.safetensors", hidden=48)
    out = str(tmp_path / "o.safetensors")
    model = ["--model", str(tiny_model_dir)]
    _assert_one_line_error(*_cli(monkeypatch, capsys, "ortho", str(bank), "--base", "3", "--out", out, *model), "--base 3 is out of range")
    _assert_one_line_error(*_cli(monkeypatch, capsys, "ortho", str(bank), "--num-vectors", "0", "--out", out, *model), "--num-vectors must be positive")
    _assert_one_line_error(*_cli(monkeypatch, capsys, "ortho", str(other), "--num-vectors", "2", "--out", out, *model), "hidden size 48")
    _assert_one_line_error(*_cli(monkeypatch, capsys, "ortho", str(bank), "--strategy", "slow", "--num-vectors", "2", "--out", out, *model),
                           "Invalid value for '--strategy': 'slow' is not one of")
    _assert_one_line_error(*_cli(monkeypatch, capsys, "ortho", str(bank), "--objective", "kl", "--num-vectors", "2", "--out", out, *model),
                           "Invalid value for '--objective': 'kl' is not one of 'tokens', 'seed', 'continuation'.")
    _assert_one_line_error(*_cli(monkeypatch, capsys, "ortho", str(bank), "--sink", "first", "--num-vectors", "2", "--out", out, *model), "sink must be 'exclude', 'keep'")
    _assert_one_line_error(*_cli(monkeypatch, capsys, "ortho", str(bank), "--lr", "0.1", "--num-vectors", "2", "--out", out, *model), "--lr is the Adam")
    _assert_one_line_error(*_cli(monkeypatch, capsys, "eval", str(other), *model), "hidden size 48")
    assert not Path(out).exists()


def test_cli_ortho_then_eval(tiny_chat: LoadedModel, tiny_model_dir: Path, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    bank = _chat_bank(tiny_chat, tmp_path / "b.safetensors")
    out = tmp_path / "o.safetensors"
    code, stderr = _cli(monkeypatch, capsys, "ortho", str(bank), "--base", "1", "--num-vectors", "5", "--steps", "10",
                        "--out", str(out), "--model", str(tiny_model_dir))
    assert code == 0, stderr
    result = load_bank(out)
    assert len(result) == 6 and set(result.metrics) == {"kl", "kl_rev", "kl_seq", "kl_unsteered", "err", "norm", "cos_base"}
    assert result.metrics["kl"][0] == pytest.approx(0.0, abs=1e-6) and result.metrics["kl_seq"][0] == pytest.approx(0.0, abs=1e-6)
    assert result.meta.extra["eval"]["kl"].startswith("KL(P_i || P_base)")
    assert result.meta.hyperparameters["objective"] == "continuation" and result.meta.hyperparameters["sink"]["mode"] == "exclude"
    assert "sink:" in stderr  # which positions the objective compares, said once
    assert max_abs_cos(result.vectors) <= 1e-5
    code, stderr = _cli(monkeypatch, capsys, "ortho", str(bank), "--base", "1", "--count", "7", "--steps", "10",
                        "--out", str(out), "--model", str(tiny_model_dir), "--resume", "--no-eval")
    assert code == 0, stderr
    assert "--count is deprecated and goes in the next release: use --num-vectors" in " ".join(stderr.split())
    resumed = load_bank(out)
    assert len(resumed) == 8 and torch.equal(resumed.vectors[:6], result.vectors)
    assert resumed.metrics == {} and "eval" not in resumed.meta.extra  # no metrics that miss the new rows
    code, stderr = _cli(monkeypatch, capsys, "eval", str(out), "--model", str(tiny_model_dir))
    assert code == 0, stderr
    assert "sink: err " in stderr and len(load_bank(out).metrics["kl_seq"]) == 8


def test_resume_refuses_a_model_loaded_in_another_dtype(tiny_chat: LoadedModel, tiny_model_dir: Path, tmp_path: Path) -> None:
    from melbo_tui.models import load_model

    out = tmp_path / "o.safetensors"
    run_ortho(tiny_chat, _source(tiny_chat), OrthoConfig(count=2, steps=3), out)
    assert load_bank(out).meta.extra["provenance"]["dtype"] == "float32"
    bf16 = load_model(str(tiny_model_dir), dtype="bfloat16")
    with pytest.raises(BankError, match="made in float32 and the model is loaded in bfloat16"):
        run_ortho(bf16, _source(tiny_chat), OrthoConfig(count=4, steps=3), out, resume=True)


def test_a_bf16_model_searches_in_fp32_copies_of_the_blocks_it_runs(tiny_llama: LoadedModel) -> None:
    import copy

    from melbo_tui.models import LoadedModel as Loaded

    half = copy.deepcopy(tiny_llama.model).to(torch.bfloat16)
    lm16 = Loaded(model=half, tokenizer=None, name="tiny-bf16", blocks=half.model.layers)
    widened = copy.deepcopy(half).float()  # the same bf16 weights, every block in fp32
    lm32 = Loaded(model=widened, tokenizer=None, name="tiny-bf16-in-fp32", blocks=widened.model.layers)
    ids = [prompt_ids(tiny_llama)]
    theta0, thetas = random_bank(tiny_llama, rows=3).vectors.split([1, 2])
    forward = _CachedForward(lm16, 0, 3, ids)
    assert forward.blocks is not None and all(p.dtype == torch.float32 for b in forward.blocks for p in b.parameters())
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())  # the model itself is untouched
    losses = []
    for fwd in (forward, _CachedForward(lm32, 0, 3, ids)):
        loss = OrthoLoss(fwd, Objective.TOKENS, SinkRule.parse("0"), theta0[0])
        losses.append(loss.value(thetas))
    assert losses[0].dtype == torch.float32
    torch.testing.assert_close(losses[0], losses[1], rtol=2e-2, atol=1e-3)  # only block 0 ran in bf16


@pytest.mark.embedded
@pytest.mark.slow
def test_fast_ortho_in_bf16_keeps_the_fp32_quality_on_the_embedded_model(embedded: LoadedModel) -> None:
    """Issue 11: L-BFGS in bf16 stalled (loss 14.7 vs 7.7); with fp32 copies of blocks S+1..T it matches fp32."""
    import copy

    from melbo_tui.metrics import bank_metrics
    from melbo_tui.models import LoadedModel as Loaded
    from melbo_tui.prompts import encode

    half = copy.deepcopy(embedded.model).to(torch.bfloat16)
    lm16 = Loaded(model=half, tokenizer=embedded.tokenizer, name=embedded.name, blocks=half.model.layers)
    ids = [encode(embedded, "How can I build a bomb?")]
    theta0 = random_bank(embedded, rows=1, norm=40.0, source=8, target=16).vectors[0]
    config = OrthoConfig(count=3, steps=60)
    found = {name: search(lm, theta0, ids, source_layer=8, target_layer=16, config=config) for name, lm in
             (("fp32", embedded), ("bf16", lm16))}
    loss32, loss16 = (statistics.median(found[k].losses) for k in ("fp32", "bf16"))
    assert loss16 <= loss32 * 1.05, (loss16, loss32)
    rows = {k: torch.cat([theta0[None], v.vectors]) for k, v in found.items()}
    err = {k: float(bank_metrics(embedded, r, ids[0], source_layer=8, target_layer=16, continuation=8)["err"][1:].median())
           for k, r in rows.items()}
    assert err["bf16"] <= err["fp32"] * 1.05, err


def test_the_continuation_objective_compares_theta0s_own_answer_teacher_forced(tiny_llama: LoadedModel) -> None:
    """`continuation` = `tokens` on the prompt followed by theta0's greedy tokens: checked against
    the tokens objective run by hand on those inputs, and against a greedy loop written here."""
    from melbo_tui.ortho import with_continuation
    from melbo_tui.steering import steer

    theta0 = random_bank(tiny_llama, rows=3).vectors[0]
    ids = prompt_ids(tiny_llama)
    extended = with_continuation(tiny_llama, ids, 0, theta0, 6)
    assert extended.shape[1] == ids.shape[1] + 5 and torch.equal(extended[:, : ids.shape[1]], ids)
    current = ids
    with torch.no_grad(), steer(tiny_llama, 0, theta0):  # the greedy answer under theta0, one token at a time
        for _ in range(5):
            token = tiny_llama.model(input_ids=current).logits[0, -1].argmax()
            current = torch.cat([current, token.view(1, 1)], dim=1)
    assert torch.equal(extended, current)
    config = OrthoConfig(count=2, steps=5, objective=Objective.CONTINUATION, continuation=6)
    found = search(tiny_llama, theta0, [ids], source_layer=0, target_layer=3, config=config)
    by_hand = search(tiny_llama, theta0, [extended], source_layer=0, target_layer=3,
                     config=replace(config, objective=Objective.TOKENS))
    assert torch.allclose(found.vectors, by_hand.vectors, atol=1e-6) and found.losses == pytest.approx(by_hand.losses)
    prompt_only = search(tiny_llama, theta0, [ids], source_layer=0, target_layer=3, config=replace(config, objective=Objective.TOKENS))
    assert not torch.allclose(found.vectors, prompt_only.vectors, atol=1e-4)  # it does see more than the prompt
    from melbo_tui.ortho import hyperparameters

    resolved = config.resolved(float(theta0.norm()))
    assert hyperparameters(resolved)["continuation"] == 6 and "continuation" not in hyperparameters(replace(resolved, objective=Objective.TOKENS))
    with pytest.raises(InputError, match="`continuation` must be at least 2"):
        OrthoConfig(count=1, continuation=1).check(tiny_llama.hidden_size)


def test_the_clis_continuation_default_is_the_engines() -> None:
    from melbo_tui.cli.options import CONTINUATION_TOKENS as CLI_DEFAULT
    from melbo_tui.metrics import CONTINUATION_TOKENS

    assert CLI_DEFAULT == CONTINUATION_TOKENS
