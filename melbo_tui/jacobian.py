"""Power (Jacobian) steering (O. Ayyub 2026, obayyub/power_steering): the top right singular
directions of the source->target Jacobian, by block power iteration.

J = d Delta / d theta at theta = 0, with Delta the change of the target residual at the last
k = 2 token positions of each prompt when theta is added at the source (`response.TargetResponse`,
positions=2, as the power-steering code; the first token, the attention sink, is never one of
them). With several prompts J stacks them, scaled by 1/sqrt(P): sigma^2 are the eigenvalues of
the mean over prompts of J_p^T J_p, so a singular value does not grow with the number of prompts.

Block power iteration on J^T J (orthonormalised after every product), then a Rayleigh-Ritz step:
B = Q (J^T J) Q^T, eigenvectors of B rotate Q into the singular directions, sigma = sqrt(eig B).
`iterations` = 5 and one Rayleigh-Ritz product: the code's "~15 passes per layer pair" counts a
forward and two backward passes per product.

Products without a new forward pass: at theta = 0 the forward and the backward graph of
g(c) = J^T c are built once (`create_graph`); then J v = d<g(c), v>/dc (double backward) and
J^T (J v) = a backward of the same forward, both reusing the saved graph. Every row of the batch
is a copy of the same point, so a graph of `batch` rows serves any number of columns in chunks.

The sign of a singular direction is arbitrary; it is fixed so that the largest coordinate (in
absolute value) is positive. Steering with -v is as meaningful (`--scale -1`).

`run_jacobian` does it on a model and returns a bank (kind `jacobian`): rows = R v_i by
decreasing sigma (metric `sigma`), R given or calibrated the DCT way on the same response.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from melbo_tui.bank import BankMeta, VectorBank
from melbo_tui.calibration import RatioPoint, calibrate_dct
from melbo_tui.errors import InputError
from melbo_tui.kinds import BankKind, Metric
from melbo_tui.models import LoadedModel
from melbo_tui.prompts import encode
from melbo_tui.response import TargetResponse
from melbo_tui.scale import model_scale

ResponseFn = Callable[[torch.Tensor], torch.Tensor]  # thetas [K, d] -> [K, n_out], differentiable


@dataclass(frozen=True)
class JacobianConfig:
    num_vectors: int = 16  # k singular directions
    iterations: int = 5  # power iterations before the Rayleigh-Ritz step
    radius: float | None = None  # None: DCT's calibration
    positions: int = 2  # last token positions of each prompt
    seed: int = 0
    batch_size: int | None = None  # columns per product (None: all, at most 64)

    def check(self, hidden_size: int) -> None:
        if not 0 < self.num_vectors <= hidden_size:
            raise InputError(f"`num_vectors` must be 1..{hidden_size} (d_model), got {self.num_vectors}")
        if self.iterations < 0:
            raise InputError(f"`iterations` must be >= 0, got {self.iterations}")
        if self.radius is not None and not (0 < self.radius < float("inf")):
            raise InputError(f"`radius` must be a finite number > 0, got {self.radius}")
        if self.batch_size is not None and self.batch_size <= 0:
            raise InputError(f"`batch_size` must be positive, got {self.batch_size}")


@dataclass(frozen=True)
class JacobianResult:
    directions: torch.Tensor  # [k, d] orthonormal rows, sigma descending, float32 cpu
    sigma: torch.Tensor  # [k] singular values
    seconds: float


class NormalOperator:
    """v -> J^T J v for `thetas [K, d]` columns, from one forward pass at theta = 0."""

    def __init__(self, response: ResponseFn, hidden_size: int, rows: int, device: torch.device) -> None:
        self.rows = rows
        self._x = torch.zeros(rows, hidden_size, device=device, requires_grad=True)
        self._y = response(self._x).flatten(1)  # [rows, n_out]
        self._c = torch.zeros_like(self._y, requires_grad=True)
        (self._jt_c,) = torch.autograd.grad(self._y, self._x, self._c, create_graph=True)  # [rows, d] = J^T c

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        out = []
        for start in range(0, v.shape[0], self.rows):
            chunk = v[start:start + self.rows]
            padded = torch.cat([chunk, chunk.new_zeros(self.rows - chunk.shape[0], chunk.shape[1])])
            (jv,) = torch.autograd.grad(self._jt_c, self._c, padded.to(self._x.dtype), retain_graph=True)  # J v
            (jtjv,) = torch.autograd.grad(self._y, self._x, jv, retain_graph=True)  # J^T J v
            out.append(jtjv[: chunk.shape[0]].detach())
        return torch.cat(out)


def top_singular_directions(
    response: ResponseFn,
    hidden_size: int,
    config: JacobianConfig,
    device: torch.device,
    on_progress: Callable[[int, int], None] | None = None,
) -> JacobianResult:
    """The top `num_vectors` right singular directions of J (`response`'s Jacobian at 0) and their sigma.

    `on_progress(done, total)` counts the products with J^T J.
    """
    config.check(hidden_size)
    start = time.perf_counter()
    k = config.num_vectors
    total = config.iterations + 1
    report = on_progress or (lambda _d, _t: None)
    operator = NormalOperator(response, hidden_size, min(k, config.batch_size or 64), device)
    generator = torch.Generator().manual_seed(config.seed)
    q = _orthonormal_rows(torch.randn(k, hidden_size, generator=generator, dtype=torch.float64)).to(device)  # [k, d]
    report(0, total)
    for i in range(config.iterations):
        q = _orthonormal_rows(operator(q.float()).double())
        report(i + 1, total)
    w = operator(q.float()).double()  # [k, d] rows: J^T J q_i
    gram = q @ w.T  # [k, k] = Q (J^T J) Q^T
    eigenvalues, eigenvectors = torch.linalg.eigh((gram + gram.T) / 2)  # ascending
    order = torch.argsort(eigenvalues, descending=True)
    directions = eigenvectors[:, order].T @ q  # [k, d]
    sigma = eigenvalues[order].clamp_min(0).sqrt()
    report(total, total)
    peak = directions.abs().argmax(dim=1)
    signs = torch.sign(directions.gather(1, peak[:, None]))
    directions = directions * torch.where(signs == 0, torch.ones_like(signs), signs)
    return JacobianResult(directions.float().cpu(), sigma.float().cpu(), time.perf_counter() - start)



def _orthonormal_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows of `x  # [k, d]` orthonormalised in order (QR; the signs do not matter for a subspace)."""
    rows: torch.Tensor = torch.linalg.qr(x.T).Q.T
    return rows


def run_jacobian(
    lm: LoadedModel,
    source_layer: int,
    target_layer: int,
    prompts: list[str],
    config: JacobianConfig,
    system: str | None = None,
    raw: bool = False,
    created_by: str = "",
    on_progress: Callable[[int, int], None] | None = None,
    on_calibration: Callable[[RatioPoint], None] | None = None,
) -> VectorBank:
    """The top singular directions of the source->target Jacobian of `lm` as a bank (not written)."""
    config.check(lm.hidden_size)
    raw = raw or not lm.has_chat_template
    inputs = [encode(lm, p, system, raw) for p in prompts]
    scale = 1.0 / math.sqrt(len(inputs))
    units = model_scale(lm, source_layer)
    extra: dict[str, object] = {"complete": True, "scale": units.record(), "provenance": lm.provenance()}
    with TargetResponse(lm, source_layer, target_layer, inputs, config.positions) as response:
        def stacked(thetas: torch.Tensor) -> torch.Tensor:  # [K, P * positions * d], / sqrt(P)
            return response(thetas).flatten(1) * scale

        radius = config.radius
        if radius is None:
            calibration = calibrate_dct(stacked, lm.hidden_size, lm.device, seed=config.seed,
                                        bracket=units.bracket(), on_point=on_calibration)
            radius = calibration.radius
            extra["calibration"] = calibration.to_json()
        result = top_singular_directions(stacked, lm.hidden_size, config, lm.device, on_progress)
    hyper = asdict(config)
    hyper.pop("radius")
    extra["seconds"] = result.seconds
    meta = BankMeta(kind=BankKind.JACOBIAN, model=lm.name, hidden_size=lm.hidden_size, num_layers=lm.num_layers,
                    source_layer=source_layer, target_layer=target_layer, prompts=list(prompts), system_prompt=system,
                    radius=radius, base_index=0, hyperparameters=hyper, created_by=created_by, raw_prompts=raw,
                    extra=extra)
    return VectorBank(vectors=radius * result.directions, meta=meta, metrics={Metric.SIGMA.value: result.sigma})
