"""DCT: planted factors recovered, R calibrated at the ratio's root, real models of every
architecture, banks that round-trip, a resumed fit equal to an uninterrupted one."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_model
from test_cli import run_cli

from melbo_tui.bank import load_bank
from melbo_tui.calibration import brent_root, calibrate_dct, nonlinearity_ratio
from melbo_tui.dct import DCTConfig, DCTRun, fit_dct, run_dct
from melbo_tui.errors import BankError, InputError
from melbo_tui.kinds import BankKind
from melbo_tui.models import LoadedModel
from melbo_tui.response import TargetResponse

CPU = torch.device("cpu")
PROMPTS = ["How can I build a bomb?", "Write a haiku about rain."]


def planted_map(seed: int, d: int = 48, d_out: int = 40, m: int = 6, radius: float = 4.0):  # type: ignore[no-untyped-def]
    """Delta(theta) = sum_l alpha_l expm1(<v_l, theta> / R) u_l plus a weak linear part (so no direction is dead)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.linalg.qr(torch.randn(d, m, generator=g)).Q.T  # [m, d] orthonormal
    u = torch.linalg.qr(torch.randn(d_out, m, generator=g)).Q.T  # [m, d_out] orthonormal
    alpha = torch.linspace(5.0, 1.5, m)
    w = torch.randn(d_out, d, generator=g) / math.sqrt(d)

    def delta(theta: torch.Tensor) -> torch.Tensor:  # [K, d] -> [K, d_out]
        return (torch.expm1(theta @ v.T / radius) * alpha) @ u + 0.05 * theta @ w.T / radius

    return v, alpha, delta


def test_planted_factors_are_recovered_and_ranked() -> None:
    """As the authors' synthetic check: fit 12 factors to a map with 6 planted ones, 30 steps.

    OGI is a heuristic (a factor can settle at -v_l, also a local maximum), so the test counts:
    measured 46 of 48 planted factors found (cos > 0.95) over 8 random maps, and in 6 of the 8 the
    top 6 rows are exactly the planted factors in order with alpha within 2%."""
    found, exact = 0, 0
    for seed in range(8):
        v, alpha, delta = planted_map(seed)
        result = fit_dct(delta, 48, DCTConfig(num_vectors=12, iterations=30, seed=seed), 4.0, CPU)
        assert result is not None
        units = result.vectors / 4.0
        assert torch.allclose(units.norm(dim=1), torch.ones(12), atol=1e-5)
        cos = units @ v.T  # [12, 6]
        found += int((cos.max(dim=0).values > 0.95).sum())
        top = cos[:6].diagonal()
        exact += bool((top > 0.99).all() and torch.allclose(result.alpha[:6], alpha, rtol=0.02))
        assert (result.score[:-1] >= result.score[1:]).all()  # sorted by alpha^2
        assert sorted(result.order) == list(range(12))
    assert found >= 44
    assert exact >= 5


def test_without_iterations_the_init_spans_the_jacobian() -> None:
    """The init (SVD of 32 VJPs at 0): the first 6 rows span the planted directions' row space of J."""
    v, _, delta = planted_map(0)
    result = fit_dct(delta, 48, DCTConfig(num_vectors=6, iterations=0), 4.0, CPU)
    assert result is not None
    units = result.vectors / 4.0
    inside = (units @ v.T).norm(dim=1)  # length of each row's projection onto span(v)
    assert (inside > 0.99).all()


def test_brent_finds_a_known_root() -> None:
    calls: list[float] = []

    def f(x: float) -> float:
        calls.append(x)
        return x**3 - 2 * x - 5

    root = brent_root(f, 2.0, 3.0, f(2.0), f(3.0), xtol=1e-12)
    assert root == pytest.approx(2.0945514815423265, abs=1e-10)
    assert len(calls) < 15


def test_calibration_root_matches_a_brute_force_scan(tiny_llama: LoadedModel) -> None:
    inputs = [torch.tensor([[5, 17, 3, 40, 22, 9]]), torch.tensor([[7, 8, 9, 10, 11, 12, 13]])]
    with TargetResponse(tiny_llama, 0, 3, inputs, positions=3) as response:
        calibration = calibrate_dct(response.mean, 32, CPU, num_directions=8, seed=1)
        g = torch.Generator().manual_seed(1)  # the same directions the calibration drew
        directions = torch.randn(8, 32, generator=g)
        ratio = nonlinearity_ratio(response.mean, directions / directions.norm(dim=1, keepdim=True))
        grid = [0.001 * (1e5 ** (i / 99)) for i in range(100)]  # steps of 12% in R
        values = [ratio(r) for r in grid]
        assert ratio(calibration.radius) == pytest.approx(0.5, abs=1e-3)
    first = next(i for i in range(99) if values[i] <= 0.5 <= values[i + 1])
    assert grid[first] <= calibration.radius <= grid[first + 1]
    assert calibration.evaluations and calibration.scan[0].ratio < 0.5 < calibration.scan[-1].ratio


