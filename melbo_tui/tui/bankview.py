"""One open bank as the explorer sees it: vectors, labels, and metric columns as plain floats.

Columns are `melbo_tui.bank.Metric` names: whatever the bank file stores, plus norm and cosine to
the base (no model needed, computed on load), plus what the explorer measures later
(`set_metric`). A missing value is NaN and shows as a dash. The KL column shown first is the one
that means something for the bank's kind (`melbo_tui.bank.default_kl`): KL to the base for
MELBO-ortho banks (the multi-token `kl_seq`, or the stored last-token `kl` while a bank lacks it),
KL to the unsteered model for MELBO banks, whose row 0 is no reference.

Every model-made value remembers the prompt it was measured on, so the explorer can say when
that is not the prompt being completed.
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
    from melbo_tui.kinds import BankKind

NAN = float("nan")
# short column titles; the rest show their Metric name
TITLES = {"kl": "KL", "kl_rev": "KL-rev", "kl_seq": "KL-seq", "kl_unsteered": "KL-unst", "cos_base": "cos", "sigma": "σ"}
# alternative spellings a filter accepts
ALIASES = {"cos": "cos_base", "klrev": "kl_rev", "kl-rev": "kl_rev", "klseq": "kl_seq", "kl-seq": "kl_seq",
           "kl_unst": "kl_unsteered", "kl-unst": "kl_unsteered", "klunst": "kl_unsteered"}


def title(column: str) -> str:
    return TITLES.get(column, column)


@dataclass
class BankView:
    path: Path
    bank: VectorBank
    digest: str  # sha256 of the file: the completion cache key
    labels: list[str]
    values: dict[str, list[float]] = field(default_factory=dict)  # Metric name -> [N]
    measured_on: dict[str, str] = field(default_factory=dict)  # Metric name -> prompt (model-made columns only)

    @property
    def name(self) -> str:
        return self.path.name

    def __len__(self) -> int:
        return len(self.bank)

    @property
    def base_index(self) -> int:
        return self.bank.meta.base_index

    @property
    def kind(self) -> BankKind:
        return self.bank.meta.kind

    @property
    def kl_column(self) -> str:
        """The KL worth reading first for this kind (see the module docstring)."""
        from melbo_tui.kinds import Metric, default_kl

        preferred = default_kl(self.kind)
        if preferred == Metric.KL_SEQ and not self.has(preferred):
            return Metric.KL.value  # the last-token KL to the same base, until the bank has kl_seq
        return preferred.value

    def columns(self) -> list[str]:
        """Metric columns to show: the default KL first (dashes until measured), then every one with values."""
        from melbo_tui.kinds import Metric

        first = self.kl_column
        return [first] + [m.value for m in Metric if m.value != first and self.has(m.value)]

    def has(self, column: str) -> bool:
        return any(not math.isnan(v) for v in self.values.get(column, ()))

    def value(self, column: str, row: int) -> float:
        values = self.values.get(column)
        return values[row] if values is not None else NAN

    def set_metric(self, column: str, values: list[float], prompt: str | None = None) -> None:
        if len(values) != len(self):
            raise BankError(f"metric '{column}' has {len(values)} values for {len(self)} rows")
        self.values[column] = [float(v) for v in values]
        if prompt is not None:
            self.measured_on[column] = prompt

    def prompt_of(self, column: str) -> str | None:
        """The prompt a model-made column was measured on (None for norm, cos and columns without values)."""
        return self.measured_on.get(column) if self.has(column) else None


def open_bank_view(path: Path) -> BankView:
    """Load and validate a bank file (imports torch; call it from a worker)."""
    from melbo_tui.bank import load_bank
    from melbo_tui.kinds import Metric

    path = Path(path)
    bank = load_bank(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    view = BankView(path=path, bank=bank, digest=digest, labels=read_labels(path, len(bank)))
    vectors = bank.vectors  # [N, d_model]
    norms = vectors.norm(dim=-1)  # [N]
    base = vectors[bank.meta.base_index]
    cos = (vectors @ base) / (norms * base.norm()).clamp_min(1e-12)  # [N]
    view.values[Metric.NORM.value] = [float(v) for v in norms.tolist()]
    view.values[Metric.COS_BASE.value] = [float(v) for v in cos.tolist()]
    stored_on = stored_metrics_prompt(bank)
    for metric in Metric:
        stored = bank.metrics.get(metric.value)
        if stored is not None:
            view.values[metric.value] = [float(v) for v in stored.tolist()]
            if metric.needs_model and stored_on is not None:
                view.measured_on[metric.value] = stored_on
    return view


def stored_metrics_prompt(bank: VectorBank) -> str | None:
    """The prompt the file's metrics were measured on: `eval`'s record, else the bank's first prompt."""
    record = bank.meta.extra.get("eval")
    if isinstance(record, dict) and isinstance(record.get("prompt"), str):
        return str(record["prompt"])
    return bank.meta.prompts[0] if bank.meta.prompts else None


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
