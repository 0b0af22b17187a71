"""The benchmark's --quick mode runs end to end (CI), and its table renders every row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROWS = ("ortho fast vs sequential", "eval batched vs loop", "dump batched vs loop",
        "steered vs unsteered generation", "model load", "ortho evaluation GFLOP/s", "DCT (8 vectors, 2 iterations) vs MELBO",
        "explorer: key to full completion")


@pytest.mark.embedded
@pytest.mark.slow
def test_bench_quick_json(embedded: object) -> None:
    script = Path(sys.executable).parent / "melbo-tui"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "melbo_tui"]
    done = subprocess.run([*command, "bench", "--quick", "--json", "--threads", "1"], capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "MELBO_TUI_DEBUG": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    names = [row["name"] for row in report["rows"]]
    for prefix in ROWS:
        assert any(name.startswith(prefix) for name in names), (prefix, names)
    ortho = {r["name"].split("--objective ")[1].split()[0]: r for r in report["rows"] if r["name"].startswith("ortho fast vs")}
    assert set(ortho) == {"tokens", "seed"}  # both objectives, side by side
    for row in ortho.values():
        fast = row["detail"]["fast"]
        assert row["ratio"] > 0 and fast["vectors"] == report["config"]["ortho_fast_count"] == 2
        assert fast["unsteered_kl_seq"] > 0 and fast["median_kl_seq"] >= 0  # quality by behaviour over a continuation
    eval_row = next(r for r in report["rows"] if r["name"].startswith("eval"))
    assert eval_row["detail"]["max_abs_kl_difference"] < 1e-3  # batched and looped KL agree
    assert report["config"]["quick"] is True and report["machine"]["device"]
    prepared = next(r for r in report["rows"] if r["name"].startswith("explorer: key to full completion"))["detail"]
    assert 0 < prepared["prepared_s"] < prepared["cold_s"]  # a row read ahead shows before a cold one streams


def test_render_table_shows_every_row() -> None:
    from rich.console import Console

    from melbo_tui.benchmarks.bench import render_table

    report = {"model": "m", "config": {"quick": True},
              "machine": {"device": "cpu", "cpu": "x86", "threads": 2, "dtype": "float32"},
              "rows": [{"name": "a vs b", "ours": "1 s", "baseline": "3 s", "ratio": 3.0, "target": ">= 2x", "notes": "n"},
                       {"name": "load", "ours": "1 s", "baseline": "2 s", "ratio": None}]}
    console = Console(record=True, width=160)
    console.print(render_table(report))
    text = console.export_text()
    assert "a vs b" in text and "3.00x" in text and "load" in text and "--quick" in text
