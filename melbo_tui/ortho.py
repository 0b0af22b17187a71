"""MELBO-ortho (the seed post): many vectors orthogonal to a base vector theta0 with its effect.

Objective per vector theta, averaged over the prompts (one prompt: exactly the seed's):

    loss(theta) = || z(theta) - z(theta0) ||_2   (+ l2 * ||theta||_2^2, off by default)

with z = the residual stream at the output of `target_layer`, meaned over the sequence, when
theta is added at the output of `source_layer`. Vector i is kept orthogonal to theta0 and every
earlier vector. No norm constraint.

The seed's quirks are not copied: the earlier vectors are kept as an orthonormal basis (in
float64, Gram-Schmidt applied twice), so orthogonality holds to ~1e-7 however many vectors;
theta starts from a seeded random direction in the complement scaled to |theta0| (starting
at theta0 itself gives an exactly zero gradient); a vector whose norm collapses (the seed's
vectors went to ~0 near the end) ends the run instead of being saved.

Strategies (same objective, same constraints, one vector at a time in the same order):
- `sequential`: seed-faithful; full forward pass from the token ids, Adam with a constant
  lr 0.01 x |theta0| / 7 (the seed's 0.01 at |theta0| = 7), theta projected onto the
  complement after every step, 1000 steps.
- `fast`: L-BFGS (strong-Wolfe line search, history 20) on theta projected onto the
  complement inside the loss, so every gradient already lies in the complement; at most
  `steps` = 60 loss evaluations per vector. The loss is a smooth, deterministic function of
  d_model numbers, where a quasi-Newton method needs far fewer evaluations than Adam steps.
  Measured by `melbo-tui bench` (embedded model, random base): 60 evaluations take 1/27 of the
  seed's time per vector with a lower KL to theta0 but a higher loss (10.0 vs 5.1); 200
  evaluations match the loss (5.07 vs 5.15) at 1/8 of the time. Blocks 0..S run once: their
  output is cached and each evaluation runs only blocks S+1..T (`prefix.PrefixCache`); prompts
  of equal token length share one forward.

A bank (kind "ortho", row 0 = theta0) is written atomically after every vector and a run
resumes from it; the init of vector i depends only on (seed, i) and both optimisers are
deterministic, so an interrupted and resumed run gives the same bank as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from melbo_tui.bank import BankKind, BankMeta, VectorBank, load_bank, save_bank
from melbo_tui.errors import BankError, InputError
from melbo_tui.models import LoadedModel
from melbo_tui.prefix import PrefixCache
from melbo_tui.steering import check_layer, run_to_layer, steer

STRATEGIES = ("fast", "sequential")
SEED_LR = 0.01  # the seed's Adam lr ...
SEED_NORM = 7.0  # ... at |theta0| = 7
SEQUENTIAL_STEPS = 1000  # the seed's
FAST_EVALUATIONS = 60  # L-BFGS loss evaluations per vector
LBFGS_HISTORY = 20


@dataclass(frozen=True)
class OrthoConfig:
    """How to search; `None` fields take the per-strategy defaults documented on `resolved`."""

    count: int  # orthogonal vectors wanted (rows 1..count of the bank)
    strategy: str = "fast"
    steps: int | None = None  # sequential: Adam steps per vector; fast: L-BFGS loss evaluations per vector
    lr: float | None = None  # sequential only: Adam lr, scaled with |theta0| (see `resolved`)
    l2: float = 0.0  # penalty l2 * ||theta||^2 (the seed's hypothesis 2)
    seed: int = 0
    collapse_ratio: float = 0.02  # |theta| <= ratio * |theta0| counts as collapsed; 0: never

    def check(self, hidden_size: int) -> None:
        if self.strategy not in STRATEGIES:
            raise InputError(f"unknown strategy '{self.strategy}': use {' or '.join(STRATEGIES)}")
        if self.count <= 0:
            raise InputError(f"--count must be positive, got {self.count}")
        if self.count > hidden_size - 1:
            raise InputError(f"--count {self.count}: at most d_model - 1 = {hidden_size - 1} vectors are orthogonal to theta0")
        if self.steps is not None and self.steps <= 0:
            raise InputError(f"--steps must be positive, got {self.steps}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"--lr must be a finite number > 0, got {self.lr}")
        if self.lr is not None and self.strategy == "fast":
            raise InputError("--lr is the Adam learning rate of --strategy sequential (fast uses L-BFGS with a line search)")
        if not (self.l2 >= 0 and math.isfinite(self.l2)):
            raise InputError(f"--l2 must be a finite number >= 0, got {self.l2}")
        if not self.collapse_ratio >= 0:
            raise InputError(f"collapse ratio must be >= 0, got {self.collapse_ratio}")

    def resolved(self, theta0_norm: float) -> OrthoConfig:
        """Defaults filled in, per strategy.

        sequential (the seed): Adam, lr 0.01 x |theta0| / 7, constant, 1000 steps.
        fast: L-BFGS, 60 loss evaluations (no lr: the line search sets the step).
        """
        if self.strategy == "sequential":
            return replace(self, lr=self.lr or SEED_LR * theta0_norm / SEED_NORM, steps=self.steps or SEQUENTIAL_STEPS)
        return replace(self, steps=self.steps or FAST_EVALUATIONS)


@dataclass(frozen=True)
class OrthoProgress:
    vectors_done: int  # finished and saved
    count: int
    vector: int  # index (1-based) of the vector being optimised
    step: int  # Adam steps or L-BFGS evaluations so far for this vector
    steps: int
    loss: float  # without the l2 penalty
    norm: float  # |theta|
    elapsed: float  # seconds since the run started (this process)


@dataclass(frozen=True)
class OrthoResult:
    bank: VectorBank
    found: int  # orthogonal vectors in the bank (rows 1..found)
    new: int  # of which found by this process
    seconds: float  # wall time of this process's optimisation
    stopped: bool  # should_stop fired
    collapsed: bool
    message: str


ProgressFn = Callable[[OrthoProgress], None]
StopFn = Callable[[], bool]
StepFn = Callable[[int, float, float], None]  # (step, loss, norm)


class _Stopped(Exception):
    pass


# --- orthonormal basis -------------------------------------------------------------------------


def extend_basis(basis: torch.Tensor, rows: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """`basis  # [n, d] orthonormal float64` plus the new directions of `rows  # [k, d]`."""
    for row in rows.to(basis.device, torch.float64):
        v = row
        for _ in range(2):  # twice is enough (Kahan/Parlett) for orthogonality to machine precision
            v = v - (basis.T @ (basis @ v)) if basis.shape[0] else v
        norm = float(v.norm())
        if norm > eps * max(float(row.norm()), 1e-300):
            basis = torch.cat([basis, (v / norm)[None]])
    return basis


def project(thetas: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Rows of `thetas  # [K, d]` without their components along `basis  # [n, d]` (float64, twice)."""
    v = thetas.to(torch.float64)
    if basis.shape[0]:
        for _ in range(2):
            v = v - (v @ basis.T) @ basis
    return v.to(thetas.dtype)


