"""melbo-tui: find, measure and explore banks of steering vectors (MELBO, MELBO-ortho) for causal LMs.

The public API is flat (`import melbo_tui as mt`; see `melbo_tui.api` for a notebook example):
load or wrap a model, train MELBO vectors, find orthogonal vectors, measure them, steer and
generate, read and write banks. Tensors in, tensors out; nothing here imports Textual, typer or
plotext, and torch itself is imported on first use, so `import melbo_tui` stays instant for the
explorer's first frame. Faces: `melbo_tui.cli` (typer) and `melbo_tui.tui` (Textual).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "load_model": "melbo_tui.models",
    "LoadedModel": "melbo_tui.models",
    "ModelRequest": "melbo_tui.models",
    "wrap_model": "melbo_tui.api",
    "train_melbo": "melbo_tui.api",
    "find_orthogonal": "melbo_tui.api",
    "bank_metrics": "melbo_tui.api",
    "generate": "melbo_tui.api",
    "train_dct": "melbo_tui.api",
    "power_steering": "melbo_tui.api",
    "calibrate": "melbo_tui.api",
    "ablate": "melbo_tui.ablation",
    "MelboConfig": "melbo_tui.melbo",
    "OrthoConfig": "melbo_tui.ortho",
    "DCTConfig": "melbo_tui.dct",
    "JacobianConfig": "melbo_tui.jacobian",
    "MelboCalibration": "melbo_tui.calibration",
    "encode": "melbo_tui.prompts",
    "steer": "melbo_tui.steering",
    "compose": "melbo_tui.compose",
    "Composition": "melbo_tui.compose",
    "ComposeMode": "melbo_tui.compose",
    "VectorBank": "melbo_tui.bank",
    "BankMeta": "melbo_tui.bank",
    "BankKind": "melbo_tui.kinds",
    "Metric": "melbo_tui.kinds",
    "load_bank": "melbo_tui.bank",
    "save_bank": "melbo_tui.bank",
    "SinkRule": "melbo_tui.sink",
    "Objective": "melbo_tui.kinds",
    "Strategy": "melbo_tui.kinds",
    "MelboError": "melbo_tui.errors",
}

__all__ = [
    "BankKind",
    "BankMeta",
    "ComposeMode",
    "Composition",
    "DCTConfig",
    "JacobianConfig",
    "LoadedModel",
    "MelboCalibration",
    "MelboConfig",
    "MelboError",
    "Metric",
    "ModelRequest",
    "Objective",
    "OrthoConfig",
    "SinkRule",
    "Strategy",
    "VectorBank",
    "ablate",
    "bank_metrics",
    "calibrate",
    "compose",
    "encode",
    "find_orthogonal",
    "generate",
    "load_bank",
    "load_model",
    "power_steering",
    "save_bank",
    "steer",
    "train_dct",
    "train_melbo",
    "wrap_model",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'melbo_tui' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the lazy __getattr__ above does this
    from melbo_tui.ablation import ablate
    from melbo_tui.api import bank_metrics, calibrate, find_orthogonal, generate, power_steering, train_dct, train_melbo, wrap_model
    from melbo_tui.bank import BankMeta, VectorBank, load_bank, save_bank
    from melbo_tui.calibration import MelboCalibration
    from melbo_tui.compose import ComposeMode, Composition, compose
    from melbo_tui.dct import DCTConfig
    from melbo_tui.errors import MelboError
    from melbo_tui.jacobian import JacobianConfig
    from melbo_tui.kinds import BankKind, Metric, Objective, Strategy
    from melbo_tui.melbo import MelboConfig
    from melbo_tui.models import LoadedModel, ModelRequest, load_model
    from melbo_tui.ortho import OrthoConfig
    from melbo_tui.prompts import encode
    from melbo_tui.sink import SinkRule
    from melbo_tui.steering import steer
