"""MELBO: unsupervised steering vectors (Mack & Turner), trained several at a time.

Each vector theta (norm R) is added after `source_layer`; training *maximises* the change of the
residual stream at `target_layer`:

    loss(theta) = - sum_prompts ( sum_{t in target tokens} ||Z_t(theta) - Z_t(0)||_2^p )^(1/q)

with the norm over the hidden axis (the reference code takes it over the token axis; the two
agree only for p = 2). Optimiser as in the reference: AdamW(lr, betas=(0.9, 0.98),
weight_decay=0, amsgrad=True). Each step: project the gradient orthogonal to the earlier
vectors, remove its radial part, step, then project theta back orthogonal to the earlier
vectors and renormalise it to R.

Batching: `batch_vectors` vectors train together, one per batch row. Adam is element-wise, so a
batch is exactly that many independent optimisers; the only coupling is the constraint, kept
in order: vector j of a batch is orthogonal to all finished vectors and to members 0..j-1 of
its batch (a QR retraction after each step). `batch_vectors=1` is the reference's sequential loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from melbo_tui.bank import BankKind, BankMeta, VectorBank
from melbo_tui.errors import InputError
from melbo_tui.models import LoadedModel
from melbo_tui.prompts import encode
from melbo_tui.steering import check_layer, run_to_layer, steer


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

    def effective_lr(self, hidden_size: int) -> float:
        return self.lr if self.lr is not None else auto_lr(self.radius, hidden_size)

    def check(self, lm: LoadedModel) -> None:
        check_layer(lm, self.source_layer, "source layer")
        check_layer(lm, self.target_layer, "target layer")
        if self.target_layer <= self.source_layer:
            raise InputError(f"target layer {self.target_layer} must come after source layer {self.source_layer}")
        if not self.radius > 0 or self.radius == float("inf"):
            raise InputError(f"radius must be a finite number > 0, got {self.radius}")
        if self.num_vectors <= 0 or self.steps <= 0 or self.batch_vectors <= 0:
            raise InputError("--num-vectors, --steps and --batch-vectors must be positive")
        if self.num_vectors > lm.hidden_size:
            raise InputError(f"at most {lm.hidden_size} mutually orthogonal vectors fit in d_model={lm.hidden_size}")
        if not self.power > 0 or not self.q > 0:
            raise InputError("--power and --q must be > 0")
        if self.lr is not None and not self.lr > 0:
            raise InputError(f"--lr must be > 0, got {self.lr}")
        parse_token_slice(self.target_tokens)


@dataclass(frozen=True)
class TrainProgress:
    vectors_done: int
    batch_size: int  # vectors in the batch now training
    num_vectors: int
    step: int
    steps: int
    loss: float  # mean over the batch of the objective, negative = more change


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


def parse_token_slice(text: str) -> slice:
    """A python slice such as `-3:` or `:` selecting target token positions."""
    pieces = text.split(":")
    if len(pieces) not in (2, 3):
        raise InputError(f"--target-tokens must be a python slice such as ':' or '-3:', got '{text}'")
    try:
        values = [int(p) if p.strip() else None for p in pieces]
    except ValueError:
        raise InputError(f"--target-tokens must be a python slice such as ':' or '-3:', got '{text}'") from None
    if len(values) == 3 and values[2] == 0:
        raise InputError("--target-tokens slice step cannot be zero")
    return slice(*values)


def train_melbo(
    lm: LoadedModel,
    config: MelboConfig,
    prompts: list[str],
    system: str | None = None,
    raw: bool = False,
    on_progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    done: torch.Tensor | None = None,
    on_batch: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Train `config.num_vectors` mutually orthogonal vectors of norm R: `[N, d_model]` fp32 cpu.

    `done` holds vectors finished by an earlier, interrupted run (resume): the starting points
    of all vectors are drawn up front from `seed`, so a resumed run ends where an uninterrupted
    one would. `on_batch` gets every vector so far after each batch (for checkpoints). If
    `should_stop` fires, the vectors of the batches already finished are returned.
    """
    config.check(lm)
    if not prompts:
        raise InputError("give at least one --prompt")
    inputs = [encode(lm, p, system, raw) for p in prompts]
    token_slice = parse_token_slice(config.target_tokens)
    with torch.no_grad():
        unsteered = [run_to_layer(lm, config.target_layer, ids)[:, token_slice].float() for ids in inputs]
    if any(z.shape[1] == 0 for z in unsteered):
        raise InputError(f"--target-tokens {config.target_tokens} selects no token of some prompt")
    starts = torch.randn(config.num_vectors, lm.hidden_size, generator=torch.Generator().manual_seed(config.seed))
    vectors = done.float().cpu() if done is not None else torch.zeros(0, lm.hidden_size)
    while len(vectors) < config.num_vectors:
        size = min(config.batch_vectors, config.num_vectors - len(vectors))
        init = starts[len(vectors) : len(vectors) + size]
        basis = vectors / config.radius  # finished rows are orthogonal with norm R
        thetas = _train_batch(lm, config, inputs, unsteered, token_slice, init, basis, len(vectors), on_progress, should_stop)
        if thetas is None:
            break
        vectors = torch.cat([vectors, thetas])
        if on_batch is not None:
            on_batch(vectors)
    return vectors


