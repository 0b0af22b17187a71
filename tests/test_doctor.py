"""`melbo-tui doctor`: passes on healthy models of every architecture, and fails on the defects it is for."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import run_cli, tiny_model
from torch import nn
from transformers import CompileConfig

from melbo_tui import generation
from melbo_tui.doctor import GENERATED_TOKENS, PROMPT, Status, _prompt_ids, run_doctor, upcast
from melbo_tui.models import load_model
from melbo_tui.prefix import PrefixCache, swapped_blocks

CHECKS = ["block discovery", "KV cache (steered)", "prefix cache vs full forward", "steering survives generation",
          "bf16 vs fp32 KL", "massive activations"]



@pytest.mark.parametrize("arch", ["llama", "qwen2_sliding", "gemma2", "gemma3", "gemma3_mixed", "mistral", "gpt2", "gpt_neox"])
def test_doctor_passes_on_tiny_models(arch: str) -> None:
    lm = tiny_model(arch)
    report = run_doctor(lm)
    assert [c.name for c in report.checks] == CHECKS
    assert not report.failed, report.render()
    statuses = {c.name: c.status for c in report.checks}
    assert statuses["prefix cache vs full forward"] is Status.PASS and statuses["bf16 vs fp32 KL"] is Status.SKIP
    if arch in ("qwen2_sliding", "gemma2", "gemma3_mixed"):  # checked past the 4-token window
        assert "tokens" in report.checks[2].detail and int(report.checks[2].detail.split(", ")[1].split()[0]) > 4


def test_doctor_on_the_embedded_model(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    code, out, _ = run_cli(["doctor", "--out", str(tmp_path / "report.txt")], capsys, monkeypatch)
    assert code == 0, out
    for line in ("torch          2.", "model          embedded:SmolLM2-135M-Instruct", "device map     none"):
        assert line in out
    assert out.count("  PASS  ") == 4 and "FAIL" not in out
    assert "massive activations" in out and "'<|im_start|>'" in out  # SmolLM2's sink: the first template token
    assert (tmp_path / "report.txt").read_text() == out


def test_doctor_in_bf16_compares_kl_with_fp32_and_restores_the_model(tiny_model_dir: Path) -> None:
    lm = load_model(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    before = {name: t.clone() for name, t in [*lm.model.named_parameters(), *lm.model.named_buffers()]}
    report = run_doctor(lm)
    kl = next(c for c in report.checks if c.name == "bf16 vs fp32 KL")
    assert kl.status is Status.PASS and "rank correlation" in kl.detail
    assert not report.failed, report.render()
    after = dict([*lm.model.named_parameters(), *lm.model.named_buffers()])
    for name, tensor in before.items():  # bit for bit, dtypes included (fp32 rotary buffers stay fp32)
        assert after[name].dtype == tensor.dtype and torch.equal(after[name], tensor), name


def test_upcast_is_exact_both_ways() -> None:
    lm = tiny_model("gemma3_mixed")
    lm.model.to(torch.bfloat16)
    lm.model.model.rotary_emb.register_buffer("probe", torch.ones(3, dtype=torch.float32) / 3)
    weight = lm.blocks[0].mlp.up_proj.weight
    copy = weight.clone()
    with upcast(lm.model):
        assert weight.dtype == torch.float32
    assert weight.dtype == torch.bfloat16 and torch.equal(weight, copy)
    assert lm.model.model.rotary_emb.probe.dtype == torch.float32


def _shortened_run(self: PrefixCache, thetas: torch.Tensor, last: int | None = None) -> contextlib.AbstractContextManager[torch.Tensor]:
    """The prefix cache as it was: [injector, blocks S+1..] (block S+1 at index 1)."""

    @contextlib.contextmanager
    def run() -> Iterator[torch.Tensor]:
        end = self.lm.num_layers - 1 if last is None else last
        t, d = self.hidden.shape[1:]
        self._stream.hidden = (self.hidden[None] + thetas[:, None, None, :].to(self.hidden)).reshape(-1, t, d)
        stack = nn.ModuleList([self._stand_ins[-1], *self.lm.blocks[self.layer + 1: end + 1]])
        with swapped_blocks(self.lm, stack):
            yield self.input_ids.repeat(thetas.shape[0], 1)
        self._stream.hidden = None

    return run()


def test_doctor_fails_on_a_misaligned_prefix_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PrefixCache, "run", _shortened_run)
    report = run_doctor(tiny_model("gemma2"))
    assert [c.name for c in report.failed] == ["prefix cache vs full forward"]


def test_doctor_fails_when_a_compiled_decode_step_drops_steering(monkeypatch: pytest.MonkeyPatch) -> None:
    """The generation path as it was: the model's own config (static cache, compile) was used."""
    lm = tiny_model("llama")
    config = CompileConfig(backend="eager", mode=None)
    config._compile_all_devices = True
    lm.model.generation_config.cache_implementation = "static"
    lm.model.generation_config.compile_config = config
    monkeypatch.setattr(generation, "neutral_model_defaults", lambda _lm: contextlib.nullcontext())
    monkeypatch.setattr(generation, "generation_config", lambda _lm, s: lm.model.generation_config.__class__(
        max_new_tokens=s.max_new_tokens, do_sample=False))
    ids = _prompt_ids(lm, PROMPT)
    # an unsteered completion of the same shape first (the explorer's plain answer): the decode step compiles
    generation.run_generate(lm, ids, generation.GenerationSettings(max_new_tokens=GENERATED_TOKENS), ["0"],
                            min_new_tokens=GENERATED_TOKENS)
    report = run_doctor(lm)
    assert "steering survives generation" in [c.name for c in report.failed]


def test_a_failed_check_exits_non_zero(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(PrefixCache, "run", _shortened_run)
    monkeypatch.setattr("melbo_tui.doctor._past_the_window", lambda _lm, ids: ids)
    # a Llama has no per-layer settings to misalign: break the stand-ins' output instead
    monkeypatch.setattr("melbo_tui.prefix._StandIn.forward", lambda self, h, *a, **k: self._stream.hidden * 2)
    code, out, _ = run_cli(["doctor", "--model", str(tiny_model_dir)], capsys, monkeypatch)
    assert code == 1
    assert "  FAIL  prefix cache vs full forward" in out and "result: " in out and "1 failed" in out


def test_doctor_layers_are_checked(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = run_cli(["doctor", "--model", str(tiny_model_dir), "--source-layer", "99"], capsys, monkeypatch)
    assert code == 2 and "source layer 99 is out of range" in err


@pytest.mark.slow
def test_doctor_on_gemma_3_270m(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The second real model (issue 23), installed by `bash scripts/setup.sh --test`: its first use
    converts the GGUF into the cache, after which it loads from there (`generate` starts in seconds)."""
    from melbo_tui.models import conversion_needed

    code, out, err = run_cli(["doctor", "--model", "gemma-3-270m"], capsys, monkeypatch)
    assert code == 0, out + err
    assert "model          gemma-3-270m" in out and "architecture   Gemma3ForCausalLM" in out
    assert out.count("  PASS  ") == 4 and "FAIL" not in out
    assert not conversion_needed("gemma-3-270m")
    import gguf

    from melbo_tui.models import packaged

    gemma = packaged("gemma-3-270m")
    assert gemma is not None  # the hint `export` writes for its banks is its GGUF's architecture
    assert gguf.GGUFReader(str(gemma.gguf())).get_field("general.architecture").contents() == gemma.architecture == "gemma3"