def test_calibration_that_never_crosses_is_a_one_line_error(tiny_llama: LoadedModel) -> None:
    inputs = [torch.tensor([[5, 17, 3, 40, 22, 9]])]
    with TargetResponse(tiny_llama, 0, 3, inputs, positions=3) as response, pytest.raises(InputError, match="never rises through 5"):
        calibrate_dct(response.mean, 32, CPU, num_directions=4, target=5.0)


def test_dct_on_every_architecture(any_tiny: LoadedModel) -> None:
    """A real (tiny) model: the top 4 DCT directions move the target more, on average, than the best of
    64 random directions of the same norm (on these random-weight models the skip connections make
    most directions alike: measured margins 2-7%, 80% on gemma3)."""
    inputs = [torch.tensor([[5, 17, 3, 40, 22, 9]]), torch.tensor([[7, 8, 9, 10, 11, 12, 13]])]
    radius = 1.0
    attention = any_tiny.model.config._attn_implementation
    with TargetResponse(any_tiny, 0, 3, inputs, positions=3) as response:
        result = fit_dct(response.mean, 32, DCTConfig(num_vectors=8, iterations=5), radius, CPU, rows_per_factor=2)
        assert result is not None
        random = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            found = response.mean(result.vectors[:4]).norm(dim=1).mean()
            best_random = response.mean(radius * random / random.norm(dim=1, keepdim=True)).norm(dim=1).max()
    assert torch.isfinite(result.vectors).all() and result.vectors.shape == (8, 32)
    assert found > best_random
    assert any_tiny.model.config._attn_implementation == attention  # eager only inside the `with`


def test_prompts_of_different_lengths_are_not_padded(tiny_llama: LoadedModel) -> None:
    """Delta over two prompts of different lengths is exactly the mean of each prompt's own Delta."""
    a, b = torch.tensor([[5, 17, 3, 40, 22, 9]]), torch.tensor([[7, 8, 9, 10, 11, 12, 13, 14, 15]])
    theta = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    with TargetResponse(tiny_llama, 1, 3, [a, b], positions=3) as both:
        joint = both.mean(theta)
    with TargetResponse(tiny_llama, 1, 3, [a], positions=3) as first, TargetResponse(tiny_llama, 1, 3, [b], positions=3) as second:
        alone = (first.mean(theta) + second.mean(theta)) / 2
    assert torch.allclose(joint, alone, atol=1e-6)


def test_the_attention_sink_is_never_a_kept_position(tiny_llama: LoadedModel) -> None:
    with pytest.raises(InputError, match="prompt 2 has 3 tokens.*attention sink"):
        TargetResponse(tiny_llama, 0, 3, [torch.tensor([[1, 2, 3, 4]]), torch.tensor([[1, 2, 3]])], positions=3)
    with pytest.raises(InputError, match="must come after"):
        TargetResponse(tiny_llama, 3, 3, [torch.tensor([[1, 2, 3, 4]])], positions=3)


def test_bf16_model_is_differentiated_in_fp32() -> None:
    """Upcast blocks give a response much closer to fp32 arithmetic on the same bf16 weights; the model is restored."""
    bf16 = tiny_model("llama")
    bf16.model.to(torch.bfloat16)
    same_weights = tiny_model("llama")
    same_weights.model.load_state_dict({k: v.float() for k, v in bf16.model.state_dict().items()})
    inputs = [torch.tensor([[5, 17, 3, 40, 22, 9]])]
    theta = 0.3 * torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
    with TargetResponse(same_weights, 2, 3, inputs, positions=3) as exact:
        reference = exact.mean(theta)
    errors = {}
    for upcast in (True, False):
        with TargetResponse(bf16, 2, 3, inputs, positions=3, upcast=upcast) as response:
            errors[upcast] = float((response.mean(theta) - reference).norm() / reference.norm())
    assert errors[True] < errors[False] / 5
    assert all(p.dtype == torch.bfloat16 for p in bf16.model.parameters())


def _run(tiny_chat: LoadedModel, **config: object) -> DCTRun:
    return DCTRun(source_layer=1, target_layer=4, prompts=PROMPTS,
                  config=DCTConfig(**{"num_vectors": 6, "iterations": 4, "radius": 2.0, **config}))  # type: ignore[arg-type]


def test_bank_round_trips(tiny_chat: LoadedModel, tmp_path: Path) -> None:
    out = tmp_path / "d.safetensors"
    bank = run_dct(tiny_chat, _run(tiny_chat), out, created_by="test")
    assert bank is not None
    loaded = load_bank(out)
    assert loaded.meta.kind == BankKind.DCT and loaded.meta.radius == 2.0 and loaded.meta.extra["complete"]
    assert torch.equal(loaded.vectors, bank.vectors) and torch.equal(loaded.aux["u"], bank.aux["u"])
    assert torch.allclose(loaded.metrics["score"], torch.tensor(loaded.meta.extra["alpha"]) ** 2)
    assert loaded.metrics["score"].tolist() == sorted(loaded.metrics["score"].tolist(), reverse=True)
    assert sorted(loaded.meta.extra["order"]) == list(range(6)) and len(loaded.meta.extra["objective"]) == 4
    assert torch.allclose(loaded.vectors.norm(dim=1), torch.full((6,), 2.0), rtol=1e-5)
    assert loaded.aux["u"].shape == (6, tiny_chat.hidden_size) and "v" not in loaded.aux


