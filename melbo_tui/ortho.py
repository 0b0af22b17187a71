"""MELBO-ortho (the seed post): many vectors orthogonal to a base vector theta0 with its effect.

Per vector theta, averaged over the prompts, with Z_t = the residual stream at the output of
`target_layer`, position t, when theta is added at the output of `source_layer`:

- `continuation` (default): mean over the compared positions of ||Z_t(theta) - Z_t(theta0)||^2
  over the prompt and theta0's own greedy continuation, teacher-forced (the input is the prompt
  followed by the first `continuation` - 1 tokens theta0 generates, as `kl_seq` reads them).
  Behaviour is what the model does over the tokens it generates, where the vector is added too.
  The attention sink is left out (`sink.SinkRule`: positions massive unsteered or under theta0,
  so also the sinks theta0 induces). The continuation is computed once per prompt, before the
  first vector. On three bases of the shipped MELBO bank it halved kl_seq against `tokens` and
  was the best on held-out prompts, at 1.2-2.3x the time (docs/replication.md s.10).
- `tokens`: the same over the prompt positions only.
- `seed`: the seed's ||mean_t Z_t(theta) - mean_t Z_t(theta0)||_2 over every position (its
  default sink rule is `keep`). On a model with a massive first-token activation this is mostly
  position 0 (about half of the seed's loss at theta = 0 for the shipped code base, and 82% of
  sum_t ||Z_t(0) - Z_t(theta0)||^2; docs/replication.md), which carries no behaviour: the seed's vectors match that one position and are no
  closer to theta0 over a continuation than not steering (REFERENCE.md s.2a).

(+ l2 * ||theta||^2, off by default: the seed's hypothesis 2.) Vector i is kept orthogonal to
theta0 and every earlier vector. No norm constraint.

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
  The budget was chosen by `scripts/ortho_budget.py` (docs/ortho-budget-data.md): with the
  `tokens` objective 30 to 240 evaluations give the same kl_seq on two of three bases of the
  shipped MELBO bank. Blocks 0..S run once: their output is cached and each evaluation runs
  only blocks S+1..T (`prefix.PrefixCache`); prompts of equal token length share one forward.

A bank (kind "ortho", row 0 = theta0) is written atomically after every vector and a run
resumes from it; the init of vector i depends only on (seed, i) and both optimisers are
deterministic, so an interrupted and resumed run gives the same bank as an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from melbo_tui.errors import InputError, Stopped
from melbo_tui.kinds import Objective, Strategy
from melbo_tui.metrics import CONTINUATION_TOKENS
from melbo_tui.models import LoadedModel
from melbo_tui.prefix import PrefixCache
from melbo_tui.sink import Positions, SinkMode, SinkReport, SinkRule, select_positions
from melbo_tui.steering import check_layers, run_to_layer, steer

SEED_LR = 0.01  # the seed's Adam lr ...
SEED_NORM = 7.0  # ... at |theta0| = 7
SEQUENTIAL_STEPS = 1000  # the seed's
FAST_EVALUATIONS = 60  # L-BFGS loss evaluations per vector
LBFGS_HISTORY = 20


@dataclass(frozen=True)
class OrthoConfig:
    """How to search; `None` fields take the per-strategy defaults documented on `resolved`."""

    count: int  # orthogonal vectors wanted (rows 1..count of the bank)
    strategy: Strategy = Strategy.FAST
    objective: Objective = Objective.CONTINUATION
    sink: SinkRule | None = None  # None: the objective's default (`Objective.default_sink`)
    steps: int | None = None  # sequential: Adam steps per vector; fast: L-BFGS loss evaluations per vector
    lr: float | None = None  # sequential only: Adam lr, scaled with |theta0| (see `resolved`)
    l2: float = 0.0  # penalty l2 * ||theta||^2 (the seed's hypothesis 2)
    seed: int = 0
    collapse_ratio: float = 0.02  # |theta| <= ratio * |theta0| counts as collapsed; 0: never
    continuation: int = CONTINUATION_TOKENS  # `continuation` objective: tokens of theta0's greedy answer compared

    def check(self, hidden_size: int) -> None:
        if self.strategy not in Strategy.__members__.values():
            raise InputError(f"unknown `strategy` '{self.strategy}': use {' or '.join(Strategy)}")
        if self.objective not in Objective.__members__.values():
            raise InputError(f"unknown `objective` '{self.objective}': use {' or '.join(Objective)}")
        if self.count <= 0:
            raise InputError(f"`num_vectors` must be positive, got {self.count}")
        if self.count > hidden_size - 1:
            raise InputError(f"`num_vectors` {self.count}: at most d_model - 1 = {hidden_size - 1} vectors are orthogonal to theta0")
        if self.steps is not None and self.steps <= 0:
            raise InputError(f"`steps` must be positive, got {self.steps}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise InputError(f"`lr` must be a finite number > 0, got {self.lr}")
        if self.lr is not None and self.strategy == Strategy.FAST:
            raise InputError("`lr` is the Adam learning rate of the sequential `strategy` (fast uses L-BFGS with a line search)")
        if not (self.l2 >= 0 and math.isfinite(self.l2)):
            raise InputError(f"`l2` must be a finite number >= 0, got {self.l2}")
        if not self.collapse_ratio >= 0:
            raise InputError(f"collapse ratio must be >= 0, got {self.collapse_ratio}")
        if self.continuation < 2:
            raise InputError(f"`continuation` must be at least 2 tokens, got {self.continuation}")

    def resolved(self, theta0_norm: float) -> OrthoConfig:
        """Defaults filled in, per strategy and objective.

        sequential (the seed): Adam, lr 0.01 x |theta0| / 7, constant, 1000 steps.
        fast: L-BFGS, 60 loss evaluations (no lr: the line search sets the step).
        sink: the objective's default.
        """
        cfg = replace(self, strategy=Strategy(self.strategy), objective=Objective(self.objective),
                      sink=self.sink or Objective(self.objective).default_sink)
        if cfg.strategy == Strategy.SEQUENTIAL:
            return replace(cfg, lr=cfg.lr or SEED_LR * theta0_norm / SEED_NORM, steps=cfg.steps or SEQUENTIAL_STEPS)
        return replace(cfg, steps=cfg.steps or FAST_EVALUATIONS)


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


ProgressFn = Callable[[OrthoProgress], None]
StopFn = Callable[[], bool]
StepFn = Callable[[int, float, float], None]  # (step, loss, norm)


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


class _Forward:
    """The target layer `[K, P_g, T_g, d]` (fp32) for a batch of thetas, one prompt group at a time."""

    def __init__(self, lm: LoadedModel, source: int, target: int, inputs: list[torch.Tensor]) -> None:
        self.lm, self.source, self.target = lm, source, target
        self.groups = _group_by_length(inputs)  # [P_g, T_g] each

    def hidden(self, thetas: torch.Tensor, group: int) -> torch.Tensor:
        raise NotImplementedError


class _FullForward(_Forward):
    """The seed's forward: steer at the source layer, run from the token ids to the target."""

    def hidden(self, thetas: torch.Tensor, group: int) -> torch.Tensor:
        ids = self.groups[group]
        rows = []
        for theta in thetas:  # one vector at a time, all prompts of the group in one batch
            with steer(self.lm, self.source, theta):
                rows.append(run_to_layer(self.lm, self.target, ids).float().to(thetas.device))  # [P, T, d]
        return torch.stack(rows)


