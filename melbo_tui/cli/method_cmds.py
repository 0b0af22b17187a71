"""Commands for the bank makers beyond MELBO: dct (Deep Causal Transcoding) and jacobian (power steering)."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import Progress, TaskID

from melbo_tui.cli.app import app, command_line
from melbo_tui.cli.options import (
    SEED_PROMPT,
    BatchSizeOpt,
    DeterministicOpt,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    OffloadOpt,
    PromptsOpt,
    RawOpt,
    RevisionOpt,
    SeedOpt,
    SystemOpt,
    ThreadsOpt,
    TrustOpt,
    check_output,
    err,
    layers_for,
    measure_into,
    open_model,
    progress,
)
from melbo_tui.errors import InputError
from melbo_tui.kinds import Metric
from melbo_tui.scale import SCAN_POINTS

if TYPE_CHECKING:
    from melbo_tui.calibration import RatioPoint

LAYERS_HELP = ("layer S = the output of decoder block S (0-based) = HF hidden_states[S+1]; the DCT and power-steering "
               "code name the same point by the block whose INPUT it is, S+1")
SourceOpt = Annotated[int | None, typer.Option(help=f"Add vectors here (default ~L/3); {LAYERS_HELP}.")]
TargetOpt = Annotated[int | None, typer.Option(help="Measure the response at the output of this block (default ~2L/3).")]
RadiusOpt = Annotated[str, typer.Option("--radius", "-R", help="Norm R of every vector, or 'auto': DCT's calibration (nonlinear/linear response = 0.5).")]


def _radius(text: str) -> float | None:
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--radius must be a number or 'auto', got '{text}'") from None
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"--radius must be a finite number > 0, got {text}")
    return value


def _calibration_reporter(bar: Progress, task: TaskID) -> Callable[[RatioPoint], None]:

    def report(point: RatioPoint) -> None:
        done = int(bar.tasks[task].completed) + 1  # the scan's points, then Brent's, one at a time: the total grows
        bar.update(task, completed=done, total=max(done + 1, bar.tasks[task].total or 0), info=f"R={point.radius:.4g} ratio={point.ratio:.3f}")

    return report


@app.command()
def dct(
    out: Annotated[Path, typer.Option("--out", "-o", help="Bank file to write (.safetensors), also after every iteration.")],
    prompt: PromptsOpt = None,
    source_layer: SourceOpt = None,
    target_layer: TargetOpt = None,
    num_vectors: Annotated[int, typer.Option(help="m, the number of factors (vectors) fitted at once.")] = 64,
    iterations: Annotated[int, typer.Option(help="tau, orthogonalised gradient iterations (the authors': 10).")] = 10,
    radius: RadiusOpt = "auto",
    d_proj: Annotated[int, typer.Option(help="Random target directions of the Jacobian initialisation (the authors': 32).")] = 32,
    beta: Annotated[float, typer.Option(help="Damping of the U and V updates, in (0, 1] (1 = none, the authors' default).")] = 1.0,
    positions: Annotated[int, typer.Option(help="Last token positions averaged (the authors': 3; the first token, the attention sink, never counts).")] = 3,
    seed: SeedOpt = 0,
    batch_size: BatchSizeOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue the checkpoint in --out (same settings).")] = False,
    system: SystemOpt = None, raw: RawOpt = None,
    evaluate: Annotated[bool, typer.Option("--eval/--no-eval", help="Measure every vector at the end (kl_unsteered, the KL worth reading in this bank; see eval --help).")] = True,
    model: ModelOpt = None, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", trust_remote_code: TrustOpt = False,
    revision: RevisionOpt = None, threads: ThreadsOpt = None, offload_folder: OffloadOpt = None,
    deterministic: DeterministicOpt = False,
) -> None:
    """Deep Causal Transcoding: many steering vectors at once, ranked (Mack & Turner 2024).

    Fits Delta(R v) ~ sum_l alpha_l expm1(<v_l, v>) u_l to the change of the target layer
    (averaged over the last 3 positions and the prompts; several prompts are the norm) when
    R v is added at every position of the source layer. Rows: R v_l sorted by alpha_l^2
    (column `score`); U, alpha and the order are stored beside them. Ctrl-C keeps the last
    finished iteration in --out; --resume continues it to the uninterrupted result.
    """
    from melbo_tui.bank import load_bank
    from melbo_tui.dct import DCTConfig, DCTProgress, DCTRun, resume_point, run_dct
    from melbo_tui.models import ModelRequest

    check_output(out)
    config = DCTConfig(num_vectors=num_vectors, iterations=iterations, radius=_radius(radius), d_proj=d_proj, beta=beta,
                       positions=positions, seed=seed, batch_size=batch_size)
    if resume and out.exists():
        load_bank(out)  # a bad file fails before the model loads
    prompts = prompt or [SEED_PROMPT]
    lm = open_model(ModelRequest(model, device, dtype, trust_remote_code, revision, threads, offload_folder, deterministic))
    source, target = layers_for(lm, source_layer, target_layer)
    run = DCTRun(source, target, prompts, config, system, bool(raw))
    run.inputs(lm)  # every input error before the progress bar
    if resume and out.exists():
        resume_point(out, lm, run)  # refuse a mismatched or finished bank before any work
    try:
        with progress() as bar:
            calibrating = bar.add_task("calibrating R", total=SCAN_POINTS, info="", visible=config.radius is None and not resume)
            fitting = bar.add_task("DCT factor passes", total=num_vectors * (iterations + 2), info="")

            def report(p: DCTProgress) -> None:
                offset = {"init": 0, "iterate": num_vectors * (1 + p.iteration), "rank": num_vectors * (1 + iterations)}[p.stage]
                bar.update(fitting, completed=offset + p.factors_done,
                           info=f"{p.stage} {p.iteration}/{p.iterations}" if p.stage == "iterate" else p.stage)

            bank = run_dct(lm, run, out, resume=resume, created_by=command_line(), on_progress=report,
                           on_calibration=_calibration_reporter(bar, calibrating))
    except KeyboardInterrupt:
        if out.exists() and not load_bank(out).meta.extra.get("complete"):
            err.print(f"interrupted: iteration {load_bank(out).meta.extra.get('iteration')} saved in {out} (--resume continues)")
        sys.exit(130)
    assert bank is not None
    extra = bank.meta.extra
    if "calibration" in extra:
        err.print(f"R = {bank.meta.radius:.4g} (DCT calibration: nonlinear/linear response = 0.5)")
    score = bank.metrics[Metric.SCORE]
    if evaluate:
        measure_into(out, lm, bank, prompts[0], system, bool(raw) or not lm.has_chat_template)
    err.print(f"wrote {out}: {len(bank)} DCT vectors, R={bank.meta.radius:.4g}, layers {source}->{target}, "
              f"{len(prompts)} prompt(s); alpha^2 {float(score[0]):.4g} (row 0) .. {float(score[-1]):.4g}; "
              f"fit {extra['seconds']:.1f} s ({extra['seconds'] / len(bank):.2f} s/vector)")


@app.command()
def jacobian(
    out: Annotated[Path, typer.Option("--out", "-o", help="Bank file to write (.safetensors).")],
    prompt: PromptsOpt = None,
    source_layer: SourceOpt = None,
    target_layer: TargetOpt = None,
    num_vectors: Annotated[int, typer.Option(help="k, the number of top singular directions.")] = 16,
    iterations: Annotated[int, typer.Option(help="Block power iterations before the Rayleigh-Ritz step (power steering: 5).")] = 5,
    radius: RadiusOpt = "auto",
    positions: Annotated[int, typer.Option(help="Last token positions in the Jacobian (power steering: 2).")] = 2,
    seed: SeedOpt = 0,
    batch_size: BatchSizeOpt = None,
    system: SystemOpt = None, raw: RawOpt = None,
    evaluate: Annotated[bool, typer.Option("--eval/--no-eval", help="Measure every vector at the end (kl_unsteered, the KL worth reading in this bank; see eval --help).")] = True,
    model: ModelOpt = None, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", trust_remote_code: TrustOpt = False,
    revision: RevisionOpt = None, threads: ThreadsOpt = None, offload_folder: OffloadOpt = None,
    deterministic: DeterministicOpt = False,
) -> None:
    """Power steering: the top right singular directions of the source->target Jacobian at 0.

    J maps a vector added at the source layer to the change of the target layer at the last 2
    positions of each prompt (stacked over prompts). Rows: R v_i by decreasing singular value
    (column `sigma`); the sign of each direction is arbitrary (steer with --scale -1 too).
    """
    from melbo_tui.bank import save_bank
    from melbo_tui.jacobian import JacobianConfig, run_jacobian
    from melbo_tui.models import ModelRequest
    from melbo_tui.prompts import encode
    from melbo_tui.response import check_inputs

    check_output(out)
    config = JacobianConfig(num_vectors=num_vectors, iterations=iterations, radius=_radius(radius), positions=positions,
                            seed=seed, batch_size=batch_size)
    prompts = prompt or [SEED_PROMPT]
    lm = open_model(ModelRequest(model, device, dtype, trust_remote_code, revision, threads, offload_folder, deterministic))
    config.check(lm.hidden_size)
    source, target = layers_for(lm, source_layer, target_layer)
    raw_prompts = bool(raw) or not lm.has_chat_template
    check_inputs(lm, source, target, [encode(lm, p, system, raw_prompts) for p in prompts], positions)
    with progress() as bar:
        calibrating = bar.add_task("calibrating R", total=SCAN_POINTS, info="", visible=config.radius is None)
        products = bar.add_task("products with J^T J", total=iterations + 1, info="")
        bank = run_jacobian(lm, source, target, prompts, config, system, bool(raw), created_by=command_line(),
                            on_progress=lambda done, total: bar.update(products, completed=done, total=total),
                            on_calibration=_calibration_reporter(bar, calibrating))
    save_bank(bank, out)
    if evaluate:
        measure_into(out, lm, bank, prompts[0], system, raw_prompts)
    if "calibration" in bank.meta.extra:
        err.print(f"R = {bank.meta.radius:.4g} (DCT calibration: nonlinear/linear response = 0.5)")
    sigma = bank.metrics[Metric.SIGMA]
    seconds = float(bank.meta.extra["seconds"])
    err.print(f"wrote {out}: {len(bank)} Jacobian directions, R={bank.meta.radius:.4g}, layers {source}->{target}, "
              f"{len(prompts)} prompt(s); sigma {float(sigma[0]):.4g} .. {float(sigma[-1]):.4g}; "
              f"{seconds:.1f} s ({seconds / len(bank):.2f} s/vector)")

