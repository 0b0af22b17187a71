"""MELBO: unsupervised steering vectors (Mack & Turner), trained several at a time.

Each vector theta (norm R) is added after `source_layer`; training *maximises* the change of the
residual stream at `target_layer`:

    loss(theta) = - sum_prompts ( sum_{t in target tokens} ||Z_t(theta) - Z_t(0)||_2^p )^(1/q)

with the norm over the hidden axis (the reference code takes it over the token axis; the two
agree only for p = 2). The target tokens are the `target_tokens` slice minus the attention sink
(`sink.SinkRule`, default: positions whose unsteered target-layer norm is > 10x the others'
median; `keep` compares them too, as the paper did): with p = 2 and every position, the sink
holds ~all of the objective on the embedded model (REFERENCE.md s.2a). Blocks 0..S run once
per prompt (`prefix.PrefixCache`); each step runs S+1..T. Optimiser as in the reference: AdamW(lr, betas=(0.9, 0.98),
weight_decay=0, amsgrad=True). Each step: project the gradient orthogonal to the earlier
vectors, remove its radial part, step, then project theta back orthogonal to the earlier
vectors and renormalise it to R.

Batching: `batch_vectors` vectors train together, one per batch row. Adam is element-wise, so a
batch is exactly that many independent optimisers; the only coupling is the constraint, kept
in order: vector j of a batch is orthogonal to all finished vectors and to members 0..j-1 of
its batch (a QR retraction after each step). `batch_vectors=1` is the reference's sequential loop.
A batch that runs out of GPU memory starts over at half the size (the vectors are then those of
the smaller batch size, not bit-identical to a run that fitted).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from melbo_tui.errors import InputError
from melbo_tui.models import LoadedModel
from melbo_tui.prefix import PrefixCache
from melbo_tui.sink import Positions, SinkReport, SinkRule, excluded_share, select_positions
from melbo_tui.steering import check_layer, run_to_layer


@dataclass(frozen=True)
class MelboConfig:
    source_layer: int
    target_layer: int
    radius: float
    num_vectors: int = 8
    steps: int = 300
    power: float = 2.0
    q: float = 1.0
    target_tokens: str = ":"
    lr: float | None = None  # None: `auto_lr`
    seed: int = 0
    batch_vectors: int = 16
    sink: SinkRule = field(default_factory=SinkRule)  # target positions left out of the objective

    def effective_lr(self, hidden_size: int) -> float:
        return self.lr if self.lr is not None else auto_lr(self.radius, hidden_size)

    def check(self, lm: LoadedModel) -> None:
        check_layer(lm, self.source_layer, "source layer")
        check_layer(lm, self.target_layer, "target layer")
        if self.target_layer <= self.source_layer:
            raise InputError(f"`target_layer` {self.target_layer} must come after `source_layer` {self.source_layer}")
        if not self.radius > 0 or self.radius == float("inf"):
            raise InputError(f"`radius` must be a finite number > 0, got {self.radius}")
        if self.num_vectors <= 0 or self.steps <= 0 or self.batch_vectors <= 0:
            raise InputError("`num_vectors`, `steps` and `batch_vectors` must be positive")
        if self.num_vectors > lm.hidden_size:
            raise InputError(f"`num_vectors` {self.num_vectors}: at most {lm.hidden_size} mutually orthogonal vectors fit in d_model={lm.hidden_size}")
        if not self.power > 0 or not self.q > 0:
            raise InputError("`power` and `q` must be > 0")
        if self.lr is not None and not self.lr > 0:
            raise InputError(f"`lr` must be > 0, got {self.lr}")
        parse_token_slice(self.target_tokens)


@dataclass(frozen=True)
class TrainProgress:
    vectors_done: int
    batch_size: int  # vectors in the batch now training
    num_vectors: int
    step: int
    steps: int
    loss: float  # mean over the batch of the objective, negative = more change


REPORT_SECONDS = 0.1  # progress reports at most this often


def auto_lr(radius: float, hidden_size: int) -> float:
    """The reference's lr=1e-3, rescaled so that one Adam step turns theta by the same angle.

    Adam moves every coordinate by about lr per step, while a coordinate of theta is about
    R / sqrt(d). The reference ran R=4 on a 2048-wide model; keeping lr * sqrt(d) / R equal to
    that gives 1e-3 there and ~0.026 for R=55 on the embedded 576-wide model. `--lr 1e-3` is
    the reference verbatim.
    """
    return 1e-3 * (radius / math.sqrt(hidden_size)) / (4.0 / math.sqrt(2048))


def default_layers(num_layers: int) -> tuple[int, int]:
    """About L/3 and 2L/3, the seed's 8 and 16 on a 24-block model."""
    return max(0, round(num_layers / 3)), min(num_layers - 1, round(2 * num_layers / 3))