class _CachedForward(_Forward):
    """Blocks 0..S run once (`PrefixCache`); each evaluation runs only S+1..T on `cache + theta`.

    A bf16/fp16 model runs S+1..T as fp32 copies: L-BFGS's line search compares losses that
    differ in the third digit, where bf16 rounding stalls it (measured on the embedded model in
    bf16: the loss stuck at 18.1 after 35 of 60 evaluations, fp32 reached 7.6). The copies cost
    the memory of blocks S+1..T in fp32; blocks offloaded to CPU or disk are not copied (the
    search then runs in the model's dtype).
    """

    def __init__(self, lm: LoadedModel, source: int, target: int, inputs: list[torch.Tensor]) -> None:
        super().__init__(lm, source, target, inputs)
        self.blocks = upcast_blocks(lm, source, target)
        dtype = torch.float32 if self.blocks is not None else None
        self.caches = [PrefixCache(lm, source, ids, dtype) for ids in self.groups]

    def hidden(self, thetas: torch.Tensor, group: int) -> torch.Tensor:
        cache = self.caches[group]
        k, (p, t, d) = thetas.shape[0], cache.hidden.shape
        hidden = cache.target(thetas, self.target, self.blocks)  # [K*P, T, d]
        return hidden.float().reshape(k, p, t, d).to(thetas.device)


