"""Deep Causal Transcoding (Mack & Turner, Dec 2024): many steering vectors from ~10 batched iterations.

DCT fits the source->target response (`response.TargetResponse.mean`: the change of the target
residual, averaged over the last 3 positions and the prompts, when theta is added at the source)
with an exponential model of m factors:

    Delta(R v) ~ sum_l alpha_l expm1(<v_l, v>) u_l,     |u_l| = |v_l| = 1,

and steers with R v_l. The fit is the authors' (REFERENCE s.7, code amack315/melbo-dct-post):
- init ("jacobian"): d_proj = 32 random unit directions r_j at the target, their vector-Jacobian
  products J^T r_j at theta = 0 stacked into J_proj `[d_proj, d]`; V = the first m right singular
  directions of J_proj (rows of Vh; the authors' code slices columns, a slip not copied; when
  m > d_proj the rest are Vh's basis of the null space); U = normalise(Delta(R V));
- each of `iterations` steps (orthogonalised gradient iteration, OGI): V <- Q of a plain QR of
  V; for every factor one VJP at R v_l gives Delta(R v_l) and g_l = R J(R v_l)^T u_l (u_l from
  the previous step); U <- normalise(beta Delta + (1 - beta) U), V <- normalise(beta g + (1 - beta) V)
  (beta = 1: the authors' default). U is never orthogonalised; the final V is unit-norm but not
  orthogonal (as the authors');
- ranking: a_l = <u_l, Delta(R v_l)> at the final V, K = (U U^T) * expm1(V V^T),
  alpha = K^-1 a; rows are sorted by alpha_l^2 (the bank's `score` column).

The QR's sign convention (Householder: a column may come out as -v) is the authors' and is kept
on purpose: the exponential model makes (-u_l, -v_l) a local maximum of sum_l <u_l, Delta(R v_l)>
too, with a weaker response, and on synthetic maps with planted factors a sign-preserving QR got
stuck there far more often (`scripts/dct_synthetic.py`, numbers in docs/methods.md). OGI is a
heuristic: it recovers most, not always all, planted factors.

Batching: the VJPs of a chunk of factors are one forward of [chunk x prompts] rows and one
backward (rows are independent, so the gradient of sum_l <u_l, Delta_l> is every J_l^T u_l at
once). Measured on the embedded model (32 factors x 4 prompts, one thread, median of 3, two runs
of `scripts/measure_dct_products.py` on a busy shared 2-core machine): batched autograd with eager
attention 7.1 / 8.1 s, `torch.func.vmap(vjp)` 10.0 / 8.2 s, batched autograd with PyTorch's fused
(sdpa) attention 8.9 / 7.0 s. vmap was never faster, so plain batched autograd; eager against sdpa
is within this machine's noise, and eager is what the calibration's JVP and power iteration's
double backward need, so the whole fit uses it.

State after every iteration (`DCTState`) is handed to `on_state`; `fit_dct(state=...)` continues
from it and, the init being seeded and every later step deterministic, ends where an
uninterrupted fit would. `run_dct` does it all on a model: prompts, calibration of R when none
is given, the fit, and a bank (kind `dct`) written after every iteration.

The bank: rows = R v_l sorted by alpha^2 (metric `score`), `aux.u` = the matching u_l,
metadata `alpha` (signed), `order` (row i = factor order[i] of the fit), `objective` per
iteration, and `calibration` when R was calibrated. A checkpoint (`complete: false`) holds the
unsorted state instead (`aux.v`, `aux.u`, `iteration`), which `--resume` continues.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from melbo_tui.bank import BankMeta, VectorBank, load_bank, save_bank
from melbo_tui.calibration import RatioPoint, calibrate_dct
from melbo_tui.errors import BankError, InputError, Stopped
from melbo_tui.kinds import BankKind, Metric
from melbo_tui.metrics import batched
from melbo_tui.models import LoadedModel
from melbo_tui.prompts import encode
from melbo_tui.response import TargetResponse, check_inputs
from melbo_tui.scale import ModelScale, model_scale

ResponseFn = Callable[[torch.Tensor], torch.Tensor]  # thetas [K, d] -> Delta [K, d_out], differentiable
StopFn = Callable[[], bool]


@dataclass(frozen=True)
class DCTConfig:
    """How to fit; `radius` None means: calibrate it first (`calibration.calibrate_dct`)."""

    num_vectors: int = 64  # m, the number of factors
    iterations: int = 10  # tau, OGI steps
    radius: float | None = None
    d_proj: int = 32  # random target directions of the Jacobian init
    beta: float = 1.0  # damping of the U and V updates (1: none, the authors' default)
    positions: int = 3  # last token positions averaged (the authors': 3)
    seed: int = 0
    batch_size: int | None = None  # factors per forward (None: 64 rows per forward on CPU, 256 on CUDA)

    def check(self, hidden_size: int) -> None:
        if not 0 < self.num_vectors <= hidden_size:
            raise InputError(f"`num_vectors` must be 1..{hidden_size} (d_model), got {self.num_vectors}")
        if self.iterations < 0:
            raise InputError(f"`iterations` must be >= 0, got {self.iterations}")
        if self.radius is not None and not (0 < self.radius < float("inf")):
            raise InputError(f"`radius` must be a finite number > 0, got {self.radius}")
        if not 0 < self.d_proj <= hidden_size:
            raise InputError(f"`d_proj` must be 1..{hidden_size}, got {self.d_proj}")
        if not 0 < self.beta <= 1:
            raise InputError(f"`beta` must be in (0, 1], got {self.beta}")
        if self.batch_size is not None and self.batch_size <= 0:
            raise InputError(f"`batch_size` must be positive, got {self.batch_size}")


@dataclass
class DCTState:
    """Where a fit stands after `iteration` OGI steps (0: just initialised)."""

    v: torch.Tensor  # [m, d] unit rows
    u: torch.Tensor  # [m, d_out] unit rows
    iteration: int
    objective: list[float] = field(default_factory=list)  # sum_l <u_l, Delta(R v_l)> of each step


@dataclass(frozen=True)
class DCTProgress:
    stage: str  # "init", "iterate", "rank"
    iteration: int  # OGI steps done
    iterations: int
    factors_done: int  # within this stage
    factors: int


@dataclass
class DCTResult:
    """The fitted factors, sorted by alpha^2 (largest first)."""

    vectors: torch.Tensor  # [m, d] = R v_l, float32 cpu
    u: torch.Tensor  # [m, d_out] unit
    alpha: torch.Tensor  # [m]
    order: list[int]  # row i is factor order[i] of the unsorted fit
    radius: float
    objective: list[float]
    seconds: float

    @property
    def score(self) -> torch.Tensor:
        return self.alpha.pow(2)


def fit_dct(
    response: ResponseFn,
    hidden_size: int,
    config: DCTConfig,
    radius: float,
    device: torch.device,
    rows_per_factor: int = 1,
    state: DCTState | None = None,
    on_state: Callable[[DCTState], None] | None = None,
    on_progress: Callable[[DCTProgress], None] | None = None,
    should_stop: StopFn | None = None,
) -> DCTResult | None:
    """Fit DCT to `response` at norm `radius`; None if `should_stop` fired (the last state was handed to `on_state`).

    `rows_per_factor` (the number of prompts) sizes the default chunk. `state` continues a fit.
    """
    config.check(hidden_size)
    if not 0 < radius < float("inf"):
        raise InputError(f"radius must be a finite number > 0, got {radius}")
    start = time.perf_counter()
    chunk = factor_chunk(config.batch_size, device, rows_per_factor)
    report = on_progress or (lambda _p: None)
    stop = should_stop or (lambda: False)
    try:
        if state is None:
            state = dct_init(response, hidden_size, config, radius, device, chunk, report, stop)
            if on_state is not None:
                on_state(state)
        while state.iteration < config.iterations:
            state = ogi_step(response, state, config, radius, chunk, report, stop)
            if on_state is not None:
                on_state(state)
        alpha = rank_factors(response, state, radius, chunk, config.iterations, report, stop)
    except Stopped:
        return None
    order = sorted(range(len(alpha)), key=lambda i: -float(alpha[i]) ** 2)
    index = torch.tensor(order)
    return DCTResult(vectors=(radius * state.v[index]).float().cpu(), u=state.u[index].float().cpu(),
                     alpha=alpha[index].float().cpu(), order=order, radius=radius, objective=list(state.objective),
                     seconds=time.perf_counter() - start)


def dct_init(response: ResponseFn, hidden_size: int, config: DCTConfig, radius: float, device: torch.device,
             chunk: int, report: Callable[[DCTProgress], None], stop: StopFn) -> DCTState:
    """The authors' "jacobian" init: SVD of d_proj VJPs at 0, then U from Delta(R V)."""
    m = config.num_vectors
    generator = torch.Generator().manual_seed(config.seed)
    zeros = torch.zeros(1, hidden_size, device=device)
    d_out = int(_no_grad(response, zeros).shape[1])
    probes = _unit(torch.randn(config.d_proj, d_out, generator=generator)).to(device)  # [d_proj, d_out]

    def vjp_at_zero(cotangents: torch.Tensor) -> torch.Tensor:
        _check(stop)
        x = torch.zeros(cotangents.shape[0], hidden_size, device=device, requires_grad=True)
        (grad,) = torch.autograd.grad((response(x) * cotangents).sum(), x)
        return grad.detach()

    report(DCTProgress("init", 0, config.iterations, 0, m))
    j_proj = batched(vjp_at_zero, probes, chunk, device).double()  # [d_proj, d]
    _, _, vh = torch.linalg.svd(j_proj, full_matrices=m > min(j_proj.shape))
    v = vh[:m].float()  # [m, d] orthonormal rows
    u = _unit(_forward(response, radius * v, chunk, device, stop))
    report(DCTProgress("init", 0, config.iterations, m, m))
    return DCTState(v=v, u=u, iteration=0)


