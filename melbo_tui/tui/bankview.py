"""One open bank as the explorer sees it: vectors, labels, and metric columns as plain floats.

Columns are `melbo_tui.bank.Metric` names: whatever the bank file stores, plus norm and cosine to
the base (no model needed, computed on load), plus what the explorer measures later
(`set_metric`). A missing value is NaN and shows as a dash. The KL column shown first is the one
that means something for the bank's kind (`melbo_tui.bank.default_kl`): KL to the base for
MELBO-ortho banks (the multi-token `kl_seq`, or the stored last-token `kl` while a bank lacks it),
KL to the unsteered model for MELBO banks, whose row 0 is no reference.

Every model-made value remembers the prompt it was measured on, and every label what its
completion was made on (`labels.MadeOn`), so the explorer can say when that is not the prompt
being completed. Labels of completions the explorer made itself (`live_labels`, on the
settings `live_on`) stand beside the file's: they are what a row's label is on another prompt.
The unsteered model's value of each column, where it is known, is the value a row must beat.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from melbo_tui.errors import BankError
from melbo_tui.labels import DEFAULT_RULES, MadeOn

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
    unsteered: dict[str, float] = field(default_factory=dict)  # Metric name -> no vector's value, on measured_on's prompt
    labels_made_on: MadeOn | None = None  # what the file's labels describe
    label_rules: list[dict[str, Any]] = field(default_factory=lambda: [dict(r) for r in DEFAULT_RULES])
    live_labels: dict[int, str] = field(default_factory=dict)  # row -> label of a completion made here, on `live_on`
    live_on: MadeOn | None = None  # the settings being completed now

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

    def set_metric(self, column: str, values: list[float], prompt: str | None = None, unsteered: float | None = None) -> None:
        if len(values) != len(self):
            raise BankError(f"metric '{column}' has {len(values)} values for {len(self)} rows")
        self.values[column] = [float(v) for v in values]
        if prompt is not None:
            self.measured_on[column] = prompt
        if unsteered is not None:
            self.unsteered[column] = float(unsteered)
        else:
            self.unsteered.pop(column, None)  # a bar from another measurement would not be this one's

    def bar(self, column: str) -> float | None:
        """The value a row must beat in `column` (lower is better there): what no vector scores.

        Only where the base row is a reference (KL and err to theta0): in a MELBO, DCT or
        Jacobian bank row 0 is just another vector, and KL to it has no bar.
        """
        if not self.kind.has_base or not self.has(column):
            return None
        if column == "err":
            return 1.0  # err is already relative to no steering
        return self.unsteered.get(column) if column in ("kl", "kl_rev", "kl_seq") else None

    def beats(self, column: str, row: int) -> bool:
        """Row `row` is closer to the base than no vector, in `column` (never for the base itself)."""
        bar = self.bar(column)
        value = self.value(column, row)
        return bar is not None and row != self.base_index and not math.isnan(value) and value < bar

    # ----- labels ------------------------------------------------------------------------

    def label(self, row: int) -> tuple[str, bool]:
        """The label to show for `row`, and whether it describes a completion on the settings completed now.

        The file's label where it was made on these settings, else one made here on them, else the
        file's (not current: the list marks it).
        """
        own = self.labels[row]
        if own and (self.live_on is None or self.labels_made_on == self.live_on):
            return own, True
        if row in self.live_labels:
            return self.live_labels[row], True
        return own, not own

    def label_text(self, row: int) -> str:
        return self.label(row)[0]

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
    labels, made_on, rules = read_label_file(path, len(bank))
    meta = bank.meta
    view = BankView(path=path, bank=bank, digest=digest, labels=labels, label_rules=rules,
                    labels_made_on=made_on or MadeOn(meta.prompts[0] if meta.prompts else "", meta.system_prompt, meta.raw_prompts))
    vectors = bank.vectors  # [N, d_model]
    norms = vectors.norm(dim=-1)  # [N]
    base = vectors[bank.meta.base_index]
    cos = (vectors @ base) / (norms * base.norm()).clamp_min(1e-12)  # [N]
    view.values[Metric.NORM.value] = [float(v) for v in norms.tolist()]
    view.values[Metric.COS_BASE.value] = [float(v) for v in cos.tolist()]
    stored_on = stored_metrics_prompt(bank)
    record = bank.meta.extra.get("eval")
    unsteered = record.get("unsteered", {}) if isinstance(record, dict) else {}
    for metric in Metric:
        stored = bank.metrics.get(metric.value)
        if stored is not None:
            view.values[metric.value] = [float(v) for v in stored.tolist()]
            if metric.needs_model and stored_on is not None:
                view.measured_on[metric.value] = stored_on
            if isinstance(unsteered, dict) and isinstance(unsteered.get(metric.value), int | float):
                view.unsteered[metric.value] = float(unsteered[metric.value])
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


def read_label_file(path: Path, n: int) -> tuple[list[str], MadeOn | None, list[dict[str, Any]]]:
    """Row labels from the sidecar file (blank where it is absent or says nothing), what they were
    made on, and the rules that made them (the default rules when the file names none)."""
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
        rules = data.get("rules")
        usable = isinstance(rules, list) and rules and all(isinstance(r, dict) for r in rules)
        return (out + [""] * (n - len(out)), MadeOn.from_record(data.get("made_on")),
                [dict(r) for r in rules] if usable else [dict(r) for r in DEFAULT_RULES])
    return [""] * n, None, [dict(r) for r in DEFAULT_RULES]


def read_labels(path: Path, n: int) -> list[str]:
    """Row labels from the sidecar file, blank where it is absent or says nothing."""
    return read_label_file(path, n)[0]