def upcast_blocks(lm: LoadedModel, source: int, target: int) -> list[nn.Module] | None:
    """fp32 copies of blocks S+1..T of a half-precision model (None: already fp32, or offloaded)."""
    if lm.dtype == torch.float32:
        return None
    blocks = list(lm.blocks[source + 1: target + 1])
    if any(p.device.type == "meta" for block in blocks for p in block.parameters()):
        return None
    return [copy.deepcopy(block).float() for block in blocks]


class OrthoLoss:
    """The objective, per prompt group: weights over positions make the sink rule one tensor.

    `weights[g]  # [P_g, T_g]` is 1/k_p on the k_p compared positions of prompt p and 0 elsewhere,
    so `seed` means over the compared positions and `tokens` averages per-position errors over them.
    The sink rule sees both the unsteered run and theta0's: a position theta0 makes massive (an
    induced sink) would otherwise hold the `tokens` objective alone (`sink` module docstring).
    """

    def __init__(self, forward: _Forward, objective: Objective, sink: SinkRule, theta0: torch.Tensor) -> None:
        self.forward, self.objective, self.sink = forward, objective, sink
        zero = torch.zeros(1, forward.lm.hidden_size, device=forward.lm.device)
        groups = range(len(forward.groups))
        with torch.no_grad():
            self.unsteered = [forward.hidden(zero, g)[0] for g in groups]  # [P_g, T_g, d]
            self.base = [forward.hidden(theta0[None].to(zero), g)[0] for g in groups]  # theta0's target layer [P_g, T_g, d]
        self.positions = [[select_positions(z.norm(dim=-1), sink, base_norms=b.norm(dim=-1)) for z, b in zip(zs, bs, strict=True)]
                          for zs, bs in zip(self.unsteered, self.base, strict=True)]
        self.weights = [_weights(group, z.shape[1], z.device) for group, z in zip(self.positions, self.unsteered, strict=True)]

    def value(self, thetas: torch.Tensor) -> torch.Tensor:
        """`[K]`: what the optimiser minimises (seed: L2 of the mean difference; tokens: mean squared error)."""
        total = torch.zeros(thetas.shape[0], device=thetas.device)
        count = 0
        for g, (base, weights) in enumerate(zip(self.base, self.weights, strict=True)):
            diff = self.forward.hidden(thetas, g) - base.to(thetas.device)  # [K, P, T, d]
            w = weights.to(thetas.device)
            if self.objective == Objective.SEED:
                per_prompt = (diff * w[None, :, :, None]).sum(dim=2).norm(dim=-1)  # [K, P]
            else:
                per_prompt = (diff.pow(2).sum(dim=-1) * w[None]).sum(dim=2)  # [K, P]
            total = total + per_prompt.sum(dim=1)
            count += diff.shape[1]
        return total / count

    def reported(self, value: float) -> float:
        """The number shown and stored as `ortho_loss`: in activation units for both objectives (tokens: RMS error)."""
        return value if self.objective == Objective.SEED else math.sqrt(max(value, 0.0))

    def report(self) -> SinkReport:
        """Which positions the rule leaves out, which sinks it keeps, and their shares of sum_t ||Z_t(0) - Z_t(theta0)||^2."""
        excluded, detected, kept_sinks, share_num, kept_sink_num, total = [], [], [], 0.0, 0.0, 0.0
        flag = SinkRule(SinkMode.EXCLUDE, ratio=self.sink.ratio)
        for unsteered, base, group in zip(self.unsteered, self.base, self.positions, strict=True):
            per_position = (unsteered - base).pow(2).sum(dim=-1)  # [P, T]
            for p, positions in enumerate(group):
                flagged = flag.excluded(unsteered[p].norm(dim=-1), base[p].norm(dim=-1))
                excluded.append(positions.excluded)
                detected.append(flagged)
                kept_sinks.append(positions.compared(flagged))
                share_num += float(per_position[p, list(positions.excluded)].sum())
                kept_sink_num += float(per_position[p, kept_sinks[-1]].sum())
                total += float(per_position[p].sum())
        return SinkReport(self.sink, excluded, share_num / total if total else 0.0, detected, kept_sinks,
                          kept_sink_num / total if total else 0.0, "sum_t ||Z_t(0) - Z_t(theta0)||^2")