def ogi_step(response: ResponseFn, state: DCTState, config: DCTConfig, radius: float, chunk: int,
             report: Callable[[DCTProgress], None], stop: StopFn) -> DCTState:
    """One orthogonalised gradient iteration over every factor."""
    v = torch.linalg.qr(state.v.T).Q.T  # [m, d] orthonormal rows (plain QR, as the authors')
    m, d = v.shape
    done = [0]

    def step(rows: torch.Tensor) -> torch.Tensor:  # rows: [c, d + d_out] = (v_l, u_l)
        _check(stop)
        v_c, u_c = rows[:, :d], rows[:, d:]
        x = (radius * v_c).requires_grad_(True)
        delta = response(x)  # [c, d_out]
        (grad,) = torch.autograd.grad((delta * u_c).sum(), x)
        done[0] += rows.shape[0]
        report(DCTProgress("iterate", state.iteration, config.iterations, done[0], m))
        g = radius * grad  # R J(R v_l)^T u_l
        return torch.cat([delta.detach(), g, (delta.detach() * u_c).sum(dim=1, keepdim=True)], dim=1)

    out = batched(step, torch.cat([v, state.u], dim=1), chunk, v.device)
    delta, g, dots = out[:, :-d - 1], out[:, -d - 1:-1], out[:, -1]
    beta = config.beta
    return DCTState(v=_unit(beta * g + (1 - beta) * v), u=_unit(beta * delta + (1 - beta) * state.u),
                    iteration=state.iteration + 1, objective=[*state.objective, float(dots.sum())])


