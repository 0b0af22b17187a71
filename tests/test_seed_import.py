"""The seed's .pt banks: filtered as the seed did, reported by index; unsafe pickles refused."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from melbo_tui.errors import BankError
from melbo_tui.seed_import import read_seed_file


def orthogonal_rows(n: int, d: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(d, n))
    return q.T * 7.0


def test_nan_and_tiny_rows_are_dropped_and_named(tmp_path: Path) -> None:
    vectors = orthogonal_rows(6, 16)
    vectors[2] = float("nan")
    vectors[4] = vectors[4] / vectors[4].norm() * 0.05
    path = tmp_path / "this one gives python code-0-RUN-2.pt"
    torch.save(vectors, path)
    result = read_seed_file(path)
    assert result.nan_rows == [2] and result.small_rows == [4]
    assert result.kept_rows == [0, 1, 3, 5]
    assert torch.equal(result.vectors, vectors[[0, 1, 3, 5]])
    assert result.max_abs_cos < 1e-5


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch pwned-by-pickle",))


def test_a_pickle_that_runs_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump(_Evil(), handle)
    torch.save({"x": _Evil()}, tmp_path / "evil2.pt")
    for file in (path, tmp_path / "evil2.pt"):
        with pytest.raises(BankError, match="refused|cannot read"):
            read_seed_file(file)
    assert not (tmp_path / "pwned-by-pickle").exists()


def test_wrong_contents(tmp_path: Path) -> None:
    torch.save({"vectors": torch.zeros(3, 4)}, tmp_path / "dict.pt")
    with pytest.raises(BankError, match=r"expected one \[N, d_model\] tensor"):
        read_seed_file(tmp_path / "dict.pt")
    bad_base = orthogonal_rows(3, 8)
    bad_base[0] = 0.0
    torch.save(bad_base, tmp_path / "zero-base.pt")
    with pytest.raises(BankError, match="row 0"):
        read_seed_file(tmp_path / "zero-base.pt")
    with pytest.raises(BankError, match="not found"):
        read_seed_file(tmp_path / "missing.pt")