def _weights(positions: list[Positions], length: int, device: torch.device) -> torch.Tensor:
    weights = torch.zeros(len(positions), length, device=device)
    for p, kept in enumerate(positions):
        weights[p, kept.kept.to(device)] = 1.0 / kept.kept.numel()
    return weights


def _group_by_length(inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Prompts `[1, T]` stacked into `[P, T]` batches of equal length (no padding needed)."""
    by_length: dict[int, list[torch.Tensor]] = {}
    for ids in inputs:
        by_length.setdefault(int(ids.shape[1]), []).append(ids)
    return [torch.cat(group) for _, group in sorted(by_length.items())]


# --- optimisation ---------------------------------------------------------------------------------


def adam_vector(objective: OrthoLoss, init: torch.Tensor, basis: torch.Tensor, config: OrthoConfig,
                on_step: StepFn, should_stop: StopFn) -> torch.Tensor:
    """The seed's loop for one vector: Adam step, then project theta onto the complement of `basis`."""
    assert config.lr is not None and config.steps is not None
    theta = nn.Parameter(init.clone())
    optimizer = torch.optim.Adam([theta], lr=config.lr)
    for step in range(config.steps):
        if should_stop():
            raise Stopped
        optimizer.zero_grad(set_to_none=True)
        loss = objective.value(theta[None])[0]
        total = loss + config.l2 * theta.pow(2).sum() if config.l2 else loss
        total.backward()
        with torch.no_grad():
            optimizer.step()
            theta.copy_(project(theta[None], basis)[0])
        on_step(step + 1, objective.reported(float(loss.detach())), float(theta.detach().norm()))
    return theta.detach()


def lbfgs_vector(objective: OrthoLoss, init: torch.Tensor, basis: torch.Tensor, config: OrthoConfig,
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
            raise Stopped
        optimizer.zero_grad(set_to_none=True)
        theta = phi - (phi @ basis32.T) @ basis32 if basis32.shape[0] else phi
        loss = objective.value(theta[None])[0]
        total = loss + config.l2 * theta.pow(2).sum() if config.l2 else loss
        total.backward()
        evaluations[0] += 1
        on_step(evaluations[0], objective.reported(float(loss.detach())), float(theta.detach().norm()))
        return total

    optimizer.step(closure)
    return project(phi.detach()[None], basis)[0]


# --- the search --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoundVector:
    """One orthogonal vector as `search` hands it over (a job checkpoints it at once)."""

    index: int  # 1-based: its row in an ortho bank, theta0 being row 0
    theta: torch.Tensor  # [d_model] float32 cpu
    loss: float  # the objective in activation units (`OrthoLoss.reported`), without the l2 penalty
    steps: int  # Adam steps or L-BFGS loss evaluations used


@dataclass(frozen=True)
class SearchResult:
    vectors: torch.Tensor  # [n, d_model] float32 cpu: the vectors this call found, in order
    losses: list[float]
    steps: list[int]
    seconds: float  # wall time of the optimisation
    stopped: bool  # should_stop fired
    collapsed_norm: float | None  # set when the next vector's norm collapsed (the run ends there)


def search(
    lm: LoadedModel,
    theta0: torch.Tensor,  # [d_model]
    inputs: list[torch.Tensor],  # encoded prompts, [1, T] each
    *,
    source_layer: int,
    target_layer: int,
    config: OrthoConfig,
    done: torch.Tensor | None = None,  # [m, d_model]: vectors 1..m found earlier (resume)
    on_vector: Callable[[FoundVector], None] | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    on_sink: Callable[[SinkReport], None] | None = None,
) -> SearchResult:
    """Vectors m+1..count orthogonal to theta0 and to each other, each reproducing theta0's effect.

    Tensors in, tensors out: no file is written (`jobs.run_ortho` adds the bank file, the
    checkpoints and resume). The start of vector i depends only on (seed, i), so a search
    continued from `done` gives what an uninterrupted one would.
    """
    config.check(lm.hidden_size)
    check_layers(lm, source_layer, target_layer)
    if not inputs:
        raise InputError("give at least one prompt (`prompts`)")
    if theta0.shape != (lm.hidden_size,):
        raise InputError(f"theta0 must be [{lm.hidden_size}], got {list(theta0.shape)}")
    theta0_norm = float(theta0.norm())
    if not theta0_norm > 0:
        raise InputError("theta0 is the zero vector")
    cfg = config.resolved(theta0_norm)
    assert cfg.sink is not None
    device = lm.device
    earlier = done.float().cpu() if done is not None else torch.zeros(0, lm.hidden_size)
    if cfg.objective == Objective.CONTINUATION:
        inputs = [with_continuation(lm, ids, source_layer, theta0, cfg.continuation) for ids in inputs]
    forward = (_CachedForward if cfg.strategy == Strategy.FAST else _FullForward)(lm, source_layer, target_layer, inputs)
    objective = OrthoLoss(forward, cfg.objective, cfg.sink, theta0.float().to(device))
    if on_sink is not None:
        on_sink(objective.report())
    optimise = lbfgs_vector if cfg.strategy == Strategy.FAST else adam_vector
    basis = extend_basis(torch.zeros(0, lm.hidden_size, dtype=torch.float64, device=device),
                         torch.cat([theta0.float().cpu()[None], earlier]).to(device))
    stop = should_stop or (lambda: False)
    found: list[FoundVector] = []
    start = time.perf_counter()
    stopped, collapsed_norm = False, None
    for index in range(len(earlier) + 1, cfg.count + 1):
        init = project(init_vector(index, cfg.seed, lm.hidden_size).to(device)[None], basis)[0]
        init = (init / init.norm() * theta0_norm).float()
        used = [0]

        def report(step: int, loss: float, norm: float, index: int = index, used: list[int] = used) -> None:
            used[0] = step
            if on_progress is not None:
                on_progress(OrthoProgress(index - 1, cfg.count, index, step, cfg.steps or 0, loss, norm,
                                          time.perf_counter() - start))

        try:
            theta = optimise(objective, init, basis, cfg, report, stop)
        except Stopped:
            stopped = True
            break
        norm = float(theta.norm())
        if norm <= cfg.collapse_ratio * theta0_norm:
            collapsed_norm = norm
            break
        with torch.no_grad():
            loss = objective.reported(float(objective.value(theta[None])[0]))
        vector = FoundVector(index, theta.float().cpu(), loss, used[0])
        found.append(vector)
        basis = extend_basis(basis, vector.theta[None].to(device))
        if on_vector is not None:
            on_vector(vector)
    vectors = torch.stack([f.theta for f in found]) if found else torch.zeros(0, lm.hidden_size)
    return SearchResult(vectors, [f.loss for f in found], [f.steps for f in found], time.perf_counter() - start,
                        stopped, collapsed_norm)


def with_continuation(lm: LoadedModel, ids: torch.Tensor, source_layer: int, theta0: torch.Tensor, tokens: int) -> torch.Tensor:
    """`ids  # [1, T]` followed by the first `tokens` - 1 tokens of theta0's greedy answer (the inputs `kl_seq` reads)."""
    from melbo_tui.metrics import greedy_continuation

    answer = greedy_continuation(lm, ids.to(lm.device), source_layer, theta0.float(), tokens)[:-1]
    return torch.cat([ids, torch.tensor([answer], dtype=ids.dtype, device=ids.device)], dim=1)


LOSS_TEXT = {
    Objective.TOKENS: "mean over compared positions t of ||Z_t(theta) - Z_t(theta0)||^2 (ortho_loss stores its square root)",
    Objective.SEED: "||z(theta) - z(theta0)||_2, z = target layer meaned over the compared positions",
    Objective.CONTINUATION: "mean over compared positions t of the prompt and theta0's greedy continuation (teacher-forced) "
                            "of ||Z_t(theta) - Z_t(theta0)||^2 (ortho_loss stores its square root)",
}


def hyperparameters(config: OrthoConfig) -> dict[str, Any]:
    """What a bank records of a resolved config, JSON-plain; `resume` must match it."""
    assert config.sink is not None
    fast = config.strategy == Strategy.FAST
    extra = {"continuation": config.continuation} if config.objective == Objective.CONTINUATION else {}
    return {**extra,
        "strategy": config.strategy.value, "objective": config.objective.value, "steps": config.steps, "lr": config.lr,
        "l2": config.l2, "seed": config.seed, "collapse_ratio": config.collapse_ratio, "sink": config.sink.record(),
        "optimizer": f"L-BFGS (strong Wolfe, history {LBFGS_HISTORY})" if fast else "Adam (constant lr)",
        "loss": LOSS_TEXT[config.objective],
        "projection": "inside the loss (theta = P phi), float64 orthonormal basis" if fast
        else "after every step, float64 orthonormal basis",
    }
