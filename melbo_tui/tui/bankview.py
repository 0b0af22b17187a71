"""One open bank as the explorer sees it: vectors, labels, and metric columns as plain floats.

Norm and cosine to the base vector need no model and are computed on load; KL needs the
model and arrives later (`set_metric`) unless the bank file already carries it. A missing
value is NaN and shows as a dash.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from melbo_tui.errors import BankError

if TYPE_CHECKING:
    from melbo_tui.bank import VectorBank

COLUMNS = ("kl", "kl_rev", "norm", "cos_base")
NAN = float("nan")


@dataclass
class BankView:
    path: Path
    bank: VectorBank
    digest: str  # sha256 of the file: the completion cache key
    labels: list[str]
    values: dict[str, list[float]] = field(default_factory=dict)  # column -> [N]

    @property
    def name(self) -> str:
        return self.path.name

    def __len__(self) -> int:
        return len(self.bank)

    @property
    def base_index(self) -> int:
        return self.bank.meta.base_index

    def has(self, column: str) -> bool:
        return any(not math.isnan(v) for v in self.values.get(column, []))

    def value(self, column: str, row: int) -> float:
        return self.values[column][row]

    def set_metric(self, column: str, values: list[float]) -> None:
        if len(values) != len(self):
            raise BankError(f"metric '{column}' has {len(values)} values for {len(self)} rows")
        self.values[column] = [float(v) for v in values]


def open_bank_view(path: Path) -> BankView:
    """Load and validate a bank file (imports torch; call it from a worker)."""
    from melbo_tui.bank import load_bank

    path = Path(path)
    bank = load_bank(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    view = BankView(path=path, bank=bank, digest=digest, labels=read_labels(path, len(bank)))
    vectors = bank.vectors  # [N, d_model]
    norms = vectors.norm(dim=-1)  # [N]
    base = vectors[bank.meta.base_index]
    cos = (vectors @ base) / (norms * base.norm()).clamp_min(1e-12)  # [N]
    for name in COLUMNS:
        stored = bank.metrics.get(name)
        if stored is not None:
            view.values[name] = [float(v) for v in stored.tolist()]
        elif name == "norm":
            view.values[name] = [float(v) for v in norms.tolist()]
        elif name == "cos_base":
            view.values[name] = [float(v) for v in cos.tolist()]
        else:
            view.values[name] = [NAN] * len(bank)
    return view


def labels_path_candidates(path: Path) -> list[Path]:
    """`bank.safetensors` -> `bank.labels.json`, also accepting `bank.safetensors.labels.json`."""
    return [path.with_name(path.stem + ".labels.json"), path.with_name(path.name + ".labels.json")]


def read_labels(path: Path, n: int) -> list[str]:
    """Row labels from the sidecar file, blank where it is absent or says nothing."""
    for candidate in labels_path_candidates(path):
        if not candidate.is_file():
            continue
        try:
            data = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BankError(f"{candidate}: unreadable labels file ({exc})") from None
        labels = data.get("labels") if isinstance(data, dict) else None
        if not isinstance(labels, list):
            raise BankError(f"{candidate}: expected a JSON object {{\"labels\": [...]}}")
        out = ["" if v is None else str(v) for v in labels[:n]]
        return out + [""] * (n - len(out))
    return [""] * n
