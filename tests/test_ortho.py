"""MELBO-ortho: constraints, collapse, resume, fast == sequential where they must agree, CLI errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from helpers_ortho import one_thread, prompt_ids, random_bank  # noqa: F401 (autouse fixture)

from melbo_tui.bank import load_bank, save_bank
from melbo_tui.errors import BankError, InputError
from melbo_tui.models import LoadedModel
from melbo_tui.ortho import (
    OrthoConfig,
    OrthoSource,
    _CachedForward,
    _FullForward,
    extend_basis,
    max_abs_cos,
    project,
    run_ortho,
)


def _source(lm: LoadedModel, base_row: int = 0, prompts: list[str] | None = None) -> OrthoSource:
    bank = random_bank(lm, rows=3)
    return OrthoSource(bank, "parent.safetensors", base_row, prompts or ["p"])


def test_basis_is_orthonormal_and_project_removes_it() -> None:
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(5, 16, generator=generator)
    basis = extend_basis(torch.zeros(0, 16, dtype=torch.float64), torch.cat([rows, rows[:1] * 2]))  # a repeat adds nothing
    assert basis.shape == (5, 16) and torch.allclose(basis @ basis.T, torch.eye(5, dtype=torch.float64), atol=1e-12)
    block = project(torch.randn(4, 16, generator=generator, dtype=torch.float64), basis)
    assert (block @ basis.T).abs().max() < 1e-12


@pytest.mark.parametrize("strategy", ["fast", "sequential"])
def test_orthogonal_all_the_way_to_d_model_minus_one(tiny_llama: LoadedModel, tmp_path: Path, strategy: str) -> None:
    d = tiny_llama.hidden_size
    config = OrthoConfig(count=d - 1, strategy=strategy, steps=4, collapse_ratio=0.0)
    result = run_ortho(tiny_llama, _source(tiny_llama), [prompt_ids(tiny_llama)], config, tmp_path / "o.safetensors")
    bank = load_bank(tmp_path / "o.safetensors")
    assert len(bank) == d and result.found == d - 1 and not result.collapsed
    assert max_abs_cos(bank.vectors) <= 1e-5
    assert torch.equal(bank.vectors[0], random_bank(tiny_llama, rows=3).vectors[0])
    assert (bank.norms()[1:] > 0).all()


def test_count_beyond_d_model_minus_one_is_refused(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    config = OrthoConfig(count=tiny_llama.hidden_size, steps=2)
    with pytest.raises(InputError, match="d_model - 1"):
        run_ortho(tiny_llama, _source(tiny_llama), [prompt_ids(tiny_llama)], config, tmp_path / "o.safetensors")


def test_collapse_ends_the_run_cleanly(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    # a huge norm penalty drives every vector to ~0, like the seed's end of run
    config = OrthoConfig(count=12, steps=60, l2=100.0)
    result = run_ortho(tiny_llama, _source(tiny_llama), [prompt_ids(tiny_llama)], config, tmp_path / "o.safetensors")
    assert result.collapsed and "collapsed" in result.message
    bank = load_bank(tmp_path / "o.safetensors")
    assert len(bank) == result.found + 1 < 13
    assert (bank.norms()[1:] > 0.02 * float(bank.norms()[0])).all()  # no collapsed row saved


def test_optimisation_lowers_the_loss(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    ids = [prompt_ids(tiny_llama)]
    short = run_ortho(tiny_llama, _source(tiny_llama), ids, OrthoConfig(count=4, steps=1), tmp_path / "a.safetensors")
    long = run_ortho(tiny_llama, _source(tiny_llama), ids, OrthoConfig(count=4, steps=60), tmp_path / "b.safetensors")
    before = torch.tensor(short.bank.meta.extra["ortho_loss"][1:])
    after = torch.tensor(long.bank.meta.extra["ortho_loss"][1:])
    assert (after < before).all()


def test_cached_prefix_objective_equals_the_full_forward(tiny_llama: LoadedModel) -> None:
    # blocks S+1..T on cached activations, prompts grouped by length == the seed's full forward
    prompts = [prompt_ids(tiny_llama, 7, seed=1), prompt_ids(tiny_llama, 5, seed=2), prompt_ids(tiny_llama, 7, seed=3)]
    theta0, thetas = random_bank(tiny_llama, rows=4).vectors.split([1, 3])
    full, cached = _FullForward(tiny_llama, 0, 3, prompts), _CachedForward(tiny_llama, 0, 3, prompts)
    for objective in (full, cached):
        objective.set_base(theta0[0])
    expected = full.distance(thetas)
    assert (expected > 0).all()
    assert torch.allclose(cached.distance(thetas), expected, rtol=1e-4, atol=1e-5)


def test_fast_beats_the_seeds_loop_on_a_tiny_model_with_60_evaluations(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    # on the embedded model the seed's loop can reach the lower loss (README, Benchmark); here L-BFGS converges
    ids = [prompt_ids(tiny_llama)]
    fast = run_ortho(tiny_llama, _source(tiny_llama), ids, OrthoConfig(count=3), tmp_path / "f.safetensors")
    seq = run_ortho(tiny_llama, _source(tiny_llama), ids, OrthoConfig(count=3, strategy="sequential"), tmp_path / "s.safetensors")
    fast_loss = torch.tensor(fast.bank.meta.extra["ortho_loss"][1:])
    seq_loss = torch.tensor(seq.bank.meta.extra["ortho_loss"][1:])
    assert fast_loss.median() <= seq_loss.median()
    assert max(fast.bank.meta.extra["ortho_steps"]) <= 80 and seq.bank.meta.extra["ortho_steps"][1:] == [1000] * 3


def test_resume_after_interruption_gives_the_uninterrupted_bank(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    ids = [prompt_ids(tiny_llama)]
    config = OrthoConfig(count=10, steps=30)
    whole = run_ortho(tiny_llama, _source(tiny_llama), ids, config, tmp_path / "whole.safetensors")
    calls = [0]

    def stop_in_the_fourth_vector() -> bool:
        calls[0] += 1
        return calls[0] > 100

    out = tmp_path / "cut.safetensors"
    cut = run_ortho(tiny_llama, _source(tiny_llama), ids, config, out, should_stop=stop_in_the_fourth_vector)
    assert cut.stopped and 0 < cut.found < 10
    assert len(load_bank(out)) == cut.found + 1  # the checkpoint is a valid bank
    resumed = run_ortho(tiny_llama, _source(tiny_llama), ids, config, out, resume=True)
    assert resumed.found == 10 and resumed.new == 10 - cut.found
    assert torch.allclose(load_bank(out).vectors, load_bank(tmp_path / "whole.safetensors").vectors, atol=1e-6)
    assert load_bank(out).meta.extra["ortho_steps"] == whole.bank.meta.extra["ortho_steps"]


def test_resume_refuses_other_settings_and_existing_out_needs_resume(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    ids = [prompt_ids(tiny_llama)]
    out = tmp_path / "o.safetensors"
    run_ortho(tiny_llama, _source(tiny_llama), ids, OrthoConfig(count=2, steps=3), out)
    with pytest.raises(InputError, match="--resume"):
        run_ortho(tiny_llama, _source(tiny_llama), ids, OrthoConfig(count=4, steps=3), out)
    with pytest.raises(BankError, match="steps"):
        run_ortho(tiny_llama, _source(tiny_llama), ids, OrthoConfig(count=4, steps=4), out, resume=True)
    with pytest.raises(BankError, match="row 0"):
        run_ortho(tiny_llama, _source(tiny_llama, base_row=1), ids, OrthoConfig(count=4, steps=3), out, resume=True)


def test_bank_metadata_names_the_parent(tiny_llama: LoadedModel, tmp_path: Path) -> None:
    source = _source(tiny_llama, base_row=2)
    result = run_ortho(tiny_llama, source, [prompt_ids(tiny_llama)], OrthoConfig(count=2, steps=3), tmp_path / "o.safetensors")
    meta = load_bank(tmp_path / "o.safetensors").meta
    assert meta.kind == "ortho" and meta.base_index == 0
    assert meta.extra["parent_bank"] == "parent.safetensors" and meta.extra["parent_row"] == 2
    assert torch.equal(result.bank.vectors[0], source.parent.vectors[2])
    assert meta.hyperparameters["steps"] == 3 and meta.hyperparameters["optimizer"].startswith("L-BFGS")
    assert OrthoConfig(count=1).resolved(4.0).steps == 60
    # sequential: the seed's Adam lr 0.01 at |theta0| = 7, scaled with |theta0| = 4
    seq = OrthoConfig(count=1, strategy="sequential").resolved(4.0)
    assert seq.lr == pytest.approx(0.01 * 4.0 / 7.0) and seq.steps == 1000
    assert meta.source_layer == 0 and meta.target_layer == 3


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
    _assert_one_line_error(*_cli(monkeypatch, capsys, "ortho", str(bank), "--count", "0", "--out", out, *model), "--count must be positive")
    _assert_one_line_error(*_cli(monkeypatch, capsys, "ortho", str(other), "--count", "2", "--out", out, *model), "hidden size 48")
    _assert_one_line_error(*_cli(monkeypatch, capsys, "ortho", str(bank), "--strategy", "slow", "--count", "2", "--out", out, *model), "unknown strategy")
    _assert_one_line_error(*_cli(monkeypatch, capsys, "ortho", str(bank), "--lr", "0.1", "--count", "2", "--out", out, *model), "--lr is the Adam")
    _assert_one_line_error(*_cli(monkeypatch, capsys, "eval", str(other), *model), "hidden size 48")
    assert not Path(out).exists()


def test_cli_ortho_then_eval(tiny_chat: LoadedModel, tiny_model_dir: Path, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    bank = _chat_bank(tiny_chat, tmp_path / "b.safetensors")
    out = tmp_path / "o.safetensors"
    code, stderr = _cli(monkeypatch, capsys, "ortho", str(bank), "--base", "1", "--count", "5", "--steps", "10",
                        "--out", str(out), "--model", str(tiny_model_dir))
    assert code == 0, stderr
    result = load_bank(out)
    assert len(result) == 6 and set(result.metrics) == {"kl", "kl_rev", "norm", "cos_base"}
    assert result.metrics["kl"][0] == pytest.approx(0.0, abs=1e-6)
    assert result.meta.extra["eval"]["kl"] == "KL(P_i || P_0)"
    assert max_abs_cos(result.vectors) <= 1e-5
    code, stderr = _cli(monkeypatch, capsys, "ortho", str(bank), "--base", "1", "--count", "7", "--steps", "10",
                        "--out", str(out), "--model", str(tiny_model_dir), "--resume", "--no-eval")
    assert code == 0, stderr
    assert len(load_bank(out)) == 8 and torch.equal(load_bank(out).vectors[:6], result.vectors)
