"""Long runs that write a bank file: checkpoints, resume and the bank's record, for the CLI and the explorer.

The algorithms (`melbo.train`, `ortho.search`) take tensors and give tensors; a job adds the file:
it starts or resumes a bank, refuses to resume one made with other settings, and saves a whole
bank (atomically) after every MELBO batch or ortho vector, so Ctrl-C, a crash or `should_stop`
loses at most the vector in progress.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from melbo_tui.bank import BankMeta, VectorBank, load_bank, save_bank, update_bank
from melbo_tui.errors import BankError, InputError
from melbo_tui.kinds import BankKind
from melbo_tui.locking import bank_lock
from melbo_tui.melbo import MelboConfig, TrainProgress, train
from melbo_tui.models import LoadedModel, check_resume_provenance
from melbo_tui.ortho import FoundVector, OrthoConfig, OrthoProgress, hyperparameters, search
from melbo_tui.prompts import encode
from melbo_tui.scale import ModelScale, model_scale
from melbo_tui.sink import SinkMode, SinkReport, SinkRule

StopFn = Callable[[], bool]


def check_resumable(out: Path, bank: VectorBank, lm: LoadedModel, settings: dict[str, Any]) -> None:
    """Refuse, in one line naming the first setting that differs, to continue `bank` (the file `out`)
    with another model, dtype, hub commit or any of `settings` (name -> what this run asks)."""
    meta = bank.meta
    recorded = {"kind": meta.kind, "model": meta.model, "hidden_size": bank.hidden_size, "source_layer": meta.source_layer,
                "target_layer": meta.target_layer, "prompts": list(meta.prompts), "system": meta.system_prompt,
                "raw": meta.raw_prompts, "radius": meta.radius, **meta.hyperparameters}
    wanted = {"model": lm.name, "hidden_size": lm.hidden_size, **settings}
    for key, value in wanted.items():
        if recorded.get(key) != value:
            raise BankError(f"cannot resume {out}: it was made with {key} {_shown(recorded.get(key))}, this run asks "
                            f"{_shown(value)}")
    check_resume_provenance(meta.extra.get("provenance"), lm, str(out))


def _shown(value: Any) -> str:
    text = repr(value.value if isinstance(value, BankKind) else value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- MELBO ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MelboRun:
    bank: VectorBank
    new: int  # vectors trained by this call
    complete: bool  # every vector asked for is in the bank


def melbo_bank(lm: LoadedModel, config: MelboConfig, vectors: torch.Tensor, prompts: list[str],
               system: str | None, raw: bool, created_by: str, scale: ModelScale | None = None) -> VectorBank:
    """A `melbo` bank of `vectors  # [n, d_model]` recording how they were trained (`scale`: measured once per run)."""
    hyper = asdict(config)
    for key in ("source_layer", "target_layer", "radius"):
        hyper.pop(key)
    hyper.update(lr=config.effective_lr(lm.hidden_size), optimizer="AdamW", betas=[0.9, 0.98], weight_decay=0.0,
                 amsgrad=True, norm_axis="hidden", sink=config.sink.record())
    meta = BankMeta(
        kind=BankKind.MELBO, model=lm.name, hidden_size=lm.hidden_size, num_layers=lm.num_layers,
        source_layer=config.source_layer, target_layer=config.target_layer, prompts=list(prompts),
        system_prompt=system, radius=config.radius, base_index=0, hyperparameters=hyper,
        created_by=created_by, raw_prompts=raw or not lm.has_chat_template,
        extra={"complete": len(vectors) >= config.num_vectors, "provenance": lm.provenance(),
               "scale": (scale or model_scale(lm, config.source_layer)).record()},
    )
    return VectorBank(vectors=vectors.float().cpu(), meta=meta)


def run_melbo(
    lm: LoadedModel,
    config: MelboConfig,
    prompts: list[str],
    out: Path,
    *,
    system: str | None = None,
    raw: bool = False,
    resume: bool = False,
    created_by: str = "",
    on_progress: Callable[[TrainProgress], None] | None = None,
    should_stop: StopFn | None = None,
    on_sink: Callable[[SinkReport], None] | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> MelboRun:
    """Train MELBO vectors into the bank file `out`, saved after every batch; `resume` continues it.

    `on_checkpoint` hears the number of vectors in the file after each save.
    """
    config.check(lm)
    out = Path(out)
    done = _melbo_resume(out, lm, config, prompts) if resume else None
    if out.exists() and not resume:
        raise BankError(f"{out} exists: continue it with `resume`, or choose another `out`")

    scale = model_scale(lm, config.source_layer)  # one forward, not one per checkpoint

    def checkpoint(vectors: torch.Tensor) -> None:
        save_bank(melbo_bank(lm, config, vectors, prompts, system, raw, created_by, scale), out)
        if on_checkpoint is not None:
            on_checkpoint(len(vectors))

    vectors = train(lm, config, [encode(lm, p, system, raw) for p in prompts], on_progress=on_progress,
                    should_stop=should_stop, done=done, on_batch=checkpoint, on_sink=on_sink)
    already = 0 if done is None else len(done)
    return MelboRun(melbo_bank(lm, config, vectors, prompts, system, raw, created_by, scale), len(vectors) - already,
                    len(vectors) >= config.num_vectors)


def _melbo_resume(out: Path, lm: LoadedModel, config: MelboConfig, prompts: list[str]) -> torch.Tensor | None:
    if not out.exists():
        return None
    bank = load_bank(out)
    check_resumable(out, bank, lm, {"kind": BankKind.MELBO, "source_layer": config.source_layer,
                                    "target_layer": config.target_layer, "radius": config.radius, "prompts": list(prompts),
                                    "seed": config.seed, "batch_vectors": config.batch_vectors, "steps": config.steps})
    if not config.sink.same_positions(bank.meta.hyperparameters.get("sink", SinkRule(SinkMode.KEEP).record())):
        raise BankError(f"cannot resume {out}: it was made with another sink rule")
    if len(bank) >= config.num_vectors:
        raise InputError(f"cannot resume {out}: it already holds {len(bank)} vectors (`num_vectors` {config.num_vectors})")
    return bank.vectors


# --- MELBO-ortho ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrthoSource:
    """Where theta0 comes from (a row of a parent bank) and what to optimise on."""

    parent: VectorBank
    parent_path: str
    base_index: int
    prompts: list[str]
    system: str | None = None
    raw: bool = False


@dataclass(frozen=True)
class OrthoRun:
    bank: VectorBank
    found: int  # orthogonal vectors in the bank (rows 1..found)
    new: int  # of which found by this call
    seconds: float  # wall time of this call's optimisation
    stopped: bool  # should_stop fired
    collapsed_norm: float | None  # the norm that ended the run, when the next vector collapsed
    out: Path

    @property
    def summary(self) -> str:
        if self.stopped:
            if not self.found:
                return "stopped before the first vector: nothing saved"
            return f"stopped: {self.found} orthogonal vectors saved in {self.out}"
        if self.collapsed_norm is not None:
            return (f"collapsed: vector {self.found + 1} has norm {self.collapsed_norm:.3g}; "
                    f"stopped with {self.found} vectors in {self.out}")
        return f"{self.found} orthogonal vectors in {self.out}"


def run_ortho(
    lm: LoadedModel,
    source: OrthoSource,
    config: OrthoConfig,
    out: Path,
    *,
    resume: bool = False,
    created_by: str = "",
    on_progress: Callable[[OrthoProgress], None] | None = None,
    should_stop: StopFn | None = None,
    on_sink: Callable[[SinkReport], None] | None = None,
) -> OrthoRun:
    """MELBO-ortho from row `base_index` of the parent bank into the bank file `out`, saved after every vector.

    Nothing is written before the first vector is found: a run stopped earlier leaves no file
    (a bank of theta0 alone would say nothing, and a resume of it is a fresh start anyway).
    """
    parent = source.parent
    config.check(lm.hidden_size)
    if not 0 <= source.base_index < len(parent):
        raise InputError(f"`base_index` {source.base_index} is out of range: {source.parent_path} has rows 0..{len(parent) - 1}")
    theta0 = parent.vectors[source.base_index].float()
    if not float(theta0.norm()) > 0:
        raise InputError(f"row {source.base_index} of {source.parent_path} is the zero vector")
    cfg = config.resolved(float(theta0.norm()))
    out = Path(out)
    bank = _ortho_bank(lm, source, cfg, theta0, out, resume, created_by)
    found = len(bank) - 1
    if found >= cfg.count:
        return OrthoRun(bank, found, 0, 0.0, False, None, out)
    holder = [bank]

    def checkpoint(vector: FoundVector) -> None:
        holder[0] = _append(holder[0], vector)
        save_bank(holder[0], out)

    inputs = [encode(lm, p, source.system, source.raw) for p in source.prompts]
    result = search(lm, theta0, inputs, source_layer=parent.meta.source_layer, target_layer=parent.meta.target_layer,
                    config=cfg, done=bank.vectors[1:], on_vector=checkpoint, on_progress=on_progress,
                    should_stop=should_stop, on_sink=on_sink)
    bank = holder[0]
    return OrthoRun(bank, len(bank) - 1, len(result.vectors), result.seconds, result.stopped, result.collapsed_norm, out)


def _ortho_bank(lm: LoadedModel, source: OrthoSource, cfg: OrthoConfig, theta0: torch.Tensor,
                out: Path, resume: bool, created_by: str) -> VectorBank:
    hyper = hyperparameters(cfg)
    if resume and out.exists():
        bank = load_bank(out)
        _check_ortho_resumable(bank, lm, source, theta0, hyper, out)
        return bank
    if out.exists():
        raise BankError(f"{out} exists: continue it with `resume`, or choose another `out`")
    pm = source.parent.meta
    meta = BankMeta(
        kind=BankKind.ORTHO, model=lm.name, hidden_size=lm.hidden_size, num_layers=lm.num_layers,
        source_layer=pm.source_layer, target_layer=pm.target_layer, prompts=list(source.prompts),
        system_prompt=source.system, radius=float(theta0.norm()), base_index=0, hyperparameters=hyper,
        created_by=created_by, raw_prompts=source.raw or not lm.has_chat_template,
        extra={"parent_bank": source.parent_path, "parent_row": source.base_index, "parent_model": pm.model,
               "ortho_loss": [0.0], "ortho_steps": [0], "provenance": lm.provenance()},
    )
    return VectorBank(vectors=theta0[None].clone(), meta=meta)


def _check_ortho_resumable(bank: VectorBank, lm: LoadedModel, source: OrthoSource, theta0: torch.Tensor,
                           hyper: dict[str, Any], out: Path) -> None:
    check_resumable(out, bank, lm, {"kind": BankKind.ORTHO, "prompts": list(source.prompts), "system": source.system,
                                    **hyper})
    if not torch.equal(bank.vectors[0], theta0):
        raise BankError(f"cannot resume {out}: its row 0 is not row {source.base_index} of {source.parent_path}")


def _append(bank: VectorBank, vector: FoundVector) -> VectorBank:
    """`bank` plus one row. Its metrics (and the record of their evaluation) are dropped: they would cover
    one row fewer than the bank; `eval`, or the end of `ortho`, measures every row again."""
    extra = dict(bank.meta.extra)
    extra.pop("eval", None)
    extra["ortho_loss"] = [*extra.get("ortho_loss", []), vector.loss]
    extra["ortho_steps"] = [*extra.get("ortho_steps", []), vector.steps]
    return VectorBank(vectors=torch.cat([bank.vectors, vector.theta[None]]), meta=replace(bank.meta, extra=extra))


# --- how long a run will take -------------------------------------------------------------------

PROBE_STEPS = 4  # optimiser steps timed by an estimate


def estimate_ortho(lm: LoadedModel, source: OrthoSource, config: OrthoConfig) -> float:
    """Seconds per vector that `run_ortho(lm, source, config, ...)` will take here, timed, not guessed.

    A few real evaluations of the first vector's objective are timed between progress reports,
    so the set-up paid once per run (blocks 0..S, the sink rule) is left out, and the time per
    evaluation is multiplied by the evaluations (or Adam steps) each vector gets.
    """
    theta0 = source.parent.vectors[source.base_index].float()
    cfg = config.resolved(float(theta0.norm()))
    assert cfg.steps is not None
    stamps: list[float] = []
    inputs = [encode(lm, p, source.system, source.raw) for p in source.prompts]
    search(lm, theta0, inputs, source_layer=source.parent.meta.source_layer, target_layer=source.parent.meta.target_layer,
           config=replace(cfg, count=1, steps=PROBE_STEPS, collapse_ratio=0.0),
           on_progress=lambda _p: stamps.append(time.perf_counter()))
    return _per_step(stamps, list(range(len(stamps)))) * cfg.steps


def estimate_melbo(lm: LoadedModel, config: MelboConfig, prompts: list[str], system: str | None = None,
                   raw: bool = False) -> float:
    """Seconds per vector that `run_melbo(lm, config, prompts, ...)` will take here: a few steps of its first batch, timed."""
    config.check(lm)
    batch = min(config.batch_vectors, config.num_vectors)
    stamps: list[float] = []
    steps: list[int] = []

    def heard(p: TrainProgress) -> None:
        stamps.append(time.perf_counter())
        steps.append(p.step)

    probe = replace(config, num_vectors=batch, steps=PROBE_STEPS * 2)
    train(lm, probe, [encode(lm, p, system, raw) for p in prompts], on_progress=heard)
    batches = math.ceil(config.num_vectors / batch)
    return _per_step(stamps, steps) * config.steps * batches / config.num_vectors


def _per_step(stamps: list[float], steps: list[int]) -> float:
    if len(stamps) < 2 or steps[-1] == steps[0]:
        raise InputError("too few steps were reported to time this run")
    return (stamps[-1] - stamps[0]) / (steps[-1] - steps[0])


# --- metrics into a bank file --------------------------------------------------------------------


class _BankGrew(Exception):  # noqa: N818  (control flow: rows were appended while we measured)
    def __init__(self, current: VectorBank) -> None:
        super().__init__("bank grew")
        self.current = current


def store_metrics(path: Path, bank: VectorBank, evaluate: Callable[[VectorBank], VectorBank],
                  on_regrow: Callable[[Path, int], None] | None = None, attempts: int = 3) -> VectorBank:
    """`evaluate(bank)` and store its metrics in `path` without losing what another process appended.

    The evaluation runs unlocked (it may take minutes); the write re-reads the file under the
    bank's lock. Rows appended meanwhile (ortho --resume) make us evaluate again (`on_regrow`
    hears it), the last attempt entirely under the lock, so it always ends; a bank whose rows
    were replaced is left alone with one error line.
    """
    for attempt in range(attempts):
        last = attempt == attempts - 1
        with bank_lock(path) if last else contextlib.nullcontext():
            if last:
                bank = load_bank(path)
            evaluated = evaluate(bank)

            def commit(current: VectorBank, evaluated: VectorBank = evaluated) -> VectorBank:
                n = len(evaluated)
                if len(current) < n or not torch.equal(current.vectors[:n], evaluated.vectors):
                    raise BankError(f"{path} was rewritten by another process while it was evaluated; "
                                    "nothing stored: run eval again")
                if len(current) > n:
                    raise _BankGrew(current)
                meta = replace(current.meta, extra={**current.meta.extra, "eval": evaluated.meta.extra["eval"]})
                return VectorBank(vectors=current.vectors, meta=meta, metrics=evaluated.metrics, aux=current.aux)

            try:
                return update_bank(path, commit)
            except _BankGrew as grew:
                if on_regrow is not None:
                    on_regrow(path, len(grew.current))
                bank = grew.current
    raise AssertionError("unreachable: the last attempt holds the lock")
