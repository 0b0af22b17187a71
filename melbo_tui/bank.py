"""Vector bank files: one `.safetensors` per bank, vectors plus per-vector metrics plus metadata.

Layout (format_version 1):
- tensor `vectors`: float32 `[N, d_model]`, row `base_index` is the base vector;
- optional float32 `[N]` tensors, one per `Metric`;
- optional float32 tensors `aux.<name>` of any shape: what a method keeps beside its vectors
  (DCT: `aux.u`, the output directions `[N, d_model]`);
- `__metadata__["melbo"]`: a JSON object (see `BankMeta`).

Loading never silently drops data: a NaN/inf row is an error naming its index. Writes go
through `atomic.atomic_write` so a checkpoint is always a complete bank, under the bank's
write lock (`locking.bank_lock`); a read-modify-write of a bank that another process may be
growing goes through `update_bank`, which re-reads the file under that lock.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from melbo_tui.atomic import atomic_write
from melbo_tui.errors import BankError
from melbo_tui.kinds import BankKind, Metric
from melbo_tui.locking import bank_lock

FORMAT_VERSION = 1
AUX_PREFIX = "aux."
_AUX_NAME = re.compile(r"[A-Za-z0-9_]+")


@dataclass
class BankMeta:
    """What a bank is: which model, where it steers, how it was made."""

    kind: BankKind
    model: str
    hidden_size: int
    num_layers: int
    source_layer: int
    target_layer: int
    prompts: list[str]
    system_prompt: str | None = None
    radius: float | None = None
    base_index: int = 0
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    created_by: str = ""
    created_at: str = ""
    raw_prompts: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.kind not in BankKind.__members__.values():
            raise ValueError(f"unknown bank kind {self.kind!r} (known: {', '.join(BankKind)})")
        self.kind = BankKind(self.kind)  # a plain string from JSON or a caller becomes the enum

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        extra = data.pop("extra")
        data.update(extra)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BankMeta:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("metadata is not a JSON object")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**known, extra=extra)


@dataclass
class VectorBank:
    """A stack of steering vectors `[N, d_model]`, optional metrics `[N]` and metadata."""

    vectors: torch.Tensor  # [N, d_model], float32, cpu
    meta: BankMeta
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [N]
    aux: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> float32 tensor of any shape

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.vectors.shape[1])

    def norms(self) -> torch.Tensor:
        norms: torch.Tensor = self.vectors.norm(dim=-1)
        return norms

    def fingerprint(self) -> str:
        """A short hash of the vectors alone: the same bank after `eval` rewrote its metrics keeps it."""
        data = self.vectors.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        return hashlib.sha256(data).hexdigest()[:16]


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def save_bank(bank: VectorBank, path: Path) -> None:
    """Validate and write `bank` atomically."""
    vectors = bank.vectors.detach().to("cpu", torch.float32).contiguous()
    _check_vectors(vectors, str(path))
    tensors = {"vectors": vectors}
    for name, values in bank.metrics.items():
        if name not in Metric.__members__.values():
            raise BankError(f"{path}: unknown metric '{name}'")
        values = values.detach().to("cpu", torch.float32).contiguous()  # noqa: PLW2901  (the checked copy)
        if values.shape != (vectors.shape[0],):
            raise BankError(f"{path}: metric '{name}' has shape {tuple(values.shape)}, expected ({len(vectors)},)")
        tensors[name] = values
    for name, values in bank.aux.items():
        tensors[AUX_PREFIX + name] = _checked_aux(name, values.detach().to("cpu", torch.float32).contiguous(), str(path))
    if not bank.meta.created_at:
        bank.meta.created_at = now_iso()
    metadata = {"melbo": bank.meta.to_json()}
    data = save(tensors, metadata=metadata)  # serialised first: a full disk is then a plain OSError
    with bank_lock(path):
        atomic_write(Path(path), lambda tmp: _write_bytes(tmp, data))


def update_bank(path: Path, change: Callable[[VectorBank], VectorBank]) -> VectorBank:
    """Read the bank as it is on disk now, apply `change`, write the result: all under its lock.

    For writers that worked on an older copy (eval, labels): `change` sees what another
    process (say `ortho --resume`) has appended meanwhile and must keep it. Returns what was written.
    """
    with bank_lock(path):
        bank = change(load_bank(path))
        save_bank(bank, path)
    return bank


def _write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def load_bank(path: Path) -> VectorBank:
    """Read and validate a bank; every problem is one `BankError` line."""
    path = Path(path)
    if not path.exists():
        raise BankError(f"bank file not found: {path}")
    if path.is_dir():
        raise BankError(f"bank path is a directory, expected a .safetensors file: {path}")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise BankError(f"{path}: not a readable safetensors bank ({_first_line(exc)})") from None
    if "vectors" not in tensors:
        raise BankError(f"{path}: no 'vectors' tensor in the file")
    if "melbo" not in metadata:
        raise BankError(f"{path}: no melbo metadata in the file (import seed .pt files with 'melbo-tui import')")
    try:
        meta = BankMeta.from_json(metadata["melbo"])
    except (ValueError, TypeError) as exc:
        raise BankError(f"{path}: corrupt melbo metadata ({_first_line(exc)})") from None
    vectors = tensors["vectors"]
    if vectors.dtype != torch.float32:
        raise BankError(f"{path}: 'vectors' has dtype {vectors.dtype}, expected float32")
    _check_vectors(vectors, str(path))
    metrics = {}
    for name in Metric:
        if name in tensors:
            values = tensors[name]
            if values.shape != (vectors.shape[0],) or values.dtype != torch.float32:
                raise BankError(f"{path}: metric '{name}' must be float32 [{len(vectors)}], got {values.dtype} {list(values.shape)}")
            metrics[name.value] = values
    aux = {key[len(AUX_PREFIX):]: tensors[key] for key in tensors if key.startswith(AUX_PREFIX)}
    for aux_name, values in aux.items():
        if values.dtype != torch.float32:
            raise BankError(f"{path}: aux tensor '{aux_name}' has dtype {values.dtype}, expected float32")
        _checked_aux(aux_name, values, str(path))
    if meta.hidden_size != vectors.shape[1]:
        raise BankError(f"{path}: metadata says hidden_size {meta.hidden_size} but vectors are {vectors.shape[1]} wide")
    if not 0 <= meta.base_index < len(vectors):
        raise BankError(f"{path}: base_index {meta.base_index} outside 0..{len(vectors) - 1}")
    for which, layer in (("source", meta.source_layer), ("target", meta.target_layer)):
        if not 0 <= layer < meta.num_layers:
            raise BankError(f"{path}: {which} layer {layer} outside the blocks 0..{meta.num_layers - 1} of {meta.model}")
    if meta.target_layer <= meta.source_layer:
        raise BankError(f"{path}: target layer {meta.target_layer} does not come after source layer {meta.source_layer}")
    return VectorBank(vectors=vectors, meta=meta, metrics=metrics, aux=aux)


def check_bank_fits(bank: VectorBank, hidden_size: int, num_layers: int, where: str = "bank") -> None:
    """Refuse to steer a model with a bank made for a differently shaped one."""
    if bank.hidden_size != hidden_size:
        raise BankError(
            f"{where} was made for hidden size {bank.hidden_size} ({bank.meta.model}), "
            f"but the loaded model has hidden size {hidden_size}"
        )
    for name, layer in (("source", bank.meta.source_layer), ("target", bank.meta.target_layer)):
        if not 0 <= layer < num_layers:
            raise BankError(f"{where}: {name} layer {layer} is outside the model's blocks 0..{num_layers - 1}")


def _check_vectors(vectors: torch.Tensor, where: str) -> None:
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise BankError(f"{where}: 'vectors' must be a non-empty [N, d_model] matrix, got shape {list(vectors.shape)}")
    bad = (~torch.isfinite(vectors)).any(dim=1).nonzero().flatten().tolist()
    if bad:
        shown = ", ".join(str(i) for i in bad[:10]) + (" ..." if len(bad) > 10 else "")
        raise BankError(f"{where}: {len(bad)} row(s) contain NaN or inf: {shown}")


def _checked_aux(name: str, values: torch.Tensor, where: str) -> torch.Tensor:
    if not _AUX_NAME.fullmatch(name):
        raise BankError(f"{where}: aux tensor name '{name}' must be letters, digits and underscores")
    if values.ndim == 0 or values.numel() == 0:
        raise BankError(f"{where}: aux tensor '{name}' is empty or a scalar, shape {list(values.shape)}")
    if not torch.isfinite(values).all():
        raise BankError(f"{where}: aux tensor '{name}' contains NaN or inf")
    return values


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