def melbo_bank(lm: LoadedModel, config: MelboConfig, vectors: torch.Tensor, prompts: list[str],
               system: str | None, raw: bool, created_by: str) -> VectorBank:
    hyper = asdict(config)
    for key in ("source_layer", "target_layer", "radius"):
        hyper.pop(key)
    hyper.update(lr=config.effective_lr(lm.hidden_size), optimizer="AdamW", betas=[0.9, 0.98], weight_decay=0.0, amsgrad=True, norm_axis="hidden")
    meta = BankMeta(
        kind=BankKind.MELBO, model=lm.name, hidden_size=lm.hidden_size, num_layers=lm.num_layers,
        source_layer=config.source_layer, target_layer=config.target_layer, prompts=list(prompts),
        system_prompt=system, radius=config.radius, base_index=0, hyperparameters=hyper,
        created_by=created_by, raw_prompts=raw or not lm.has_chat_template,
    )
    return VectorBank(vectors=vectors.float().cpu(), meta=meta)


def target_change(lm: LoadedModel, config: MelboConfig, inputs: list[torch.Tensor],
                  unsteered: list[torch.Tensor], token_slice: slice, thetas: torch.Tensor) -> torch.Tensor:
    """The MELBO objective per vector `[K]`: sum over prompts of (sum_t ||dZ_t||^p)^(1/q)."""
    total = torch.zeros(thetas.shape[0], device=thetas.device)
    for ids, z0 in zip(inputs, unsteered, strict=True):
        batch_ids = ids.expand(thetas.shape[0], -1)
        with steer(lm, config.source_layer, thetas):
            z = run_to_layer(lm, config.target_layer, batch_ids)[:, token_slice].float()  # [K, t, d]
        per_token = (z - z0.to(z.device)).norm(dim=-1)  # [K, t], norm over the hidden axis
        total = total + per_token.pow(config.power).sum(dim=1).pow(1.0 / config.q).to(total.device)
    return total


def _train_batch(
    lm: LoadedModel,
    config: MelboConfig,
    inputs: list[torch.Tensor],
    unsteered: list[torch.Tensor],
    token_slice: slice,
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
    for step in range(config.steps):
        if should_stop is not None and should_stop():
            return None
        optimizer.zero_grad(set_to_none=True)
        objective = target_change(lm, config, inputs, unsteered, token_slice, theta)  # [K]
        (-objective.sum()).backward()
        with torch.no_grad():
            assert theta.grad is not None
            theta.grad = _project_gradient(theta.grad, theta.detach() / config.radius, basis)
            optimizer.step()
            theta.copy_(_retract(theta.detach(), basis, config.radius))
        if on_progress is not None:
            on_progress(TrainProgress(done, theta.shape[0], config.num_vectors, step + 1, config.steps, -float(objective.detach().mean())))
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
    return (units * radius).to(thetas.dtype)
