"""Reading the seed's `.pt` banks: one `[N, d_model]` tensor, row 0 the MELBO base vector.

The seed filtered its files on load (NaN rows dropped, rows of norm <= 0.1 dropped); we do the
same but say which rows went, and keep their original indices in the bank's metadata. The file
is untrusted: `torch.load(weights_only=True)` refuses any pickle that would run code.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from melbo_tui.errors import BankError

MIN_NORM = 0.1  # the seed's threshold for "this vector collapsed to zero"


@dataclass
class SeedImport:
    vectors: torch.Tensor  # [M, d_model] kept rows, fp32
    kept_rows: list[int]  # original row index of each kept row
    nan_rows: list[int]
    small_rows: list[int]
    max_abs_cos: float  # largest |cos| between kept rows (the seed asserted <= 1e-6)


def read_seed_file(path: Path) -> SeedImport:
    path = Path(path)
    if not path.is_file():
        raise BankError(f"seed file not found: {path}")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe pickle"
        raise BankError(f"refused {path}: not a plain tensor file, weights_only=True rejected it ({reason[:200]})") from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, zip errors... all mean "corrupt"
        raise BankError(f"{path}: cannot read as a torch .pt file ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(data, torch.Tensor) or data.ndim != 2 or data.shape[0] == 0:
        shape = list(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
        raise BankError(f"{path}: expected one [N, d_model] tensor, found {shape}")
    vectors = data.float()
    nan_rows = (~torch.isfinite(vectors)).any(dim=1).nonzero().flatten().tolist()
    norms = torch.nan_to_num(vectors, nan=0.0, posinf=0.0, neginf=0.0).norm(dim=1)
    small_rows = [i for i in (norms <= MIN_NORM).nonzero().flatten().tolist() if i not in set(nan_rows)]
    dropped = set(nan_rows) | set(small_rows)
    if 0 in dropped:
        raise BankError(f"{path}: row 0 (the base vector) is NaN or ~0; nothing to import")
    kept = [i for i in range(vectors.shape[0]) if i not in dropped]
    kept_vectors = vectors[kept]
    units = kept_vectors / kept_vectors.norm(dim=1, keepdim=True)
    cos = units @ units.T
    cos.fill_diagonal_(0.0)
    return SeedImport(kept_vectors, kept, nan_rows, small_rows, float(cos.abs().max()) if len(kept) > 1 else 0.0)
