"""`bench` holds one model copy at a time (a second copy of a large model does not fit a GPU)."""

from __future__ import annotations

import gc
import weakref
from dataclasses import replace
from pathlib import Path

import pytest

from melbo_tui.benchmarks.bench import BenchConfig, run_bench
from melbo_tui.models import LoadedModel, ModelRequest


@pytest.mark.slow
def test_bench_never_holds_two_models(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    alive: list[weakref.ref[LoadedModel]] = []
    overlaps: list[int] = []
    real = ModelRequest.load

    def load(self: ModelRequest) -> LoadedModel:
        gc.collect()
        overlaps.append(sum(ref() is not None for ref in alive))
        lm = real(self)
        alive.append(weakref.ref(lm))
        return lm

    monkeypatch.setattr(ModelRequest, "load", load)
    config = replace(BenchConfig.for_ci(), ortho_fast_count=2, ortho_steps=4, eval_vectors=4,
                     dump_vectors=2, dump_tokens=2, gen_tokens=2, matmul_size=64)
    report = run_bench(config, ModelRequest(str(tiny_model_dir), device="cpu", trust_remote_code=True))
    # the load row's reload and the explorer's (prepared vs cold row) each came after the copy before was freed
    assert overlaps == [0, 0, 0]
    assert report["model"] == str(tiny_model_dir)
    assert any(row["name"].startswith("model load") for row in report["rows"])
