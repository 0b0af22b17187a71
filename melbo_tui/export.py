"""Export a vector (or a composition of vectors) as a llama.cpp control-vector GGUF.

Layout (the one repeng and llama.cpp's cvector-generator write):
- `general.architecture = "controlvector"`, `controlvector.model_hint` (cosmetic: the
  architecture of the model the bank was made with, e.g. `llama`, as llama.cpp's own
  cvector-generator writes it), `controlvector.layer_count` (number of direction tensors);
- one 1-D float32 tensor `direction.{k}` of length d_model per steered layer.

Layer mapping (checked against llama.cpp's `common_control_vector_load_one` and the model graphs):
the data of `direction.k` lands in the control vector's tensor k and `build_cvec(cur, k)` adds it
right after the final residual add of block k (0-based), at every position, prompt included.
That is exactly our convention (layer S = the output of decoder block S), so a bank with source
layer S exports as `direction.{S}`, unchanged. llama.cpp rejects `direction.0` (block 0's output
cannot be steered there), so banks with source layer 0 cannot be exported. llama.cpp applies the
vector as is, times SCALE in `--control-vector-scaled FILE:SCALE` (1.0 reproduces our steering;
`--control-vector FILE` is scale 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from melbo_tui.atomic import atomic_write
from melbo_tui.bank import VectorBank
from melbo_tui.compose import Composition, compose
from melbo_tui.errors import InputError

ARCHITECTURE = "controlvector"


def tensor_name(layer: int) -> str:
    """The GGUF tensor name llama.cpp adds to the output of block `layer`."""
    if layer < 1:
        raise InputError(f"llama.cpp control vectors cannot steer the output of block {layer} (direction.0 is rejected)")
    return f"direction.{layer}"


def export_gguf(bank: VectorBank, composition: Composition, path: Path, model_hint: str | None = None) -> torch.Tensor:
    """Write the composed vector of `bank` to `path` (atomically); returns it `[d_model]`."""
    name = tensor_name(bank.meta.source_layer)
    vector = compose(bank.vectors, composition).float()
    if not torch.isfinite(vector).all():
        raise InputError(f"the composed vector {composition.label} is not finite")
    write_control_vector(path, {name: vector}, model_hint or _hint(bank))
    return vector


def write_control_vector(path: Path, directions: dict[str, torch.Tensor], model_hint: str) -> None:
    import gguf

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), ARCHITECTURE)
        writer.add_string(f"{ARCHITECTURE}.model_hint", model_hint)
        writer.add_uint32(f"{ARCHITECTURE}.layer_count", len(directions))
        for name, vector in directions.items():
            writer.add_tensor(name, vector.detach().cpu().numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    atomic_write(Path(path), write)


def read_control_vector(path: Path) -> tuple[dict[str, str | int], dict[str, np.ndarray]]:
    """(metadata, {tensor name: float32 [d_model]}) of a control-vector GGUF."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    meta: dict[str, str | int] = {}
    for key in ("general.architecture", f"{ARCHITECTURE}.model_hint", f"{ARCHITECTURE}.layer_count"):
        field = reader.get_field(key)
        if field is not None:
            meta[key] = field.contents()
    tensors = {t.name: np.array(t.data, dtype=np.float32).reshape(-1) for t in reader.tensors}
    return meta, tensors


def _hint(bank: VectorBank) -> str:
    """The architecture's name, as llama.cpp's cvector-generator writes it: exact for a packaged model
    (its GGUF's), else the HF `model_type` the bank's provenance records (the same name for most
    architectures, e.g. llama, qwen2), else (a bank from before either) the model's name."""
    from melbo_tui.models import packaged

    model = packaged(bank.meta.model)
    if model is not None:
        return model.architecture
    provenance = bank.meta.extra.get("provenance")
    recorded = provenance.get("model_type") if isinstance(provenance, dict) else None
    return str(recorded or bank.meta.model)
