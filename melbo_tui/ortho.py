"""MELBO-ortho (the seed post): many vectors orthogonal to a base vector theta0 with its effect.

Objective per vector theta, averaged over the prompts (one prompt: exactly the seed's):

    loss(theta) = || z(theta) - z(theta0) ||_2   (+ l2 * ||theta||_2^2, off by default)

with z = the residual stream at the output of `target_layer`, meaned over the sequence, when
theta is added at the output of `source_layer`. Adam; after *every* step theta is projected
onto the orthogonal complement of theta0 and of every earlier vector. No norm constraint.

The seed's quirks are not copied: the earlier vectors are kept as an orthonormal basis (in
float64, Gram-Schmidt applied twice), so orthogonality holds to ~1e-7 however many vectors;
theta starts from a seeded random direction in the complement scaled to |theta0| (starting
at theta0 itself gives an exactly zero gradient); a vector whose norm collapses (the seed's
vectors went to ~0 near the end) ends the run instead of being saved.

Strategies (same objective, same constraints):
- `sequential`: seed-faithful; one vector at a time, full forward pass from the token ids,
  Adam lr 0.01 x |theta0| / 7 (the seed's 0.01 at |theta0| = 7), constant, 1000 steps.
- `fast`: a block of vectors optimised together, one per batch row. Vector j of a block is
  kept orthogonal to theta0, every earlier vector and block members 0..j-1 (a QR of the block
  after each step). Blocks 0..S run once: their output is cached and only blocks S+1..T run
  per step (`prefix.PrefixCache`). Adam with 3x the lr and a cosine decay to lr/10 over at
  most 1000 steps (the seed's constant lr keeps improving slowly until step 1000; the larger,
  decaying lr gets lower sooner); a vector stops when its loss has not improved by 0.1% for
  `patience` steps and every earlier member of its block has stopped too (so a stopped vector
  never needs re-projecting).
  Prompts of equal token length share one forward.

Adam is element-wise, so a block is exactly K independent optimisers coupled only through
the constraint. A bank (kind "ortho", row 0 = theta0) is written atomically after every block
and a run resumes from it; the init of vector i depends only on (seed, i), so an interrupted
and resumed run gives the same bank as an uninterrupted one.
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
from torch import nn

from melbo_tui.bank import BankMeta, VectorBank, load_bank, save_bank
from melbo_tui.errors import BankError, InputError
from melbo_tui.models import LoadedModel
from melbo_tui.prefix import PrefixCache
from melbo_tui.steering import check_layer, run_to_layer, steer

STRATEGIES = ("fast", "sequential")
SEED_LR = 0.01  # the seed's Adam lr ...
SEED_NORM = 7.0  # ... at |theta0| = 7
SEQUENTIAL_STEPS = 1000  # the seed's
FAST_STEPS = 1000  # an upper bound: vectors stop on plateau
FAST_LR_FACTOR = 3.0


@dataclass(frozen=True)
class OrthoConfig:
    """How to search; `None` fields take the per-strategy defaults documented on `resolved`."""

    count: int  # orthogonal vectors wanted (rows 1..count of the bank)
    strategy: str = "fast"
    steps: int | None = None  # max Adam steps per vector
    lr: float | None = None  # scaled with |theta0|, see `resolved`
    l2: float = 0.0  # penalty l2 * ||theta||^2 (the seed's hypothesis 2)
    seed: int = 0
    block_size: int = 32  # fast only: vectors optimised together
    patience: int = 50  # fast only: steps without improvement before a vector stops
    min_delta: float = 1e-3  # fast only: relative loss decrease that counts as improvement
    collapse_ratio: float = 0.02  # |theta| <= ratio * |theta0| counts as collapsed; 0: never
    schedule: str | None = None  # "constant" or "cosine" (lr decays to lr/10 over `steps`)
    autocast: str | None = None  # fast only: "bfloat16" runs blocks S+1..T under autocast

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
        if not (self.l2 >= 0 and math.isfinite(self.l2)):
            raise InputError(f"--l2 must be a finite number >= 0, got {self.l2}")
        if self.schedule not in (None, "constant", "cosine"):
            raise InputError(f"unknown schedule '{self.schedule}': use constant or cosine")
        if self.autocast not in (None, "bfloat16", "float16"):
            raise InputError(f"autocast must be bfloat16 or float16, got {self.autocast}")
        if self.block_size <= 0 or self.patience <= 0:
            raise InputError("--block-size and --patience must be positive")
        if not self.collapse_ratio >= 0:
            raise InputError(f"collapse ratio must be >= 0, got {self.collapse_ratio}")

    def resolved(self, theta0_norm: float) -> OrthoConfig:
        """Defaults filled in, per strategy.

        sequential (the seed): lr 0.01 x |theta0| / 7, constant, 1000 steps, blocks of one.
        fast: lr 3x that, cosine decay to lr/10 over at most 1000 steps, early stop on plateau.
        """
        seed_lr = SEED_LR * theta0_norm / SEED_NORM
        if self.strategy == "sequential":
            return replace(self, lr=self.lr or seed_lr, steps=self.steps or SEQUENTIAL_STEPS,
                           schedule=self.schedule or "constant", block_size=1, autocast=None)
        return replace(self, lr=self.lr or FAST_LR_FACTOR * seed_lr, steps=self.steps or FAST_STEPS,
                       schedule=self.schedule or "cosine")


@dataclass(frozen=True)
class OrthoProgress:
    vectors_done: int  # finished and saved
    count: int
    block_start: int  # index (1-based) of the block's first vector
    block_len: int
    step: int
    steps: int
    active: int  # vectors of the block still optimising
    loss: float  # mean loss of the block (without the l2 penalty)
    norm: float  # mean |theta| of the block
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


def project_block(thetas: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Rows of `thetas  # [K, d]` made orthogonal to `basis` and each to the rows before it.

    Row j keeps its component outside span(basis, rows 0..j-1): the QR of the projected
    block gives it as `q_j * r_jj`, computed in float64.
    """
    v = thetas.to(torch.float64)
    for _ in range(2):
        v = v - (v @ basis.T) @ basis if basis.shape[0] else v
    if v.shape[0] == 1:
        return v.to(thetas.dtype)
    q, r = torch.linalg.qr(v.T)  # q [d, K], r [K, K]
    return (q * r.diagonal()).T.to(thetas.dtype)


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
        self.z0: dict[bool, list[torch.Tensor]] = {}

    def z(self, thetas: torch.Tensor, group: int, exact: bool = False) -> torch.Tensor:
        """`[K, P_g, d]` fp32: target layer meaned over the sequence (`exact`: never autocast)."""
        raise NotImplementedError

    def set_base(self, theta0: torch.Tensor) -> None:
        with torch.no_grad():
            for exact in (False, True):
                self.z0[exact] = [self.z(theta0[None], g, exact)[0].detach() for g in range(len(self.groups))]

    def distance(self, thetas: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """`[K]`: ||z(theta) - z(theta0)||_2 averaged over all prompts."""
        total = torch.zeros(thetas.shape[0], device=thetas.device)
        count = 0
        for g in range(len(self.groups)):
            diff = self.z(thetas, g, exact) - self.z0[exact][g].to(thetas.device)  # [K, P_g, d]
            total = total + diff.norm(dim=-1).sum(dim=1)
            count += diff.shape[1]
        return total / count


class _FullForward(_Objective):
    """The seed's forward: steer at the source layer, run from the token ids to the target."""

    def z(self, thetas: torch.Tensor, group: int, exact: bool = False) -> torch.Tensor:
        ids = self.groups[group]
        rows = []
        for theta in thetas:  # one vector at a time, all prompts of the group in one batch
            with steer(self.lm, self.source, theta):
                hidden = run_to_layer(self.lm, self.target, ids)  # [P, T, d]
            rows.append(hidden.float().mean(dim=1).to(thetas.device))
        return torch.stack(rows)


class _CachedForward(_Objective):
    """Blocks 0..S run once (`PrefixCache`); each step runs only S+1..T on `cache + theta`."""

    def __init__(self, lm: LoadedModel, source: int, target: int, inputs: list[torch.Tensor],
                 autocast: str | None = None) -> None:
        super().__init__(lm, source, target, inputs)
        self.caches = [PrefixCache(lm, source, ids) for ids in self.groups]
        self.autocast = getattr(torch, autocast) if autocast else None

    def z(self, thetas: torch.Tensor, group: int, exact: bool = False) -> torch.Tensor:
        cache = self.caches[group]
        k, (p, _, d) = thetas.shape[0], cache.hidden.shape
        with cache.run(thetas, last=self.target) as ids, self._autocast(exact):
            hidden = run_to_layer(self.lm, self.target, ids)  # [K*P, T, d]
        return hidden.float().mean(dim=1).reshape(k, p, d).to(thetas.device)

    def _autocast(self, exact: bool) -> Any:
        if self.autocast is None or exact:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.lm.device.type, dtype=self.autocast)