def resolve_layers(num_layers: int, source_layer: int | None, target_layer: int | None) -> tuple[int, int]:
    """The layers asked for, each defaulting to `default_layers` (every face fills them in the same way)."""
    default_source, default_target = default_layers(num_layers)
    return (default_source if source_layer is None else source_layer, default_target if target_layer is None else target_layer)


def parse_token_slice(text: str) -> slice:
    """A python slice such as `-3:` or `:` selecting target token positions."""
    pieces = text.split(":")
    if len(pieces) not in (2, 3):
        raise InputError(f"`target_tokens` must be a python slice such as ':' or '-3:', got '{text}'")
    try:
        values = [int(p) if p.strip() else None for p in pieces]
    except ValueError:
        raise InputError(f"`target_tokens` must be a python slice such as ':' or '-3:', got '{text}'") from None
    if len(values) == 3 and values[2] == 0:
        raise InputError("`target_tokens` slice step cannot be zero")
    return slice(*values)


def train(
    lm: LoadedModel,
    config: MelboConfig,
    inputs: list[torch.Tensor],  # encoded prompts, [1, T] each
    on_progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    done: torch.Tensor | None = None,
    on_batch: Callable[[torch.Tensor], None] | None = None,
    on_sink: Callable[[SinkReport], None] | None = None,
) -> torch.Tensor:
    """Train `config.num_vectors` mutually orthogonal vectors of norm R: `[N, d_model]` fp32 cpu.

    `done` holds vectors finished by an earlier, interrupted run (resume): the starting points
    of all vectors are drawn up front from `seed`, so a resumed run ends where an uninterrupted
    one would. `on_batch` gets every vector so far after each batch (for checkpoints). If
    `should_stop` fires, the vectors of the batches already finished are returned. `on_sink`
    hears once which target positions the objective compares.
    """
    config.check(lm)
    if not inputs:
        raise InputError("give at least one prompt (`prompts`)")
    objective = MelboObjective(lm, config, inputs)
    starts = torch.randn(config.num_vectors, lm.hidden_size, generator=torch.Generator().manual_seed(config.seed))
    if on_sink is not None:
        first = _retract(starts[: config.batch_vectors].to(lm.device), torch.zeros(0, lm.hidden_size, device=lm.device), config.radius)
        on_sink(objective.report(first))
    vectors = done.float().cpu() if done is not None else torch.zeros(0, lm.hidden_size)
    limit = config.batch_vectors  # halves when a batch runs out of GPU memory
    while len(vectors) < config.num_vectors:
        size = min(limit, config.num_vectors - len(vectors))
        init = starts[len(vectors) : len(vectors) + size]
        basis = vectors / config.radius  # finished rows are orthogonal with norm R
        try:
            thetas = _train_batch(lm, config, objective, init, basis, len(vectors), on_progress, should_stop)
        except torch.OutOfMemoryError:  # raised by CUDA (and MPS); a CPU allocation failure is another error
            if size == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            limit = size // 2  # the batch starts over, smaller; its vectors then differ from a run that fit
            continue
        if thetas is None:
            break
        vectors = torch.cat([vectors, thetas])
        if on_batch is not None:
            on_batch(vectors)
    return vectors


