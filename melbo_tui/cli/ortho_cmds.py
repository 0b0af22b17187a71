"""Commands over MELBO-ortho and its measurements: ortho, eval, dump, label, export, bench."""

from __future__ import annotations

import json
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from melbo_tui.cli.app import app, command_line
from melbo_tui.cli.options import (
    CONTINUATION_TOKENS,
    MAX_NEW_TOKENS,
    SINK_HELP,
    TEMPERATURE,
    BankArg,
    BatchSizeOpt,
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
    deprecated_alias,
    err,
    measure_into,
    open_bank,
    print_sink,
    progress,
    prompt_for,
)
from melbo_tui.compose import ComposeMode, Composition
from melbo_tui.errors import InputError
from melbo_tui.kinds import Objective, Strategy
from melbo_tui.labels import MadeOn

if TYPE_CHECKING:
    from melbo_tui.bank import VectorBank

OBJECTIVE_HELP = ("What reproducing theta0 means at the target layer. continuation (default): mean over the compared "
                  "positions of ||Z_t(theta) - Z_t(theta0)||^2 over the prompt and theta0's own greedy continuation, "
                  "teacher-forced (--continuation tokens; the attention sink left out); tokens: the same over the prompt "
                  "only (faster; behaviour over the answer reproduced less well); seed: the seed's ||mean_t Z_t(theta) - mean_t Z_t(theta0)||_2 over every position, "
                  "which on models with a massive first-token activation matches that one position. Measured side by side: "
                  "docs/replication.md.")


def _parent_bank(path: Path, base: int) -> tuple[VectorBank, int]:
    """The parent bank and the base row, a negative index counting from the end (as in --vector)."""
    from melbo_tui.bank import load_bank

    bank = load_bank(path)
    if not -len(bank) <= base < len(bank):
        raise InputError(f"--base {base} is out of range: {path} has rows 0..{len(bank) - 1}")
    return bank, base % len(bank)


