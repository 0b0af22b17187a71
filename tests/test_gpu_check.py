"""scripts/gpu_check.sh: stops at once without CUDA; its --cpu-smoke mode runs every step end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.sh"


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would run for real")
def test_without_cuda_it_stops_at_once_with_one_line() -> None:
    done = _run([], timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert "CUDA is not available" in done.stderr and "--cpu-smoke" in done.stderr


@pytest.mark.slow
@pytest.mark.embedded
def test_cpu_smoke_runs_every_step(tmp_path: Path, embedded: object) -> None:
    done = _run(["--cpu-smoke", "--workdir", str(tmp_path)], timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [line.split("\t")[0] for line in (tmp_path / "steps.tsv").read_text().splitlines()]
    assert steps == ["build model", "doctor", "train", "ortho continuation", "ortho tokens", "ortho seed", "eval", "dump", "bench"]
    assert "0 failed" in (tmp_path / "doctor.txt").read_text()
    for name in ("train.safetensors", "ortho-continuation.safetensors", "ortho-tokens.safetensors", "ortho-seed.safetensors", "dump.txt", "bench.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "melbo-tui bench --quick" in done.stdout and "eval batched vs loop" in done.stdout
    assert "all steps passed" in done.stdout