def max_abs_cos(vectors: torch.Tensor) -> float:
    """Largest |cos| between two different rows (0 for fewer than two rows)."""
    if vectors.shape[0] < 2:
        return 0.0
    v = vectors.to(torch.float64)
    units = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
    gram = units @ units.T
    gram.fill_diagonal_(0.0)
    return float(gram.abs().max())


def init_vector(index: int, seed: int, hidden_size: int) -> torch.Tensor:
    """The random start of vector `index` (1-based): depends only on (seed, index)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    return torch.randn(hidden_size, generator=generator, dtype=torch.float64)


# --- forward passes ------------------------------------------------------------------------------


class _Objective:
    """z(theta) for a batch of thetas, and its distance to z(theta0), per prompt group."""

    def __init__(self, lm: LoadedModel, source: int, target: int, inputs: list[torch.Tensor]) -> None:
        self.lm, self.source, self.target = lm, source, target
        self.groups = _group_by_length(inputs)  # [P_g, T_g] each
        self.z0: list[torch.Tensor] = []

    def z(self, thetas: torch.Tensor, group: int) -> torch.Tensor:
        """`[K, P_g, d]` fp32: target layer meaned over the sequence."""
        raise NotImplementedError

    def set_base(self, theta0: torch.Tensor) -> None:
        with torch.no_grad():
            self.z0 = [self.z(theta0[None], g)[0].detach() for g in range(len(self.groups))]

    def distance(self, thetas: torch.Tensor) -> torch.Tensor:
        """`[K]`: ||z(theta) - z(theta0)||_2 averaged over all prompts."""
        total = torch.zeros(thetas.shape[0], device=thetas.device)
        count = 0
        for g in range(len(self.groups)):
            diff = self.z(thetas, g) - self.z0[g].to(thetas.device)  # [K, P_g, d]
            total = total + diff.norm(dim=-1).sum(dim=1)
            count += diff.shape[1]
        return total / count


class _FullForward(_Objective):
    """The seed's forward: steer at the source layer, run from the token ids to the target."""

    def z(self, thetas: torch.Tensor, group: int) -> torch.Tensor:
        ids = self.groups[group]
        rows = []
        for theta in thetas:  # one vector at a time, all prompts of the group in one batch
            with steer(self.lm, self.source, theta):
                hidden = run_to_layer(self.lm, self.target, ids)  # [P, T, d]
            rows.append(hidden.float().mean(dim=1).to(thetas.device))
        return torch.stack(rows)


