"""Commands over the core engine: train, calibrate (elbow or DCT's ratio), generate (add or ablate), info, import."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.table import Table

from melbo_tui import ablation
from melbo_tui.bank import BankKind, BankMeta, VectorBank, check_bank_fits, load_bank, save_bank
from melbo_tui.calibrate import CalibrationPoint, find_elbow, find_onset, sweep
from melbo_tui.cli.app import app, command_line
from melbo_tui.cli.options import (
    MAX_NEW_TOKENS,
    SEED_PROMPT,
    TEMPERATURE,
    BankArg,
    DeviceOpt,
    DtypeOpt,
    MaxTokensOpt,
    ModelOpt,
    PromptOpt,
    PromptsOpt,
    RawOpt,
    RevisionOpt,
    SeedOpt,
    SystemOpt,
    TemperatureOpt,
    ThreadsOpt,
    TrustOpt,
    err,
    open_model,
    progress,
    prompt_for,
)
from melbo_tui.compose import ComposeMode, Composition, check_scale, compose
from melbo_tui.errors import BankError, InputError
from melbo_tui.generation import GenerationSettings, generate_stream
from melbo_tui.melbo import MelboConfig, TrainProgress, default_layers, melbo_bank, train_melbo
from melbo_tui.models import LoadedModel, ModelRequest
from melbo_tui.prompts import encode
from melbo_tui.seed_import import read_seed_file
from melbo_tui.selection import parse_selection


def _layers(lm: LoadedModel, source: int | None, target: int | None) -> tuple[int, int]:
    default_source, default_target = default_layers(lm.num_layers)
    return (default_source if source is None else source, default_target if target is None else target)


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Bank file to write (.safetensors).")],
    prompt: PromptsOpt = None,
    source_layer: Annotated[int | None, typer.Option(help="Steer at the output of this block (default ~L/3).")] = None,
    target_layer: Annotated[int | None, typer.Option(help="Maximise the change at the output of this block (default ~2L/3).")] = None,
    radius: Annotated[float, typer.Option("--radius", "-R", help="Norm R of every vector.")] = 55.0,
    num_vectors: Annotated[int, typer.Option(help="How many mutually orthogonal vectors.")] = 8,
    steps: Annotated[int, typer.Option(help="Optimiser steps per vector (reference: 300-1200).")] = 300,
    power: Annotated[float, typer.Option(help="p in (sum_t ||dZ_t||^p)^(1/q).")] = 2.0,
    q: Annotated[float, typer.Option(help="q in (sum_t ||dZ_t||^p)^(1/q).")] = 1.0,
    target_tokens: Annotated[str, typer.Option(help="Python slice of target token positions, e.g. ':' or '-3:'.")] = ":",
    lr: Annotated[float | None, typer.Option(help="AdamW lr (default: 1e-3 rescaled to R and d_model, see docs; 1e-3 = reference).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the starting points; same seed, same vectors.")] = 0,
    batch_vectors: Annotated[int, typer.Option(help="Vectors trained together (1 = the reference's one-at-a-time loop).")] = 16,
    resume: Annotated[bool, typer.Option(help="Continue from the vectors already in --out.")] = False,
    system: SystemOpt = None, raw: RawOpt = None,
    model: ModelOpt = None, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", trust_remote_code: TrustOpt = False,
    revision: RevisionOpt = None, threads: ThreadsOpt = None,
) -> None:
    """Train MELBO vectors: norm R at the source layer, maximising the target-layer change."""
    prompts, raw = prompt or [SEED_PROMPT], bool(raw)
    lm = open_model(ModelRequest(model, device, dtype, trust_remote_code, revision, threads))
    source, target = _layers(lm, source_layer, target_layer)
    config = MelboConfig(source, target, radius, num_vectors, steps, power, q, target_tokens, lr, seed, batch_vectors)
    config.check(lm)
    done = _resume_vectors(out, lm, config, prompts) if resume else None
    created_by = command_line()

    def checkpoint(vectors: torch.Tensor) -> None:
        bank = melbo_bank(lm, config, vectors, prompts, system, raw, created_by)
        bank.meta.extra["complete"] = len(vectors) >= num_vectors
        save_bank(bank, out)

    with progress() as bar:
        task = bar.add_task("MELBO vector-steps", total=num_vectors * steps, info="")
        if done is not None:
            bar.update(task, completed=len(done) * steps)

        def report(p: TrainProgress) -> None:
            bar.update(task, completed=p.vectors_done * steps + p.step * p.batch_size,
                       info=f"vectors {p.vectors_done}/{p.num_vectors} objective {-p.loss:.4g}")

        vectors = train_melbo(lm, config, prompts, system, raw, on_progress=report, done=done, on_batch=checkpoint)
    norms = vectors.norm(dim=1)
    units = vectors / norms[:, None]
    cos = (units @ units.T).fill_diagonal_(0).abs().max().item() if len(vectors) > 1 else 0.0
    err.print(f"wrote {out}: {len(vectors)} vectors, norm {norms.min():.4f}..{norms.max():.4f} (R={radius}), "
              f"max |cos| {cos:.2e}, layers {source}->{target}")


def _resume_vectors(out: Path, lm: LoadedModel, config: MelboConfig, prompts: list[str]) -> torch.Tensor | None:
    if not out.exists():
        return None
    bank = load_bank(out)
    check_bank_fits(bank, lm.hidden_size, lm.num_layers, str(out))
    same = (bank.meta.kind == "melbo" and bank.meta.source_layer == config.source_layer
            and bank.meta.target_layer == config.target_layer and bank.meta.radius == config.radius
            and bank.meta.prompts == prompts and bank.meta.hyperparameters.get("seed") == config.seed
            and bank.meta.hyperparameters.get("batch_vectors") == config.batch_vectors)
    if not same:
        raise BankError(f"--resume: {out} was made with other settings (layers, R, prompts, seed or batch size)")
    if len(bank) >= config.num_vectors:
        raise InputError(f"--resume: {out} already holds {len(bank)} vectors")
    return bank.vectors


@app.command()
def calibrate(
    prompt: PromptsOpt = None,
    source_layer: Annotated[int | None, typer.Option(help="Source block (default ~L/3).")] = None,
    target_layer: Annotated[int | None, typer.Option(help="Target block (default ~2L/3).")] = None,
    method: Annotated[str, typer.Option(help="elbow: MELBO's sweep of quick vectors; dct: DCT's nonlinearity ratio of random directions.")] = "elbow",
    radii: Annotated[str, typer.Option(help="elbow: comma list of R values to try.")] = "10,20,30,40,50,55,60,70,80,100",
    num_vectors: Annotated[int, typer.Option(help="elbow: quick vectors per R.")] = 4,
    steps: Annotated[int, typer.Option(help="elbow: steps per quick vector.")] = 30,
    directions: Annotated[int, typer.Option(help="dct: random unit directions (the authors': 30).")] = 30,
    positions: Annotated[int, typer.Option(help="dct: last token positions averaged (as `melbo-tui dct`).")] = 3,
    seed: int = 0,
    system: SystemOpt = None, raw: RawOpt = None,
    model: ModelOpt = None, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", trust_remote_code: TrustOpt = False,
    revision: RevisionOpt = None, threads: ThreadsOpt = None,
) -> None:
    """Choose R: sweep it and mark the elbow (--method elbow), or DCT's root of nonlinear/linear = 0.5 (--method dct).

    dct: for random unit directions v, ratio(R) = sqrt(mean ||Delta(R v) - R J v||^2 / ||R J v||^2)
    with J v exact (forward-mode JVP), Delta the target-layer change averaged over the last
    --positions positions and the prompts; R = the root of ratio(R) = 0.5 (Brent) after a
    20-point log scan of [0.001, 100].
    """
    if method not in ("elbow", "dct"):
        raise InputError(f"unknown --method '{method}': use elbow or dct")
    if method == "dct":
        _calibrate_dct(prompt or [SEED_PROMPT], source_layer, target_layer, directions, positions, seed, system, bool(raw),
                       ModelRequest(model, device, dtype, trust_remote_code, revision, threads))
        return
    try:
        values = sorted(float(r) for r in radii.split(","))
    except ValueError:
        raise InputError(f"--radii must be a comma list of numbers, got '{radii}'") from None
    if any(not (math.isfinite(r) and r > 0) for r in values):
        raise InputError("every R in --radii must be a finite number > 0")
    prompts, raw = prompt or [SEED_PROMPT], bool(raw)
    lm = open_model(ModelRequest(model, device, dtype, trust_remote_code, revision, threads))
    source, target = _layers(lm, source_layer, target_layer)
    base = MelboConfig(source, target, values[0], num_vectors=num_vectors, steps=steps, seed=seed)
    base.check(lm)
    with progress() as bar:
        task = bar.add_task("calibrate", total=len(values), info="")
        points = sweep(lm, base, values, prompts, system, raw,
                       on_point=lambda i, p: bar.update(task, completed=i + 1, info=f"R={p.radius:g} change={p.mean_change:.1f}"))
    _print_calibration(points, source, target)


def _calibrate_dct(prompts: list[str], source_layer: int | None, target_layer: int | None, directions: int, positions: int,
                   seed: int, system: str | None, raw: bool, request: ModelRequest) -> None:
    import plotext as plt

    from melbo_tui.calibrate import calibrate_dct
    from melbo_tui.dct import factor_chunk
    from melbo_tui.response import TargetResponse

    lm = open_model(request)
    source, target = _layers(lm, source_layer, target_layer)
    raw = raw or not lm.has_chat_template
    inputs = [encode(lm, p, system, raw) for p in prompts]
    with progress() as bar, TargetResponse(lm, source, target, inputs, positions) as response:
        task = bar.add_task("calibrate (dct)", total=None, info="")
        result = calibrate_dct(response.mean, lm.hidden_size, lm.device, num_directions=directions, seed=seed,
                               chunk=factor_chunk(None, lm.device, len(inputs)),  # as `dct`: the same R to the last digit
                               on_point=lambda p: bar.update(task, advance=1, info=f"R={p.radius:.4g} ratio={p.ratio:.3f}"))
    table = Table(title=f"DCT nonlinearity ratio, block {source} -> block {target}, {directions} random directions")
    for column in ("R", "ratio", ""):
        table.add_column(column, justify="right")
    points = sorted([*result.scan, *result.evaluations], key=lambda p: p.radius)
    for p in points:
        table.add_row(f"{p.radius:.4g}", f"{p.ratio:.4f}", "<- root" if p.radius == result.radius else "")
    Console().print(table)
    plt.clear_figure()
    plt.plot([math.log10(p.radius) for p in result.scan], [p.ratio for p in result.scan], marker="dot", color="default")
    plt.horizontal_line(result.target)
    plt.vertical_line(math.log10(result.radius))
    plt.title("nonlinear / linear response vs log10 R (| = chosen R, - = 0.5)")
    plt.xlabel("log10 R")
    plt.plotsize(70, 18)
    plt.theme("clear")
    chart = plt.build()
    print(chart if sys.stdout.isatty() else plt.uncolorize(chart))
    print(f"R = {result.radius:.4g} (nonlinear / linear response = {result.target:g}; "
          f"melbo-tui dct --radius auto picks the same R for the same prompts, layers and seed)")


def _print_calibration(points: list[CalibrationPoint], source: int, target: int) -> None:
    import plotext as plt

    radii, changes = [p.radius for p in points], [p.mean_change for p in points]
    onset, saturation = find_onset(radii, changes), find_elbow(radii, changes)
    marks = {onset: "<- onset (elbow)", saturation: "<- saturation"}
    if onset == saturation:
        marks[onset] = "<- onset = saturation"
    table = Table(title=f"mean target-layer change, block {source} -> block {target}")
    for column in ("R", "mean ||dZ_t||", "relative to ||Z_t||", ""):
        table.add_column(column, justify="right")
    for i, p in enumerate(points):
        table.add_row(f"{p.radius:g}", f"{p.mean_change:.2f}", f"{p.mean_change / p.unsteered_norm:.3f}", marks.get(i, ""))
    Console().print(table)
    plt.clear_figure()
    plt.plot(radii, changes, marker="dot", color="default")
    plt.vertical_line(radii[onset])
    plt.vertical_line(radii[saturation])
    plt.title("target-layer change vs R (| = onset, saturation)")
    plt.xlabel("R")
    plt.plotsize(70, 18)
    plt.theme("clear")
    chart = plt.build()
    print(chart if sys.stdout.isatty() else plt.uncolorize(chart))
    print(f"onset (MELBO elbow) at R = {radii[onset]:g}, saturation at R = {radii[saturation]:g}: "
          "pick --radius from just past the onset; toward saturation, behaviours get stronger and less coherent")


@app.command()
def generate(
    bank_path: BankArg,
    vector: Annotated[int | None, typer.Option("--vector", "-v", help="Steer with this row.")] = None,
    mean: Annotated[str | None, typer.Option(help="Steer with the mean of rows SPEC (e.g. 1:11 or 0,3,7).")] = None,
    sum_: Annotated[str | None, typer.Option("--sum", help="Steer with the sum of rows SPEC.")] = None,
    mean_sqrt: Annotated[str | None, typer.Option(help="Steer with mean(rows SPEC) x sqrt(k).")] = None,
    unsteered: Annotated[bool, typer.Option(help="No steering: the model's own answer.")] = False,
    scale: Annotated[float, typer.Option(help="Multiply the steering vector by this.")] = 1.0,
    ablate: Annotated[bool, typer.Option("--ablate", help="Instead of adding the vector, project its direction out of what every block writes to the residual stream.")] = False,
    ablate_embedding: Annotated[bool, typer.Option("--ablate-embedding", help="With --ablate: also out of the embeddings (the residual then has ~0 along it everywhere).")] = False,
    prompt: PromptOpt = None, system: SystemOpt = None, raw: RawOpt = None,
    max_new_tokens: MaxTokensOpt = MAX_NEW_TOKENS, temperature: TemperatureOpt = TEMPERATURE, seed: SeedOpt = 0,
    model: ModelOpt = None, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", trust_remote_code: TrustOpt = False,
    revision: RevisionOpt = None, threads: ThreadsOpt = None,
) -> None:
    """Stream a completion steered by one vector or a composition of several (to stdout), or with it ablated.

    --ablate: the direction of the chosen vector (or composition; its norm and --scale do not
    matter) is projected out of every block's write to the residual stream, at every position
    and every generated token (the DCT authors' ablation, done with hooks).
    """
    chosen = [name for name, value in (("--vector", vector), ("--mean", mean), ("--sum", sum_), ("--mean-sqrt", mean_sqrt)) if value is not None]
    if unsteered:
        chosen.append("--unsteered")
    if len(chosen) != 1:
        raise InputError("choose exactly one of --vector, --mean, --sum, --mean-sqrt, --unsteered")
    if ablate_embedding and not ablate:
        raise InputError("--ablate-embedding goes with --ablate")
    if ablate and unsteered:
        raise InputError("--ablate needs a vector to ablate: --vector, --mean, --sum or --mean-sqrt")
    check_scale(scale)
    settings = GenerationSettings(max_new_tokens, temperature, seed)
    settings.check()
    bank = load_bank(bank_path)
    composition = _composition(bank, vector, mean, sum_, mean_sqrt, scale)
    lm = open_model(ModelRequest(model, device, dtype, trust_remote_code, revision, threads))
    check_bank_fits(bank, lm.hidden_size, lm.num_layers, str(bank_path))
    text, system, raw = prompt_for(bank, bank_path, prompt, system, raw)
    ids = encode(lm, text, system, raw)
    steering = None if composition is None else compose(bank.vectors, composition)
    label = "unsteered" if steering is None or composition is None else f"{composition.label}, |v|={steering.norm():.2f}"
    where = f"ablated from every block's writes{' and the embeddings' if ablate_embedding else ''}" if ablate else f"@ block {bank.meta.source_layer}"
    err.print(f"[dim]{label} {where} | prompt: {text!r} | T={temperature} seed={seed}[/]")
    def write(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    if ablate:
        assert steering is not None
        with ablation.ablate(lm, steering, embedding=ablate_embedding):
            result = generate_stream(lm, ids, bank.meta.source_layer, None, settings, on_text=write)
    else:
        result = generate_stream(lm, ids, bank.meta.source_layer, steering, settings, on_text=write)
    sys.stdout.write("\n")
    err.print(f"[dim]{result.num_tokens} tokens, {result.tokens_per_second:.1f} tok/s[/]")


def _composition(bank: VectorBank, vector: int | None, mean: str | None, sum_: str | None,
                 mean_sqrt: str | None, scale: float) -> Composition | None:
    n = len(bank)
    if vector is not None:
        return Composition(tuple(parse_selection(str(vector), n)), ComposeMode.MEAN, scale)
    for spec, mode in ((mean, ComposeMode.MEAN), (sum_, ComposeMode.SUM), (mean_sqrt, ComposeMode.MEAN_SQRT)):
        if spec is not None:
            return Composition(tuple(parse_selection(spec, n)), mode, scale)
    return None


@app.command()
def info(
    bank_path: BankArg,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show a bank's metadata and a summary of its vectors and metrics."""
    bank = load_bank(bank_path)
    norms = bank.norms()
    summary = {"file": str(bank_path), "vectors": len(bank), "hidden_size": bank.hidden_size,
               "norm": {"min": float(norms.min()), "max": float(norms.max()), "base": float(norms[bank.meta.base_index])},
               "metrics": {name: {"min": float(v.min()), "max": float(v.max()), "median": float(v.median())}
                           for name, v in bank.metrics.items()},
               "metadata": json.loads(bank.meta.to_json())}
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    table = Table(title=str(bank_path), show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    table.add_row("vectors", f"{len(bank)} x {bank.hidden_size}")
    table.add_row("norm", f"min {norms.min():.3f}  max {norms.max():.3f}  base {norms[bank.meta.base_index]:.3f}")
    for name, stats in summary["metrics"].items():
        table.add_row(name, f"min {stats['min']:.4g}  median {stats['median']:.4g}  max {stats['max']:.4g}")
    for key, value in summary["metadata"].items():
        table.add_row(key, json.dumps(value) if not isinstance(value, str) else value)
    Console().print(table)


@app.command("import")
def import_seed(
    file: Annotated[Path, typer.Argument(metavar="FILE.pt", help="The seed's bank: one [N, d] tensor, row 0 the base.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Bank file to write.")],
    source_layer: Annotated[int, typer.Option(help="Block whose output the vectors were added to (seed: 8).")],
    target_layer: Annotated[int, typer.Option(help="Target block (seed: 16).")],
    prompt: PromptsOpt = None,
    system: SystemOpt = None, raw: RawOpt = None,
    model: ModelOpt = None, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", trust_remote_code: TrustOpt = False,
    revision: RevisionOpt = None, threads: ThreadsOpt = None,
) -> None:
    """Import a seed-format .pt file (loaded with weights_only=True) into a bank."""
    seed_file = read_seed_file(file)
    lm = open_model(ModelRequest(model, device, dtype, trust_remote_code, revision, threads))
    if seed_file.vectors.shape[1] != lm.hidden_size:
        raise BankError(f"{file} holds {seed_file.vectors.shape[1]}-wide vectors but {lm.name} has hidden size {lm.hidden_size}")
    for what, rows in (("NaN/inf", seed_file.nan_rows), ("norm <= 0.1", seed_file.small_rows)):
        if rows:
            shown = ", ".join(map(str, rows[:20])) + (" ..." if len(rows) > 20 else "")
            err.print(f"dropped {len(rows)} row(s) with {what} (as the seed did): {shown}")
    meta = BankMeta(kind=BankKind.IMPORTED, model=lm.name, hidden_size=lm.hidden_size, num_layers=lm.num_layers,
                    source_layer=source_layer, target_layer=target_layer, prompts=prompt or [SEED_PROMPT],
                    system_prompt=system, radius=float(seed_file.vectors[0].norm()), base_index=0,
                    created_by=command_line(), raw_prompts=bool(raw) or not lm.has_chat_template,
                    extra={"source_file": str(file), "source_rows": seed_file.kept_rows,
                           "dropped_nan_rows": seed_file.nan_rows, "dropped_small_rows": seed_file.small_rows})
    bank = VectorBank(seed_file.vectors, meta)
    check_bank_fits(bank, lm.hidden_size, lm.num_layers, str(file))
    if target_layer <= source_layer:
        raise InputError(f"target layer {target_layer} must come after source layer {source_layer}")
    save_bank(bank, out)
    err.print(f"wrote {out}: {len(bank)} vectors, max |cos| between rows {seed_file.max_abs_cos:.2e}")
