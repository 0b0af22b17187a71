"""Installed, not only cloned: the wheel carries every package, the explorer's styles and the shipped banks."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_is_listed_for_installation() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "melbo_tui").rglob("__init__.py")}
    assert found | {"melbo_tui.vectors"} == listed


@pytest.mark.slow
def test_the_wheel_holds_the_shipped_banks_and_the_styles(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                           str(ROOT)], capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    names = set(zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist())
    shipped = {f"melbo_tui/vectors/{p.name}" for p in (ROOT / "vectors").iterdir() if p.suffix in (".safetensors", ".json", ".jsonl")}
    assert shipped <= names and "melbo_tui/tui/app.tcss" in names
    assert any(name.endswith(".safetensors") for name in shipped), "no shipped bank in vectors/"