class _CachedForward(_Objective):
    """Blocks 0..S run once (`PrefixCache`); each evaluation runs only S+1..T on `cache + theta`."""

    def __init__(self, lm: LoadedModel, source: int, target: int, inputs: list[torch.Tensor]) -> None:
        super().__init__(lm, source, target, inputs)
        self.caches = [PrefixCache(lm, source, ids) for ids in self.groups]

    def z(self, thetas: torch.Tensor, group: int) -> torch.Tensor:
        cache = self.caches[group]
        k, (p, _, d) = thetas.shape[0], cache.hidden.shape
        with cache.run(thetas, last=self.target) as ids:
            hidden = run_to_layer(self.lm, self.target, ids)  # [K*P, T, d]
        return hidden.float().mean(dim=1).reshape(k, p, d).to(thetas.device)


def _group_by_length(inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Prompts `[1, T]` stacked into `[P, T]` batches of equal length (no padding needed)."""
    by_length: dict[int, list[torch.Tensor]] = {}
    for ids in inputs:
        by_length.setdefault(int(ids.shape[1]), []).append(ids)
    return [torch.cat(group) for _, group in sorted(by_length.items())]


# --- optimisation ---------------------------------------------------------------------------------


def adam_vector(objective: _Objective, init: torch.Tensor, basis: torch.Tensor, config: OrthoConfig,
                on_step: StepFn, should_stop: StopFn) -> torch.Tensor:
    """The seed's loop for one vector: Adam step, then project theta onto the complement of `basis`."""
    assert config.lr is not None and config.steps is not None
    theta = nn.Parameter(init.clone())
    optimizer = torch.optim.Adam([theta], lr=config.lr)
    for step in range(config.steps):
        if should_stop():
            raise _Stopped
        optimizer.zero_grad(set_to_none=True)
        loss = objective.distance(theta[None])[0]
        total = loss + config.l2 * theta.pow(2).sum() if config.l2 else loss
        total.backward()
        with torch.no_grad():
            optimizer.step()
            theta.copy_(project(theta[None], basis)[0])
        on_step(step + 1, float(loss.detach()), float(theta.detach().norm()))
    return theta.detach()


def lbfgs_vector(objective: _Objective, init: torch.Tensor, basis: torch.Tensor, config: OrthoConfig,
                 on_step: StepFn, should_stop: StopFn) -> torch.Tensor:
    """L-BFGS on phi with theta = P phi (P: projection onto the complement of `basis`).

    The gradient with respect to phi is P times the gradient with respect to theta, so the
    search never leaves the complement; the returned theta is projected once more in float64.
    """
    assert config.steps is not None
    basis32 = basis.to(init.dtype)
    phi = nn.Parameter(init.clone())
    optimizer = torch.optim.LBFGS([phi], lr=1.0, max_iter=config.steps, max_eval=config.steps,
                                  history_size=LBFGS_HISTORY, line_search_fn="strong_wolfe",
                                  tolerance_grad=1e-12, tolerance_change=1e-12)
    evaluations = [0]

    def closure() -> torch.Tensor:
        if should_stop():
            raise _Stopped
        optimizer.zero_grad(set_to_none=True)
        theta = phi - (phi @ basis32.T) @ basis32 if basis32.shape[0] else phi
        loss = objective.distance(theta[None])[0]
        total = loss + config.l2 * theta.pow(2).sum() if config.l2 else loss
        total.backward()
        evaluations[0] += 1
        on_step(evaluations[0], float(loss.detach()), float(theta.detach().norm()))
        return total

    optimizer.step(closure)
    return project(phi.detach()[None], basis)[0]


# --- the run -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrthoSource:
    """Where theta0 comes from and what to optimise on."""

    parent: VectorBank
    parent_path: str
    base_row: int
    prompts: list[str]
    system: str | None = None
    raw: bool = False


def run_ortho(
    lm: LoadedModel,
    source: OrthoSource,
    inputs: list[torch.Tensor],  # encoded prompts [1, T] each, in source.prompts order
    config: OrthoConfig,
    out: Path,
    resume: bool = False,
    created_by: str = "",
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> OrthoResult:
    """Run MELBO-ortho from row `source.base_row` of the parent bank into the bank file `out`."""
    parent = source.parent
    config.check(lm.hidden_size)
    if not 0 <= source.base_row < len(parent):
        raise InputError(f"--base {source.base_row} is out of range: {source.parent_path} has rows 0..{len(parent) - 1}")
    check_layer(lm, parent.meta.source_layer, "source layer")
    check_layer(lm, parent.meta.target_layer, "target layer")
    if parent.meta.target_layer <= parent.meta.source_layer:
        raise InputError(f"target layer {parent.meta.target_layer} must come after source layer {parent.meta.source_layer}")
    if not inputs:
        raise InputError("give at least one --prompt")
    theta0_cpu = parent.vectors[source.base_row].float()
    theta0_norm = float(theta0_cpu.norm())
    if theta0_norm <= 0:
        raise InputError(f"row {source.base_row} of {source.parent_path} is the zero vector")
    cfg = config.resolved(theta0_norm)
    out = Path(out)
    bank = _start_bank(lm, source, cfg, theta0_cpu, out, resume, created_by)
    found = len(bank) - 1
    if found == 0:
        save_bank(bank, out)  # from the start, an interrupted run leaves a valid bank (row 0)
    if found >= cfg.count:
        return OrthoResult(bank, found, 0, 0.0, False, False, f"{out} already holds {found} vectors: nothing to do")

    device = lm.device
    theta0 = theta0_cpu.to(device)
    layers = (parent.meta.source_layer, parent.meta.target_layer)
    objective = (_CachedForward if cfg.strategy == "fast" else _FullForward)(lm, *layers, inputs)
    objective.set_base(theta0)
    optimise = lbfgs_vector if cfg.strategy == "fast" else adam_vector
    basis = extend_basis(torch.zeros(0, lm.hidden_size, dtype=torch.float64, device=device), bank.vectors.to(device))
    collapse_norm = cfg.collapse_ratio * theta0_norm
    start, new = time.perf_counter(), 0
    stopped = collapsed = False
    message = ""
    while found < cfg.count:
        index = found + 1
        init = project(init_vector(index, cfg.seed, lm.hidden_size).to(device)[None], basis)[0]
        init = (init / init.norm() * theta0_norm).float()
        used = [0]

        def report(step: int, loss: float, norm: float, index: int = index, done: int = found, used: list[int] = used) -> None:
            used[0] = step
            if on_progress is not None:
                on_progress(OrthoProgress(done, cfg.count, index, step, cfg.steps or 0, loss, norm, time.perf_counter() - start))

        try:
            theta = optimise(objective, init, basis, cfg, report, should_stop or (lambda: False))
        except _Stopped:
            stopped = True
            message = f"stopped: {found} vectors saved in {out} (--resume continues)"
            break
        norm = float(theta.norm())
        if norm <= collapse_norm:
            collapsed = True
            message = (f"collapsed: vector {index} has norm {norm:.3g} <= {cfg.collapse_ratio:g} x |theta0|; "
                       f"stopped with {found} vectors in {out}")
            break
        with torch.no_grad():
            loss = float(objective.distance(theta[None])[0])
        bank = _append(bank, theta.float().cpu(), loss, used[0])
        basis = extend_basis(basis, bank.vectors[-1:].to(device))
        save_bank(bank, out)
        found += 1
        new += 1
    seconds = time.perf_counter() - start
    if not message:
        message = f"{found} orthogonal vectors in {out}"
    return OrthoResult(bank, found, new, seconds, stopped, collapsed, message)


def _start_bank(lm: LoadedModel, source: OrthoSource, cfg: OrthoConfig, theta0: torch.Tensor,
                out: Path, resume: bool, created_by: str) -> VectorBank:
    hyper = _hyperparameters(cfg)
    if resume and out.exists():
        bank = load_bank(out)
        _check_resumable(bank, lm, source, theta0, hyper, out)
        return bank
    if out.exists() and not resume:
        raise InputError(f"{out} exists: pass --resume to continue it, or choose another --out")
    pm = source.parent.meta
    meta = BankMeta(
        kind=BankKind.ORTHO, model=lm.name, hidden_size=lm.hidden_size, num_layers=lm.num_layers,
        source_layer=pm.source_layer, target_layer=pm.target_layer, prompts=list(source.prompts),
        system_prompt=source.system, radius=float(theta0.norm()), base_index=0, hyperparameters=hyper,
        created_by=created_by, raw_prompts=source.raw or not lm.has_chat_template,
        extra={"parent_bank": source.parent_path, "parent_row": source.base_row, "parent_model": pm.model,
               "ortho_loss": [0.0], "ortho_steps": [0]},
    )
    return VectorBank(vectors=theta0[None].clone(), meta=meta)


def _hyperparameters(cfg: OrthoConfig) -> dict[str, Any]:
    hyper = asdict(cfg)
    hyper.pop("count")
    fast = cfg.strategy == "fast"
    hyper.update(optimizer=f"L-BFGS (strong Wolfe, history {LBFGS_HISTORY})" if fast else "Adam (constant lr)",
                 loss="||z(theta) - z(theta0)||_2, z = target layer meaned over the sequence",
                 projection="inside the loss (theta = P phi), float64 orthonormal basis" if fast
                 else "after every step, float64 orthonormal basis")
    return hyper


def _check_resumable(bank: VectorBank, lm: LoadedModel, source: OrthoSource, theta0: torch.Tensor,
                     hyper: dict[str, Any], out: Path) -> None:
    meta = bank.meta
    if meta.kind != "ortho":
        raise BankError(f"cannot resume {out}: it is a '{meta.kind}' bank, not an ortho bank")
    if meta.model != lm.name or bank.hidden_size != lm.hidden_size:
        raise BankError(f"cannot resume {out}: it was made with {meta.model}, the loaded model is {lm.name}")
    if not torch.equal(bank.vectors[0], theta0):
        raise BankError(f"cannot resume {out}: its row 0 is not row {source.base_row} of {source.parent_path}")
    if meta.prompts != list(source.prompts) or meta.system_prompt != source.system:
        raise BankError(f"cannot resume {out}: it was made on other prompts")
    for key, value in hyper.items():
        if meta.hyperparameters.get(key) != value:
            raise BankError(f"cannot resume {out}: it was made with {key}={meta.hyperparameters.get(key)!r}, this run asks {value!r}")


def _append(bank: VectorBank, theta: torch.Tensor, loss: float, steps: int) -> VectorBank:
    extra = dict(bank.meta.extra)
    extra["ortho_loss"] = [*extra.get("ortho_loss", []), loss]
    extra["ortho_steps"] = [*extra.get("ortho_steps", []), steps]
    meta = replace(bank.meta, extra=extra)
    return VectorBank(vectors=torch.cat([bank.vectors, theta[None]]), meta=meta)