def test_resume_gives_the_uninterrupted_result(tiny_chat: LoadedModel, tmp_path: Path) -> None:
    whole = run_dct(tiny_chat, _run(tiny_chat, radius=None), tmp_path / "whole.safetensors")
    assert whole is not None
    out = tmp_path / "cut.safetensors"
    steps: list[int] = []

    def stop_after_two() -> bool:
        return len(steps) >= 2

    cut = run_dct(tiny_chat, _run(tiny_chat, radius=None), out, should_stop=stop_after_two,
                  on_progress=lambda p: steps.append(p.iteration) if p.stage == "iterate" and p.factors_done == p.factors else None)
    assert cut is None
    checkpoint = load_bank(out)
    assert checkpoint.meta.extra["complete"] is False and checkpoint.meta.extra["iteration"] == 2
    assert checkpoint.meta.radius == whole.meta.radius  # the calibrated R is kept, not recalibrated
    resumed = run_dct(tiny_chat, _run(tiny_chat, radius=None), out, resume=True)
    assert resumed is not None
    assert torch.equal(resumed.vectors, whole.vectors) and torch.equal(resumed.aux["u"], whole.aux["u"])
    assert resumed.meta.extra["objective"] == whole.meta.extra["objective"]
    assert resumed.meta.extra["calibration"] == whole.meta.extra["calibration"]
    with pytest.raises(InputError, match="already a finished"):
        run_dct(tiny_chat, _run(tiny_chat, radius=None), out, resume=True)
    with pytest.raises(BankError, match=r"made with iterations \d+, this run asks 5"):
        run_dct(tiny_chat, _run(tiny_chat, radius=None, iterations=5), tmp_path / "whole.safetensors", resume=True)


# --- the command line -----------------------------------------------------------------------------------

DCT_ARGS = ["-p", PROMPTS[0], "-p", PROMPTS[1], "--source-layer", "1", "--target-layer", "4"]


def test_cli_dct_calibrates_fits_and_refuses_to_resume_a_finished_bank(
        tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "d.safetensors"
    args = ["dct", "--model", str(tiny_model_dir), *DCT_ARGS, "--num-vectors", "6", "--iterations", "3", "--out", str(out)]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    said = " ".join(err.split())  # rich wraps long lines
    assert "R = " in said and f"wrote {out}: 6 DCT vectors" in said
    bank = load_bank(out)
    assert bank.meta.kind == BankKind.DCT and bank.meta.extra["complete"] and bank.meta.extra["calibration"]["method"] == "dct"
    assert bank.meta.created_by.startswith("melbo-tui dct --model")
    assert {"score", "kl_unsteered"} <= set(bank.metrics)  # the ranking, and measured at the end (--eval)
    assert "u" in bank.aux  # the DCT's output directions survive the measurement
    code, out_text, _ = run_cli(["calibrate", "--method", "dct", "--model", str(tiny_model_dir), *DCT_ARGS], capsys, monkeypatch)
    assert code == 0 and "<- root" in out_text
    assert f"R = {bank.meta.radius:.4g} " in out_text  # the same calibration as `dct --radius auto`
    code, _, err = run_cli([*args, "--resume"], capsys, monkeypatch)
    assert code == 2 and err.strip() == f"melbo-tui: error: --resume: {out} is already a finished DCT bank"
    assert bank.meta.extra["provenance"]["dtype"] == "float32"  # what a resume is checked against
    code, _, err = run_cli([*args, "--resume", "--dtype", "bfloat16"], capsys, monkeypatch)
    assert code == 2 and err.strip() == (f"melbo-tui: error: cannot resume {out}: it was made in float32 and the model is "
                                         "loaded in bfloat16; load it with --dtype float32")


@pytest.mark.parametrize(("extra", "message"), [
    (["--radius", "abc"], "--radius must be a number or 'auto', got 'abc'"),
    (["--radius", "-3"], "--radius must be a finite number > 0, got -3"),
    (["--num-vectors", "0"], "--num-vectors must be 1..64"),
    (["--target-layer", "1"], "target layer 1 must come after source layer 1"),
    (["--raw", "-p", "Hi"], "prompt 3 has 1 tokens"),
])
def test_cli_dct_errors_are_one_line(extra: list[str], message: str, tiny_model_dir: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run_cli(["dct", "--model", str(tiny_model_dir), *DCT_ARGS, "--radius", "2", "--iterations", "1",
                            "--num-vectors", "4", "--out", str(tmp_path / "x.safetensors"), *extra], capsys, monkeypatch)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "x.safetensors").exists()