@app.command()
def ortho(
    bank_path: BankArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Ortho bank to write (row 0 = theta0).")],
    base: Annotated[int, typer.Option("--base", "-b", help="Row of BANK used as theta0.")] = 0,
    num_vectors: Annotated[int | None, typer.Option("--num-vectors", help="Orthogonal vectors to find (at most d_model - 1). Default: 64.")] = None,
    count: Annotated[int | None, typer.Option("--count", "-c", hidden=True, help="Deprecated spelling of --num-vectors.")] = None,
    objective: Annotated[Objective, typer.Option(help=OBJECTIVE_HELP)] = Objective.CONTINUATION,
    sink: Annotated[str | None, typer.Option("--sink", help=SINK_HELP + " Default: exclude; with --objective seed, keep (the seed's loss verbatim).")] = None,
    strategy: Annotated[Strategy, typer.Option(help="fast (L-BFGS on cached source-layer activations) or sequential (the seed's Adam loop).")] = Strategy.FAST,
    steps: Annotated[int | None, typer.Option(help="Per vector: sequential, Adam steps (default 1000, the seed's); fast, L-BFGS loss evaluations (default 60; how quality grows with it: docs/melbo.md).")] = None,
    lr: Annotated[float | None, typer.Option(help="sequential only: Adam lr, constant. Default scales with |theta0|: 0.01 x |theta0| / 7 (the seed's 0.01 at |theta0| = 7).")] = None,
    l2: Annotated[float, typer.Option("--l2", help="Add l2 x ||theta||^2 to the loss (0 = the seed: no norm penalty). Its weight depends on the objective's scale; what 0.01 to 3 did on the embedded model: docs/replication.md s.8.")] = 0.0,
    continuation: Annotated[int, typer.Option(help="--objective continuation: tokens of theta0's greedy answer compared (as kl_seq reads them).")] = CONTINUATION_TOKENS,
    seed: Annotated[int, typer.Option(help="Seed of the random starts (vector i depends only on seed and i).")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue the bank in --out (same settings).")] = False,
    evaluate: Annotated[bool, typer.Option("--eval/--no-eval", help="Compute KL/norm metrics at the end.")] = True,
    prompt: PromptsOpt = None, system: SystemOpt = None, raw: RawOpt = None,
    model: ModelOpt = None, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", trust_remote_code: TrustOpt = False,
    revision: RevisionOpt = None, threads: ThreadsOpt = None, offload_folder: OffloadOpt = None,
    deterministic: DeterministicOpt = False,
) -> None:
    """MELBO-ortho: vectors orthogonal to row --base of BANK (and to each other) with its effect.

    Source and target layers are the parent bank's (layer L = output of decoder block L,
    0-based). theta is kept orthogonal to theta0 and every earlier vector; no norm constraint.
    --objective continuation (default) matches the target layer position by position over the
    prompt and theta0's own greedy answer, the attention sink left out; --objective tokens does
    so over the prompt only; --objective seed is the seed's ||mean_t Z_t(theta) - mean_t Z_t(theta0)||_2
    over every position. A checkpoint is written to --out after every vector; Ctrl-C keeps it.
    """
    from melbo_tui.bank import load_bank
    from melbo_tui.jobs import OrthoSource, run_ortho
    from melbo_tui.models import ModelRequest
    from melbo_tui.ortho import OrthoConfig, OrthoProgress
    from melbo_tui.sink import SinkRule

    count = deprecated_alias("--count", count, "--num-vectors", num_vectors, default=64)
    check_output(out)
    config = OrthoConfig(count=count, strategy=strategy, objective=objective, steps=steps, lr=lr, l2=l2, seed=seed,
                         continuation=continuation,
                         sink=SinkRule.parse(sink) if sink is not None else None)
    parent, base = _parent_bank(bank_path, base)
    config.check(parent.hidden_size)  # every setting error before the model loads
    lm, parent = open_bank(bank_path, ModelRequest(model, device, dtype, trust_remote_code, revision, threads, offload_folder, deterministic))
    prompts = prompt or list(parent.meta.prompts)
    if not prompts:
        raise InputError(f"{bank_path} records no prompts: give --prompt")
    system = system if system is not None else parent.meta.system_prompt
    raw = parent.meta.raw_prompts if raw is None else raw
    source = OrthoSource(parent, str(bank_path), base, prompts, system, raw)
    try:
        with progress() as bar:
            task = bar.add_task("ortho vectors", total=count, info="")

            def report(p: OrthoProgress) -> None:
                bar.update(task, completed=p.vectors_done,
                           info=f"vector {p.vector} step {p.step}/{p.steps} loss {p.loss:.4g} norm {p.norm:.3g}")

            result = run_ortho(lm, source, config, out, resume=resume, created_by=command_line(),
                               on_progress=report, on_sink=print_sink)
            bar.update(task, completed=result.found)
    except KeyboardInterrupt:
        saved = len(load_bank(out)) - 1 if out.exists() else 0
        err.print(f"interrupted: {saved} orthogonal vectors saved in {out} (--resume continues)")
        sys.exit(130)  # SystemExit passes through click untouched; typer.Exit's code would be lost
    bank = result.bank
    if evaluate and len(bank) > 1:
        bank = measure_into(out, lm, bank, prompts[0], system, raw)
    per_vector = result.seconds / result.new if result.new else 0.0
    err.print(result.summary + (" (--resume continues)" if result.stopped else ""))
    _print_summary(bank, f"{result.new} new vectors, {per_vector:.2f} s/vector")


@app.command(name="eval")
def eval_(
    bank_path: BankArg,
    prompt: PromptOpt = None, system: SystemOpt = None, raw: RawOpt = None,
    continuation: Annotated[int, typer.Option(help="N: kl_seq follows the base's greedy answer for N tokens.")] = 32,
    sink: SinkOpt = "exclude",
    batch_size: BatchSizeOpt = None,
    model: ModelOpt = None, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", trust_remote_code: TrustOpt = False,
    revision: RevisionOpt = None, threads: ThreadsOpt = None, offload_folder: OffloadOpt = None,
    deterministic: DeterministicOpt = False,
) -> None:
    """Measure and store every vector's metrics on one prompt (nats; P_i steered by row i, P_base by the base row).

    kl = KL(P_i||P_base) and kl_rev = KL(P_base||P_i) at the last prompt position; kl_seq = the
    mean over the base's first N greedy tokens of KL(P_base,t||P_i,t), teacher-forced (the KL
    that a vector cannot game by matching one token); kl_unsteered = KL(P_i||P_unsteered), the
    one to read in a MELBO bank, whose row 0 is not a base; err = target-layer RMS error to the
    base over the compared positions, relative to no steering; norm; cos_base. The unsteered
    model's values are recorded too (`melbo-tui info BANK`).

    Safe while another process (ortho --resume) grows the bank: rows appended meanwhile are
    kept and measured too.
    """
    from melbo_tui.bank import load_bank
    from melbo_tui.models import ModelRequest
    from melbo_tui.sink import SinkRule


    if batch_size is not None and batch_size <= 0:
        raise InputError(f"--batch-size must be positive, got {batch_size}")
    if continuation <= 0:
        raise InputError(f"--continuation must be positive, got {continuation}")
    rule = SinkRule.parse(sink)
    load_bank(bank_path)  # fail on a bad file before loading a model
    check_output(bank_path, "BANK")  # the metrics are written into it
    lm, bank = open_bank(bank_path, ModelRequest(model, device, dtype, trust_remote_code, revision, threads, offload_folder, deterministic))
    text, system, raw = prompt_for(bank, bank_path, prompt, system, raw)
    bank = measure_into(bank_path, lm, bank, text, system, raw, batch_size=batch_size, continuation=continuation, sink=rule)
    _print_summary(bank, f"metrics stored in {bank_path}")


@app.command()
def dump(
    bank_path: BankArg,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Where to write: NAME.txt (the seed's layout) and NAME.jsonl beside it. Default: BANK's stem + .dump.txt/.dump.jsonl beside the bank (what `label` reads).")] = None,
    rows: Annotated[str | None, typer.Option(help="Rows to complete, e.g. 0:50 or 0,3,7 (default: all).")] = None,
    compose_sweep: Annotated[bool, typer.Option(help="Add mean of the first k and mean x sqrt(k), k = 1, 2, 3, 5, 10, 20, 50, ...")] = False,
    prompt: PromptOpt = None, system: SystemOpt = None, raw: RawOpt = None,
    max_new_tokens: MaxTokensOpt = MAX_NEW_TOKENS, temperature: TemperatureOpt = TEMPERATURE, seed: SeedOpt = 0,
    batch_size: BatchSizeOpt = None,
    label: Annotated[bool, typer.Option("--label/--no-label", help="Label the completions (in the JSONL); a dump of the bank's own prompt to the default --out also stores them beside the bank, recording the prompt and decoding.")] = True,
    rules: Annotated[Path | None, typer.Option(help="Extra label rules (JSON or TOML), see 'melbo-tui label --help'.")] = None,
    model: ModelOpt = None, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", trust_remote_code: TrustOpt = False,
    revision: RevisionOpt = None, threads: ThreadsOpt = None, offload_folder: OffloadOpt = None,
    deterministic: DeterministicOpt = False,
) -> None:
    """The completion of every vector (batched, KV cache on) as text and JSONL, labelled.

    The bank's own labels (BANK's stem + .labels.json, what the explorer shows) are rewritten only
    by a dump of the bank's own prompt to the default --out: a dump on another prompt or to
    another place keeps its labels in its JSONL and leaves the bank's alone.
    """
    from melbo_tui.bank import load_bank
    from melbo_tui.dump import dump_completions, sweep_compositions, write_dump
    from melbo_tui.generation import GenerationSettings
    from melbo_tui.labels import classify, labels_path, load_rules, save_labels
    from melbo_tui.models import ModelRequest
    from melbo_tui.prompts import encode
    from melbo_tui.selection import parse_selection

    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    settings.check()
    if batch_size is not None and batch_size <= 0:
        raise InputError(f"--batch-size must be positive, got {batch_size}")
    rule_list = load_rules(rules) if label else []
    bank = load_bank(bank_path)
    picked = parse_selection(rows, len(bank)) if rows else list(range(len(bank)))
    if out is not None:
        check_output(out)  # a directory is refused, as everywhere, not read as the stem of DIR.txt
    text_path, jsonl_path = dump_paths(bank_path, out)
    text, system, raw = prompt_for(bank, bank_path, prompt, system, raw)
    own_labels = label and out is None and bank.meta.prompts[:1] == [text] and (system, raw) == (
        bank.meta.system_prompt, bank.meta.raw_prompts)
    for path in (text_path, jsonl_path, *([labels_path(bank_path)] if own_labels else [])):
        check_output(path, "--out" if path != labels_path(bank_path) else "labels of BANK")
    lm, bank = open_bank(bank_path, ModelRequest(model, device, dtype, trust_remote_code, revision, threads, offload_folder, deterministic))
    compositions = sweep_compositions(bank) if compose_sweep else []
    with progress() as bar:
        task = bar.add_task("completions", total=len(picked) + len(compositions), info="")
        entries = dump_completions(lm, bank, encode(lm, text, system, raw), picked, settings, compositions, batch_size,
                                   on_progress=lambda done, total: bar.update(task, completed=done))
    if label:
        from dataclasses import replace

        entries = [replace(e, label=classify(e.text, rule_list)) for e in entries]
        if own_labels:
            made_on = MadeOn(text, system, raw, settings.max_new_tokens, settings.temperature, settings.seed)
            sidecar = save_labels(bank_path, len(bank), {e.row: e.label for e in entries if e.row is not None}, rule_list, made_on)
            err.print(f"labels stored in {sidecar}")
        else:
            err.print(f"labels kept in {jsonl_path} only: {bank_path.name}'s own labels describe its own prompt "
                      "and the default --out", highlight=False)
    write_dump(entries, text_path, jsonl_path, text, settings, bank, system=system, raw=raw)
    counts = Counter(e.label for e in entries if e.label)
    err.print(f"wrote {text_path} and {jsonl_path}: {len(entries)} completions"
              + (f" ({', '.join(f'{k} {v}' for k, v in counts.most_common())})" if counts else ""))


def dump_paths(bank_path: Path, out: Path | None) -> tuple[Path, Path]:
    """The text and JSONL files of a dump: `x.txt` + `x.jsonl` whatever `out` is spelled as."""
    if out is None:
        return bank_path.with_name(bank_path.stem + ".dump.txt"), bank_path.with_name(bank_path.stem + ".dump.jsonl")
    if out.suffix == ".txt":
        return out, out.with_suffix(".jsonl")
    if out.suffix == ".jsonl":
        return out.with_suffix(".txt"), out
    return Path(f"{out}.txt"), Path(f"{out}.jsonl")


def dump_made_on(records: list[dict[str, object]], bank: VectorBank) -> MadeOn:
    """What a dump's completions were made on, from its first record (older dumps: the bank's prompt, default decoding)."""
    first = records[0] if records else {}
    made_on = MadeOn.from_record({**first, "system": first.get("system", bank.meta.system_prompt),
                                  "raw": first.get("raw", bank.meta.raw_prompts)})
    return made_on or MadeOn(bank.meta.prompts[0] if bank.meta.prompts else "", bank.meta.system_prompt, bank.meta.raw_prompts)


@app.command()
def label(
    bank_path: BankArg,
    from_dump: Annotated[Path | None, typer.Option("--from", help="JSONL written by 'melbo-tui dump' for this bank (default: BANK's stem + .dump.jsonl beside it).")] = None,
    rules: Annotated[Path | None, typer.Option(help="Rules file (JSON or TOML): {rules: [...], replace_defaults: bool}.")] = None,
) -> None:
    """Label completions by rules (first match wins; default: refusal, code, repetition, gibberish, else other).

    Rule kinds: regex (pattern, flags, min_matches), repetition (min_words, max_distinct,
    max_run), gibberish (min_letters, max_word_len). A rules file's rules are tried before the
    defaults. Labels go to <bank stem>.labels.json beside the bank (read by the explorer).
    """
    from melbo_tui.bank import load_bank
    from melbo_tui.dump import read_dump
    from melbo_tui.labels import label_texts, labels_path, load_rules, save_labels

    check_output(labels_path(bank_path), "labels of BANK")
    rule_list = load_rules(rules)
    bank = load_bank(bank_path)
    from_dump = from_dump or dump_paths(bank_path, None)[1]
    dumped = read_dump(from_dump)
    fingerprints = {str(r["bank"]) for r in dumped if "bank" in r}
    if fingerprints and fingerprints != {bank.fingerprint()}:
        raise InputError(f"{from_dump} is a dump of another bank's vectors, not of {bank_path}")
    records = [(row, str(r.get("text", ""))) for r in dumped if isinstance(row := r.get("row"), int)]
    if not records:
        raise InputError(f"{from_dump} holds no completions of bank rows")
    if max(row for row, _ in records) >= len(bank):
        raise InputError(f"{from_dump} has completions of rows beyond {bank_path}'s {len(bank)}: a dump of another bank")
    labels = label_texts([text for _, text in records], rule_list)
    made_on = dump_made_on(dumped, bank)
    sidecar = save_labels(bank_path, len(bank), {row: lab for (row, _), lab in zip(records, labels, strict=True)}, rule_list,
                          made_on)
    counts = Counter(labels)
    err.print(f"labelled {len(labels)} rows in {sidecar}: {', '.join(f'{k} {v}' for k, v in counts.most_common())}")


@app.command()
def export(
    bank_path: BankArg,
    gguf: Annotated[Path, typer.Option("--gguf", help="Control-vector GGUF to write.")],
    rows: Annotated[str | None, typer.Option(help="Rows to export, e.g. 3 or 1:11 (default: the base row).")] = None,
    mean: Annotated[bool, typer.Option("--mean", help="Combine the rows by their mean (default).")] = False,
    sum_: Annotated[bool, typer.Option("--sum", help="Combine the rows by their sum.")] = False,
    mean_sqrt: Annotated[bool, typer.Option("--mean-sqrt", help="Mean x sqrt(k).")] = False,
    scale: Annotated[float, typer.Option(help="Multiply the exported vector by this.")] = 1.0,
) -> None:
    """Write a llama.cpp control vector: direction.{S} = the vector added at the output of block S.

    llama.cpp adds direction.k after block k (0-based), our layer convention, so the layer
    index is kept as is. Use it with llama.cpp --control-vector FILE (strength 1 = ours).
    """
    from melbo_tui.bank import load_bank
    from melbo_tui.export import export_gguf
    from melbo_tui.selection import parse_selection

    check_output(gguf, "--gguf")
    modes = [m for m, on in ((ComposeMode.MEAN, mean), (ComposeMode.SUM, sum_), (ComposeMode.MEAN_SQRT, mean_sqrt)) if on]
    if len(modes) > 1:
        raise InputError("give at most one of --mean, --sum, --mean-sqrt")
    bank = load_bank(bank_path)
    picked = parse_selection(rows, len(bank)) if rows else [bank.meta.base_index]
    composition = Composition(tuple(picked), modes[0] if modes else ComposeMode.MEAN, scale)
    vector = export_gguf(bank, composition, gguf)
    err.print(f"wrote {gguf}: {composition.label} as direction.{bank.meta.source_layer} "
              f"(norm {float(vector.norm()):.4g}, d_model {bank.hidden_size})")


@app.command()
def bench(
    quick: Annotated[bool, typer.Option(help="Small sizes (CI): well under two minutes.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch (default: torch's; 1 is steadier on a busy machine).")] = None,
    model: ModelOpt = None, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", trust_remote_code: TrustOpt = False,
    revision: RevisionOpt = None, offload_folder: OffloadOpt = None, deterministic: DeterministicOpt = False,
) -> None:
    """Side-by-side speed ratios measured in one run: ortho, eval, dump, steering, loading, FLOP/s."""
    import torch

    from melbo_tui.benchmarks.bench import BenchConfig, render_table, run_bench
    from melbo_tui.models import ModelRequest

    if threads is not None and threads <= 0:
        raise InputError(f"--threads must be positive, got {threads}")
    request = ModelRequest(model, device, dtype, trust_remote_code, revision, threads or torch.get_num_threads(),
                           offload_folder, deterministic)
    config = BenchConfig.for_ci() if quick else BenchConfig()
    with err.status("benchmarking ...") as status:
        report = run_bench(config, request, on_stage=lambda s: status.update(f"benchmarking: {s} ..."))
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        Console().print(render_table(report))


def _print_summary(bank: VectorBank, title: str) -> None:
    """Medians over the bank's vectors (the base row left out where it is a base) beside the unsteered model."""
    import torch

    rows = torch.ones(len(bank), dtype=torch.bool)
    if bank.meta.kind.has_base and len(bank) > 1:
        rows[bank.meta.base_index] = False
    unsteered = bank.meta.extra.get("eval", {}).get("unsteered", {})
    table = Table(title=title)
    for column in ("metric", f"median over {int(rows.sum())} vectors", "min", "max", "unsteered model"):
        table.add_column(column, justify="right")
    for name, values in bank.metrics.items():
        picked = values[rows]
        reference = unsteered.get(name)
        table.add_row(name, f"{float(picked.median()):.4g}", f"{float(picked.min()):.4g}", f"{float(picked.max()):.4g}",
                      f"{reference:.4g}" if isinstance(reference, float) else "-")
    losses = bank.meta.extra.get("ortho_loss", [])[1:]
    if losses:
        table.add_row("ortho loss", f"{statistics.median(losses):.4g}", f"{min(losses):.4g}", f"{max(losses):.4g}", "-")
    err.print(table)