def rank_factors(response: ResponseFn, state: DCTState, radius: float, chunk: int, iterations: int,
                 report: Callable[[DCTProgress], None], stop: StopFn) -> torch.Tensor:
    """alpha = K^-1 a with a_l = <u_l, Delta(R v_l)> and K = (U U^T) * expm1(V V^T): `[m]`."""
    m = state.v.shape[0]
    report(DCTProgress("rank", iterations, iterations, 0, m))
    delta = _forward(response, radius * state.v, chunk, state.v.device, stop)  # [m, d_out]
    report(DCTProgress("rank", iterations, iterations, m, m))
    return solve_alpha(state.u, state.v, delta)


def solve_alpha(u: torch.Tensor, v: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """The ranking's linear solve in float64; a singular K (two identical factors) falls back to the pseudo-inverse."""
    u64, v64 = u.double(), v.double()
    a = (u64 * delta.double()).sum(dim=1)  # [m]
    kernel = (u64 @ u64.T) * torch.expm1(v64 @ v64.T)  # [m, m]
    try:
        alpha = torch.linalg.solve(kernel, a)
    except RuntimeError:  # torch.linalg.LinAlgError: singular
        alpha = torch.linalg.pinv(kernel) @ a
    ranked: torch.Tensor = alpha.float()
    return ranked


def factor_chunk(batch_size: int | None, device: torch.device, rows_per_factor: int) -> int:
    """Factors per forward: `batch_size`, else 64 rows (CPU) or 256 (GPU) of [factor x prompt]."""
    return batch_size or max(1, (256 if device.type == "cuda" else 64) // rows_per_factor)


def _check(stop: StopFn) -> None:
    if stop():
        raise Stopped


def _unit(x: torch.Tensor) -> torch.Tensor:
    unit: torch.Tensor = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return unit


def _no_grad(response: ResponseFn, thetas: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return response(thetas).detach()


def _forward(response: ResponseFn, thetas: torch.Tensor, chunk: int, device: torch.device, stop: StopFn) -> torch.Tensor:
    def run(rows: torch.Tensor) -> torch.Tensor:
        _check(stop)
        return _no_grad(response, rows)

    return batched(run, thetas, chunk, device)


# --- on a model ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DCTRun:
    """What `run_dct` fits: layers in our convention (output of block S), prompts as the user typed them."""

    source_layer: int
    target_layer: int
    prompts: list[str]
    config: DCTConfig
    system: str | None = None
    raw: bool = False

    def inputs(self, lm: LoadedModel) -> list[torch.Tensor]:
        """The prompts' token ids, checked (layers, the sink rule, the config): every input error before any work."""
        self.config.check(lm.hidden_size)
        inputs = [encode(lm, p, self.system, self.raw or not lm.has_chat_template) for p in self.prompts]
        check_inputs(lm, self.source_layer, self.target_layer, inputs, self.config.positions)
        return inputs


def run_dct(
    lm: LoadedModel,
    run: DCTRun,
    out: Path | None = None,
    resume: bool = False,
    created_by: str = "",
    on_progress: Callable[[DCTProgress], None] | None = None,
    on_calibration: Callable[[RatioPoint], None] | None = None,
    should_stop: StopFn | None = None,
) -> VectorBank | None:
    """Fit DCT on `lm` and return its bank (also written to `out`, after every iteration).

    None if `should_stop` fired; `out` then holds the last finished iteration and `resume=True`
    continues from it.
    """
    config = run.config
    raw = run.raw or not lm.has_chat_template
    inputs = run.inputs(lm)
    state: DCTState | None = None
    radius = config.radius
    calibration: dict[str, object] | None = None  # how R was chosen, as the bank records it
    if resume and out is not None and out.exists():
        state, radius, calibration = resume_point(out, lm, run)
    scale = model_scale(lm, run.source_layer)  # measured once: the bracket and every checkpoint's record
    with TargetResponse(lm, run.source_layer, run.target_layer, inputs, config.positions) as response:
        chunk = factor_chunk(config.batch_size, lm.device, len(inputs))
        if radius is None:  # the authors' bracket, in this model's units (`scale`)
            calibrated = calibrate_dct(response.mean, lm.hidden_size, lm.device, seed=config.seed, chunk=chunk,
                                       bracket=scale.bracket(), on_point=on_calibration)
            radius, calibration = calibrated.radius, calibrated.to_json()

        def checkpoint(current: DCTState) -> None:
            if out is not None:
                save_bank(_bank(lm, run, raw, radius, created_by, calibration, scale, state=current), out)

        result = fit_dct(response.mean, lm.hidden_size, config, radius, lm.device, len(inputs), state=state,
                         on_state=checkpoint, on_progress=on_progress, should_stop=should_stop)
    if result is None:
        return None
    bank = _bank(lm, run, raw, radius, created_by, calibration, scale, result=result)
    if out is not None:
        save_bank(bank, out)
    return bank


def _bank(lm: LoadedModel, run: DCTRun, raw: bool, radius: float, created_by: str,
          calibration: dict[str, object] | None, scale: ModelScale, state: DCTState | None = None,
          result: DCTResult | None = None) -> VectorBank:
    hyper = asdict(run.config)
    hyper.pop("radius")
    extra: dict[str, object] = {"complete": result is not None, "scale": scale.record(),
                                "provenance": lm.provenance()}
    if calibration is not None:
        extra["calibration"] = calibration
    meta = BankMeta(kind=BankKind.DCT, model=lm.name, hidden_size=lm.hidden_size, num_layers=lm.num_layers,
                    source_layer=run.source_layer, target_layer=run.target_layer, prompts=list(run.prompts),
                    system_prompt=run.system, radius=radius, base_index=0, hyperparameters=hyper,
                    created_by=created_by, raw_prompts=raw, extra=extra)
    if result is not None:
        extra.update(alpha=result.alpha.tolist(), order=result.order, objective=result.objective,
                     iterations=run.config.iterations, seconds=result.seconds)
        return VectorBank(vectors=result.vectors, meta=meta, metrics={Metric.SCORE.value: result.score},
                          aux={"u": result.u})
    assert state is not None
    extra.update(iteration=state.iteration, objective=state.objective)
    return VectorBank(vectors=(radius * state.v).float().cpu(), meta=meta,
                      aux={"v": state.v.float().cpu(), "u": state.u.float().cpu()})


def resume_point(out: Path, lm: LoadedModel, run: DCTRun) -> tuple[DCTState, float, dict[str, object] | None]:
    """The state, R and calibration saved in a checkpoint made with the same settings; a one-line error otherwise."""
    from melbo_tui.jobs import check_resumable  # jobs imports the methods; the methods import it only here

    raw = run.raw or not lm.has_chat_template
    bank = load_bank(out)
    meta = bank.meta
    hyper = asdict(run.config)
    hyper.pop("radius")
    settings: dict[str, object] = {"kind": BankKind.DCT, "source_layer": run.source_layer, "target_layer": run.target_layer,
                                   "prompts": list(run.prompts), "system": run.system, "raw": raw, **hyper}
    if run.config.radius is not None:
        settings["radius"] = run.config.radius
    check_resumable(out, bank, lm, settings)
    if meta.extra.get("complete"):
        raise InputError(f"`resume`: {out} is already a finished DCT bank")
    if "v" not in bank.aux or "u" not in bank.aux or meta.radius is None:
        raise BankError(f"`resume`: {out} is not a DCT checkpoint (no aux.v / aux.u)")
    device = lm.device
    state = DCTState(v=bank.aux["v"].to(device), u=bank.aux["u"].to(device), iteration=int(meta.extra.get("iteration", 0)),
                     objective=[float(x) for x in meta.extra.get("objective", [])])
    calibration = meta.extra.get("calibration")
    return state, float(meta.radius), calibration if isinstance(calibration, dict) else None
