"""Commands over the core engine: train, calibrate (the take-off or DCT's ratio), generate (add or ablate), info, import."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from melbo_tui.cli.app import app, command_line
from melbo_tui.cli.options import (
    MAX_NEW_TOKENS,
    SEED_PROMPT,
    TEMPERATURE,
    BankArg,
    DeterministicOpt,
    DeviceOpt,
    DtypeOpt,
    MaxTokensOpt,
    ModelOpt,
    OffloadOpt,
    PromptOpt,
    PromptsOpt,
    RawOpt,
    RevisionOpt,
    SeedOpt,
    SinkOpt,
    SystemOpt,
    TemperatureOpt,
    ThreadsOpt,
    TrustOpt,
    check_output,
    err,
    layers_for,
    open_bank,
    open_model,
    print_sink,
    progress,
    prompt_for,
)
from melbo_tui.compose import ComposeMode, Composition, check_scale, compose
from melbo_tui.errors import BankError, InputError
from melbo_tui.kinds import BankKind, CalibrationMethod
from melbo_tui.labels import read_labels
from melbo_tui.scale import CALIBRATE_RADII, MELBO_RADIUS, REFERENCE_UNIT, model_scale, round_significant
from melbo_tui.selection import parse_selection

if TYPE_CHECKING:
    from melbo_tui.bank import VectorBank
    from melbo_tui.calibration import CalibrationPoint
    from melbo_tui.models import ModelRequest


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Bank file to write (.safetensors).")],
    prompt: PromptsOpt = None,
    source_layer: Annotated[int | None, typer.Option(help="Steer at the output of this block (default ~L/3).")] = None,
    target_layer: Annotated[int | None, typer.Option(help="Maximise the change at the output of this block (default ~2L/3).")] = None,
    radius: Annotated[float | None, typer.Option("--radius", "-R", help="Norm R of every vector. Default: 15 in SmolLM2's units (what `calibrate` recommends there at blocks 8 -> 16), i.e. 15 x the model's typical residual coordinate at the source layer / SmolLM2's at block 8 (see docs/conventions.md); run `calibrate` for your model and layers.")] = None,
    num_vectors: Annotated[int, typer.Option(help="How many mutually orthogonal vectors.")] = 8,
    steps: Annotated[int, typer.Option(help="Optimiser steps per vector (reference: 300-1200).")] = 300,
    power: Annotated[float, typer.Option(help="p in (sum_t ||dZ_t||^p)^(1/q).")] = 2.0,
    q: Annotated[float, typer.Option(help="q in (sum_t ||dZ_t||^p)^(1/q).")] = 1.0,
    target_tokens: Annotated[str, typer.Option(help="Python slice of target token positions, e.g. ':' or '-3:' (the sink rule then applies).")] = ":",
    sink: SinkOpt = "exclude",
    lr: Annotated[float | None, typer.Option(help="AdamW lr (default: 1e-3 rescaled to R and d_model, see docs; 1e-3 = reference).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the starting points; same seed, same vectors.")] = 0,
    batch_vectors: Annotated[int, typer.Option(help="Vectors trained together (1 = the reference's one-at-a-time loop).")] = 16,
    resume: Annotated[bool, typer.Option(help="Continue from the vectors already in --out.")] = False,
    system: SystemOpt = None, raw: RawOpt = None,
    model: ModelOpt = None, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", trust_remote_code: TrustOpt = False,
    revision: RevisionOpt = None, threads: ThreadsOpt = None, offload_folder: OffloadOpt = None,
    deterministic: DeterministicOpt = False,
) -> None:
    """Train MELBO vectors: norm R at the source layer, maximising the target-layer change."""
    from melbo_tui.jobs import run_melbo
    from melbo_tui.melbo import MelboConfig, TrainProgress
    from melbo_tui.models import ModelRequest
    from melbo_tui.sink import SinkRule

    check_output(out)
    prompts, raw = prompt or [SEED_PROMPT], bool(raw)
    lm = open_model(ModelRequest(model, device, dtype, trust_remote_code, revision, threads, offload_folder, deterministic))
    source, target = layers_for(lm, source_layer, target_layer)
    if radius is None:
        scale = model_scale(lm, source)
        radius = scale.radius()
        err.print(f"R = {radius:g}: this model's default ({MELBO_RADIUS:g} x {scale.factor:.3g}, its typical residual coordinate "
                  f"at block {source} / SmolLM2's at block 8); `calibrate` measures the right R", highlight=False)
    config = MelboConfig(source, target, radius, num_vectors, steps, power, q, target_tokens, lr, seed, batch_vectors,
                         SinkRule.parse(sink))
    config.check(lm)
    with progress() as bar:
        task = bar.add_task("MELBO vector-steps", total=num_vectors * steps, info="")

        def report(p: TrainProgress) -> None:
            bar.update(task, completed=p.vectors_done * steps + p.step * p.batch_size,
                       info=f"vectors {p.vectors_done}/{p.num_vectors} objective {-p.loss:.4g}")

        run = run_melbo(lm, config, prompts, out, system=system, raw=raw, resume=resume, created_by=command_line(),
                        on_progress=report, on_sink=print_sink)
        bar.update(task, completed=num_vectors * steps, info=f"vectors {len(run.bank)}/{num_vectors}")
    vectors = run.bank.vectors
    norms = vectors.norm(dim=1)
    units = vectors / norms[:, None]
    cos = (units @ units.T).fill_diagonal_(0).abs().max().item() if len(vectors) > 1 else 0.0
    err.print(f"wrote {out}: {len(vectors)} vectors, norm {norms.min():.4f}..{norms.max():.4f} (R={config.radius:g}), "
              f"max |cos| {cos:.2e}, layers {source}->{target}")


@app.command()
def calibrate(
    prompt: PromptsOpt = None,
    source_layer: Annotated[int | None, typer.Option(help="Source block (default ~L/3).")] = None,
    target_layer: Annotated[int | None, typer.Option(help="Target block (default ~2L/3).")] = None,
    method: Annotated[CalibrationMethod, typer.Option(help="melbo: quick MELBO vectors per R, the take-off of their change; dct: DCT's nonlinearity ratio of random directions.")] = CalibrationMethod.MELBO,
    radii: Annotated[str | None, typer.Option(help=f"melbo: comma list of R values to try. Default: {','.join(f'{r:g}' for r in CALIBRATE_RADII)} in SmolLM2's units (x the model's typical residual coordinate at the source layer / SmolLM2's at block 8).")] = None,
    num_vectors: Annotated[int, typer.Option(help="melbo: quick vectors per R.")] = 4,
    steps: Annotated[int, typer.Option(help="melbo: steps per quick vector (fewer make the take-off look later than it is).")] = 100,
    sink: SinkOpt = "exclude",
    directions: Annotated[int, typer.Option(help="dct: random unit directions (the authors': 30).")] = 30,
    positions: Annotated[int, typer.Option(help="dct: last token positions averaged (as `melbo-tui dct`).")] = 3,
    seed: SeedOpt = 0,
    system: SystemOpt = None, raw: RawOpt = None,
    model: ModelOpt = None, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", trust_remote_code: TrustOpt = False,
    revision: RevisionOpt = None, threads: ThreadsOpt = None, offload_folder: OffloadOpt = None,
    deterministic: DeterministicOpt = False,
) -> None:
    """Choose R: the take-off of quick MELBO vectors' change (--method melbo), or DCT's root of nonlinear/linear = 0.5.

    melbo: for each R, quick vectors are trained and their mean target-layer change over the
    compared positions is recorded; the take-off is the first R whose change per unit R has
    doubled, and the recommendation the largest R tried at or below 3/4 of it.
    dct: for random unit directions v, ratio(R) = sqrt(mean ||Delta(R v) - R J v||^2 / ||R J v||^2)
    with J v exact (forward-mode JVP), Delta the target-layer change averaged over the last
    --positions positions and the prompts; R = the root of ratio(R) = 0.5 (Brent) after a
    20-point log scan of [0.001, 100] (in SmolLM2's units: x the model's typical residual coordinate at the source layer / SmolLM2's at block 8).
    """
    from melbo_tui.calibration import sweep
    from melbo_tui.melbo import MelboConfig
    from melbo_tui.models import ModelRequest
    from melbo_tui.sink import SinkMode, SinkRule

    request = ModelRequest(model, device, dtype, trust_remote_code, revision, threads, offload_folder, deterministic)
    if method == CalibrationMethod.DCT:
        _calibrate_dct(prompt or [SEED_PROMPT], source_layer, target_layer, directions, positions, seed, system, bool(raw), request)
        return
    values: list[float] | None = None
    if radii is not None:
        try:
            values = sorted(float(r) for r in radii.split(","))
        except ValueError:
            raise InputError(f"--radii must be a comma list of numbers, got '{radii}'") from None
        if any(not (math.isfinite(r) and r > 0) for r in values):
            raise InputError("every R in --radii must be a finite number > 0")
    prompts, raw = prompt or [SEED_PROMPT], bool(raw)
    lm = open_model(request)
    source, target = layers_for(lm, source_layer, target_layer)
    if values is None:
        scale = model_scale(lm, source)
        values = scale.radii()
        err.print(f"radii {','.join(f'{r:g}' for r in values)}: SmolLM2's sweep in this model's units (x {scale.factor:.3g}, "
                  f"its typical residual coordinate {scale.unit:.4g} at block {source} / {REFERENCE_UNIT:g})", highlight=False)
    base = MelboConfig(source, target, values[0], num_vectors=num_vectors, steps=steps, seed=seed, sink=SinkRule.parse(sink))
    base.check(lm)
    with progress() as bar:
        task = bar.add_task("calibrate", total=len(values), info="")
        points = sweep(lm, base, values, prompts, system, raw, on_sink=print_sink,
                       on_point=lambda i, p: bar.update(task, completed=i + 1, info=f"R={p.radius:g} change={p.mean_change:.1f}"))
    _print_calibration(points, source, target, keep_sink=base.sink.mode == SinkMode.KEEP)


def _calibrate_dct(prompts: list[str], source_layer: int | None, target_layer: int | None, directions: int, positions: int,
                   seed: int, system: str | None, raw: bool, request: ModelRequest) -> None:
    import plotext as plt

    from melbo_tui.calibration import calibrate_dct
    from melbo_tui.dct import factor_chunk
    from melbo_tui.prompts import encode
    from melbo_tui.response import TargetResponse

    lm = open_model(request)
    source, target = layers_for(lm, source_layer, target_layer)
    raw = raw or not lm.has_chat_template
    inputs = [encode(lm, p, system, raw) for p in prompts]
    with progress() as bar, TargetResponse(lm, source, target, inputs, positions) as response:
        task = bar.add_task("calibrate (dct)", total=None, info="")
        result = calibrate_dct(response.mean, lm.hidden_size, lm.device, num_directions=directions, seed=seed,
                               chunk=factor_chunk(None, lm.device, len(inputs)),  # as `dct`: the same R to the last digit
                               bracket=model_scale(lm, source).bracket(),
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


def _no_takeoff_advice(radii: list[float], changes: list[float], takeoff: int | None, keep_sink: bool) -> str:
    """What to try when the sweep recommends nothing: which end of the range to extend, from the curve's shape."""
    def fmt(values: list[float]) -> str:
        return ",".join(f"{round_significant(v):g}" for v in values)

    if takeoff is not None:  # it took off at the second R: nothing tried lies at or below 3/4 of it
        return (f"take-off at R = {radii[takeoff]:g}, already the second R tried: start lower, "
                f"e.g. --radii {fmt([radii[0] * f for f in (0.125, 0.25, 0.5, 0.75, 1.0)])}")
    per_unit = [c / r for r, c in zip(radii, changes, strict=True)]
    if per_unit[-1] < 0.8 * per_unit[0]:  # the response saturates from the smallest R on: the take-off lies below the range
        return (f"no take-off within these radii: the change per unit R falls from the smallest R on ({per_unit[0]:.3g} -> "
                f"{per_unit[-1]:.3g}), so these radii are all past it. Try smaller radii, e.g. --radii "
                f"{fmt([radii[0] * f for f in (0.03, 0.06, 0.12, 0.25, 0.5, 1.0)])}")
    advice = (f"no take-off within these radii: the change grows about linearly. Try larger radii, e.g. --radii "
              f"{fmt([radii[-1] * f for f in (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)])}")
    if keep_sink:
        advice += " (with --sink keep the sink's change, which grows in proportion to R, hides the take-off: try --sink exclude)"
    return advice


def _print_calibration(points: list[CalibrationPoint], source: int, target: int, keep_sink: bool) -> None:
    import plotext as plt

    from melbo_tui.calibration import find_takeoff, recommend

    radii, changes = [p.radius for p in points], [p.mean_change for p in points]
    takeoff = find_takeoff(radii, changes)
    pick = recommend(radii, takeoff)
    marks = {i: m for i, m in ((takeoff, "<- take-off"), (pick, "<- recommended")) if i is not None}
    table = Table(title=f"mean target-layer change, block {source} -> block {target}")
    for column in ("R", "mean ||dZ_t||", "per unit R", "relative to ||Z_t||", ""):
        table.add_column(column, justify="right")
    for i, p in enumerate(points):
        table.add_row(f"{p.radius:g}", f"{p.mean_change:.2f}", f"{p.mean_change / p.radius:.2f}",
                      f"{p.mean_change / p.unsteered_norm:.3f}", marks.get(i, ""))
    Console().print(table)
    plt.clear_figure()
    plt.plot(radii, changes, marker="dot", color="default")
    for i in marks:
        plt.vertical_line(radii[i])
    plt.title("target-layer change vs R (| = recommended, take-off)")
    plt.xlabel("R")
    plt.plotsize(70, 18)
    plt.theme("clear")
    chart = plt.build()
    print(chart if sys.stdout.isatty() else plt.uncolorize(chart))
    if takeoff is None or pick is None:
        print(_no_takeoff_advice(radii, changes, takeoff, keep_sink))
        return
    print(f"take-off at R = {radii[takeoff]:g} (the change per unit R has doubled): vectors there and beyond break the model. "
          f"Recommended: --radius {radii[pick]:g}, the largest R tried at or below 3/4 of it.")


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
    revision: RevisionOpt = None, threads: ThreadsOpt = None, offload_folder: OffloadOpt = None,
    deterministic: DeterministicOpt = False,
) -> None:
    """Stream a completion steered by one vector or a composition of several (to stdout), or with it ablated.

    --ablate: the direction of the chosen vector (or composition; its norm and --scale do not
    matter) is projected out of every block's write to the residual stream, at every position
    and every generated token (the DCT authors' ablation, done with hooks).
    """
    from melbo_tui import ablation
    from melbo_tui.bank import load_bank
    from melbo_tui.generation import GenerationSettings, generate_stream
    from melbo_tui.models import ModelRequest
    from melbo_tui.prompts import encode

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
    composition = _composition(load_bank(bank_path), vector, mean, sum_, mean_sqrt, scale)  # bad rows: before the model loads
    lm, bank = open_bank(bank_path, ModelRequest(model, device, dtype, trust_remote_code, revision, threads, offload_folder, deterministic))
    text, system, raw = prompt_for(bank, bank_path, prompt, system, raw)
    ids = encode(lm, text, system, raw)
    steering = None if composition is None else compose(bank.vectors, composition)
    label = "unsteered" if steering is None or composition is None else f"{composition.label}, |v|={steering.norm():.2f}"
    where = f"ablated from every block's writes{' and the embeddings' if ablate_embedding else ''}" if ablate else f"@ block {bank.meta.source_layer}"
    err.print(f"[dim]{label} {where} | T={temperature}, seed {seed} | prompt: {text!r}[/]")  # what may wrap comes last
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
    rows: Annotated[str | None, typer.Option("--rows", help="List these rows' metrics and labels, one line each: SPEC such as 1:20, 0,3,7 or : for all.")] = None,
    sort: Annotated[str | None, typer.Option("--sort", help="With --rows: order by a metric (kl_seq, norm, ...), label or idx; prefix - for descending.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="With --rows: comma-separated values, for a spreadsheet or a script.")] = False,
) -> None:
    """Show a bank's metadata and a summary of its metrics, or (--rows) every listed vector's metrics and label."""
    from melbo_tui.bank import load_bank

    bank = load_bank(bank_path)
    if as_json and as_csv:
        raise InputError("choose one of --json and --csv")
    if rows is None:
        if as_csv or sort is not None:
            raise InputError("--csv and --sort list rows: give --rows SPEC (: for all)")
        _print_info(bank, bank_path, as_json)
        return
    listing = row_listing(bank, bank_path, parse_selection(rows, len(bank)), sort)
    if as_json:
        print(json.dumps(listing, indent=1))
    elif as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(listing[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(listing)
    else:
        table = Table(title=f"{bank_path}: {len(listing)} of {len(bank)} rows ({bank.meta.kind} bank)")
        for column in listing[0]:
            table.add_column(column, justify="left" if column == "label" else "right")
        for record in listing:
            table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in record.values()))
        Console().print(table)


def row_listing(bank: VectorBank, bank_path: Path, picked: list[int], sort: str | None) -> list[dict[str, object]]:
    """One record per row: idx, label, norm, cos_base and every stored metric (NaN-free floats)."""
    labels = read_labels(bank_path) or [""] * len(bank)
    norms, base = bank.norms(), bank.vectors[bank.meta.base_index]
    cos = (bank.vectors @ base) / (norms * base.norm()).clamp_min(1e-30)
    columns = {"norm": norms, "cos_base": cos, **bank.metrics}
    records = [{"idx": r, "label": labels[r] if r < len(labels) else "",
                **{name: round(float(values[r]), 6) + 0.0 for name, values in columns.items()}} for r in picked]
    if sort is not None:
        key = sort.lstrip("-")
        if key not in records[0]:
            raise InputError(f"--sort {sort}: this bank has {', '.join(records[0])}")
        records.sort(key=lambda record: record[key], reverse=sort.startswith("-"))  # type: ignore[arg-type,return-value]
    return records


def _print_info(bank: VectorBank, bank_path: Path, as_json: bool) -> None:
    norms = bank.norms()
    summary = {"file": str(bank_path), "vectors": len(bank), "hidden_size": bank.hidden_size,
               "metrics": {name: {"min": float(v.min()), "median": float(v.median()), "max": float(v.max())}
                           for name, v in {"norm": norms, **bank.metrics}.items()},
               "metadata": json.loads(bank.meta.to_json())}
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    table = Table(title=str(bank_path), show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    table.add_row("vectors", f"{len(bank)} x {bank.hidden_size} ({bank.meta.kind} bank, base row {bank.meta.base_index})")
    unsteered = bank.meta.extra.get("eval", {}).get("unsteered", {})
    for name, stats in summary["metrics"].items():
        reference = f"  unsteered model {unsteered[name]:.4g}" if name in unsteered else ""
        table.add_row(name, f"min {stats['min']:.4g}  median {stats['median']:.4g}  max {stats['max']:.4g}{reference}")
    for key, value in summary["metadata"].items():
        if key == "radius" and isinstance(value, float):
            value = float(f"{value:.6g}")  # noqa: PLW2901  (a float32 norm read back: 40.000003814697266 -> 40)
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
    revision: RevisionOpt = None, threads: ThreadsOpt = None, offload_folder: OffloadOpt = None,
    deterministic: DeterministicOpt = False,
) -> None:
    """Import a seed-format .pt file (loaded with weights_only=True) into a bank."""
    from melbo_tui.bank import BankMeta, VectorBank, check_bank_fits, save_bank
    from melbo_tui.models import ModelRequest
    from melbo_tui.seed_import import read_seed_file

    check_output(out)
    seed_file = read_seed_file(file)
    lm = open_model(ModelRequest(model, device, dtype, trust_remote_code, revision, threads, offload_folder, deterministic))
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
    from melbo_tui.steering import check_layer_order

    check_layer_order(source_layer, target_layer)
    save_bank(bank, out)
    err.print(f"wrote {out}: {len(bank)} vectors, max |cos| between rows {seed_file.max_abs_cos:.2e}")