class MelboObjective:
    """The objective on fixed prompts: blocks 0..S cached, the unsteered target layer, the compared positions.

    Steering adds theta after block S, so blocks 0..S are the same for every theta: they run once
    (`PrefixCache`) and each step runs only blocks S+1..T.
    """

    def __init__(self, lm: LoadedModel, config: MelboConfig, inputs: list[torch.Tensor]) -> None:
        self.lm, self.config = lm, config
        token_slice = parse_token_slice(config.target_tokens)
        self.caches = [PrefixCache(lm, config.source_layer, ids) for ids in inputs]
        with torch.no_grad():
            unsteered = [run_to_layer(lm, config.target_layer, ids)[0].float() for ids in inputs]  # [T, d] each
        self.positions: list[Positions] = []
        for z in unsteered:
            positions = select_positions(z.norm(dim=-1), config.sink, token_slice)
            self.positions.append(positions)
        self.unsteered = unsteered

    def per_position(self, thetas: torch.Tensor, prompt: int) -> torch.Tensor:
        """`[K, T]`: ||Z_t(theta) - Z_t(0)||_2 at every position of one prompt (norm over the hidden axis)."""
        z = self.caches[prompt].target(thetas, self.config.target_layer).float()  # [K, T, d]
        change: torch.Tensor = (z - self.unsteered[prompt].to(z.device)[None]).norm(dim=-1)
        return change

    def change(self, thetas: torch.Tensor) -> torch.Tensor:
        """`[K]`: sum over prompts of (sum_{t compared} ||dZ_t||^p)^(1/q), what training maximises."""
        total = torch.zeros(thetas.shape[0], device=thetas.device)
        for prompt, positions in enumerate(self.positions):
            per_token = self.per_position(thetas, prompt)[:, positions.kept.to(thetas.device)]
            total = total + per_token.pow(self.config.power).sum(dim=1).pow(1.0 / self.config.q).to(total.device)
        return total

    def report(self, thetas: torch.Tensor) -> SinkReport:
        """Which positions are left out, and their share of sum_t ||dZ_t||^p at `thetas` (the first starts)."""
        flag = SinkRule(ratio=self.config.sink.ratio)
        shares, kept_shares, detected, kept_sinks = [], [], [], []
        with torch.no_grad():
            for prompt, positions in enumerate(self.positions):
                terms = self.per_position(thetas, prompt).pow(self.config.power).sum(dim=0).cpu()  # [T]
                flagged = flag.excluded(self.unsteered[prompt].norm(dim=-1))
                detected.append(flagged)
                kept_sinks.append(positions.compared(flagged))
                shares.append(excluded_share(terms, positions))
                kept_shares.append(float(terms[kept_sinks[-1]].sum() / terms.sum()) if kept_sinks[-1] else 0.0)
        return SinkReport(self.config.sink, [p.excluded for p in self.positions], sum(shares) / len(shares),
                          detected, kept_sinks, sum(kept_shares) / len(kept_shares),
                          f"sum_t ||dZ_t||^{self.config.power:g} at random vectors of norm R")


def _train_batch(
    lm: LoadedModel,
    config: MelboConfig,
    objective: MelboObjective,
    init: torch.Tensor,  # [K, d_model]
    finished: torch.Tensor,  # [F, d_model] orthonormal
    done: int,
    on_progress: Callable[[TrainProgress], None] | None,
    should_stop: Callable[[], bool] | None,
) -> torch.Tensor | None:
    device = lm.device
    basis = finished.to(device)
    theta = torch.nn.Parameter(_retract(init.to(device), basis, config.radius))
    optimizer = torch.optim.AdamW([theta], lr=config.effective_lr(lm.hidden_size), betas=(0.9, 0.98), weight_decay=0.0, amsgrad=True)
    reported = 0.0
    for step in range(config.steps):
        if should_stop is not None and should_stop():
            return None
        optimizer.zero_grad(set_to_none=True)
        change = objective.change(theta)  # [K]
        (-change.sum()).backward()
        with torch.no_grad():
            assert theta.grad is not None
            theta.grad = _project_gradient(theta.grad, theta.detach() / config.radius, basis)
            optimizer.step()
            theta.copy_(_retract(theta.detach(), basis, config.radius))
        now = time.perf_counter()
        if on_progress is not None and (now - reported >= REPORT_SECONDS or step + 1 == config.steps):
            reported = now  # float() waits for the device: on a GPU, only a few times a second
            on_progress(TrainProgress(done, theta.shape[0], config.num_vectors, step + 1, config.steps, -float(change.detach().mean())))
    return theta.detach().float().cpu()


def _project_gradient(grad: torch.Tensor, units: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Remove from each row's gradient the finished directions, the earlier batch members and its own radial part."""
    grad = grad - (grad @ basis.T) @ basis if basis.shape[0] else grad  # [K, d]
    coeff = grad @ units.T  # [K, K]: coeff[j, i] = <g_j, u_i>
    coeff = torch.tril(coeff)  # row j keeps i <= j: earlier members and itself (radial)
    return grad - coeff @ units


def _retract(thetas: torch.Tensor, basis: torch.Tensor, radius: float) -> torch.Tensor:
    """Back onto the constraint: orthogonal to `basis`, to earlier rows, norm `radius`.

    Projecting out `basis` twice ("twice is enough") keeps orthogonality at fp32 rounding
    level; QR then orthonormalises the rows in order, like Gram-Schmidt but stable.
    """
    x = thetas.float()
    for _ in range(2):
        if basis.shape[0]:
            x = x - (x @ basis.T) @ basis
    q, r = torch.linalg.qr(x.T)  # x.T = q r, columns of q orthonormal, in row order
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    units = (q * signs).T  # [K, d], same orientation as the rows they came from
    retracted: torch.Tensor = (units * radius).to(thetas.dtype)
    return retracted