def _group_by_length(inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Prompts `[1, T]` stacked into `[P, T]` batches of equal length (no padding needed)."""
    by_length: dict[int, list[torch.Tensor]] = {}
    for ids in inputs:
        by_length.setdefault(int(ids.shape[1]), []).append(ids)
    return [torch.cat(group) for _, group in sorted(by_length.items())]


# --- optimisation ---------------------------------------------------------------------------------


def optimise_block(
    objective: _Objective,
    init: torch.Tensor,  # [K, d] fp32, already projected
    basis: torch.Tensor,  # [n, d] float64 orthonormal
    config: OrthoConfig,  # resolved
    progress: Callable[[int, int, float, float], None] | None = None,
    should_stop: StopFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimise the loss of each row under the constraints: (thetas [K, d], losses [K], steps [K])."""
    assert config.lr is not None and config.steps is not None
    k = init.shape[0]
    theta = nn.Parameter(init.clone())
    optimizer = torch.optim.Adam([theta], lr=config.lr)
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps, eta_min=config.lr / 10)
                if config.schedule == "cosine" else None)
    early_stop = config.strategy == "fast"
    best = torch.full((k,), math.inf)
    last_better = torch.zeros(k, dtype=torch.long)
    steps_used = torch.full((k,), config.steps, dtype=torch.long)
    frozen = 0  # rows [0, frozen) have stopped
    frozen_basis = basis
    for step in range(config.steps):
        if should_stop is not None and should_stop():
            raise _Stopped
        optimizer.zero_grad(set_to_none=True)
        active = theta[frozen:]
        loss = objective.distance(active)  # [K - frozen]
        total = loss + config.l2 * active.pow(2).sum(dim=1) if config.l2 else loss
        total.sum().backward()
        with torch.no_grad():
            keep = theta.detach()[:frozen].clone()
            optimizer.step()
            theta[:frozen] = keep  # Adam's momentum must not move a stopped vector
            if schedule is not None:
                schedule.step()
            theta[frozen:] = project_block(theta[frozen:], frozen_basis)
        if progress is not None:
            progress(step + 1, k - frozen, float(loss.detach().mean()), float(theta.detach()[frozen:].norm(dim=1).mean()))
        if early_stop:
            values = total.detach().cpu()
            better = values < best[frozen:] * (1 - config.min_delta)
            best[frozen:] = torch.where(better, values, best[frozen:])
            last_better[frozen:] = torch.where(better, torch.tensor(step), last_better[frozen:])
            while frozen < k and step - int(last_better[frozen]) >= config.patience:
                steps_used[frozen] = step + 1
                frozen_basis = extend_basis(frozen_basis, theta.detach()[frozen:frozen + 1])
                frozen += 1
            if frozen == k:
                break
    thetas = theta.detach()
    with torch.no_grad():
        final = objective.distance(thetas, exact=True).detach()
    return thetas, final.cpu(), steps_used


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
    if cfg.strategy == "fast":
        objective: _Objective = _CachedForward(lm, parent.meta.source_layer, parent.meta.target_layer, inputs, cfg.autocast)
    else:
        objective = _FullForward(lm, parent.meta.source_layer, parent.meta.target_layer, inputs)
    objective.set_base(theta0)
    basis = extend_basis(torch.zeros(0, lm.hidden_size, dtype=torch.float64, device=device), bank.vectors.to(device))
    collapse_norm = cfg.collapse_ratio * theta0_norm
    start, new = time.perf_counter(), 0
    stopped = collapsed = False
    message = ""
    while found < cfg.count:
        k = min(cfg.block_size, cfg.count - found)
        first = found + 1
        init = torch.stack([init_vector(first + j, cfg.seed, lm.hidden_size) for j in range(k)]).to(device)
        init = project_block(init, basis)
        init = (init / init.norm(dim=1, keepdim=True) * theta0_norm).float()

        def report(step: int, active: int, loss: float, norm: float, first: int = first, k: int = k,
                   done: int = found) -> None:
            if on_progress is not None:
                on_progress(OrthoProgress(done, cfg.count, first, k, step, cfg.steps or 0, active, loss, norm,
                                          time.perf_counter() - start))

        try:
            thetas, losses, steps_used = optimise_block(objective, init, basis, cfg, report, should_stop)
        except _Stopped:
            stopped = True
            message = f"stopped: {found} vectors saved in {out} (--resume continues)"
            break
        norms = thetas.norm(dim=1).cpu()
        small = (norms <= collapse_norm).nonzero().flatten().tolist()
        keep = small[0] if small else k
        if keep:
            bank = _append(bank, thetas[:keep].float().cpu(), losses[:keep], steps_used[:keep])
            basis = extend_basis(basis, bank.vectors[-keep:].to(device))
            save_bank(bank, out)
            found += keep
            new += keep
        if small:
            collapsed = True
            message = (f"collapsed: vector {first + keep} has norm {float(norms[keep]):.3g} <= "
                       f"{cfg.collapse_ratio:g} x |theta0|; stopped with {found} vectors in {out}")
            break
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
        kind="ortho", model=lm.name, hidden_size=lm.hidden_size, num_layers=lm.num_layers,
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
    hyper.update(optimizer="Adam", loss="||z(theta) - z(theta0)||_2, z = target layer meaned over the sequence",
                 projection="after every step, float64 orthonormal basis")
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


def _append(bank: VectorBank, thetas: torch.Tensor, losses: torch.Tensor, steps: torch.Tensor) -> VectorBank:
    extra = dict(bank.meta.extra)
    extra["ortho_loss"] = list(extra.get("ortho_loss", [])) + [float(x) for x in losses]
    extra["ortho_steps"] = list(extra.get("ortho_steps", [])) + [int(x) for x in steps]
    meta = replace(bank.meta, extra=extra)
    return VectorBank(vectors=torch.cat([bank.vectors, thetas]), meta=meta)
