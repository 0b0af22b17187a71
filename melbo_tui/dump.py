"""Completions of many vectors for one prompt, batched, in the seed's text layout and as JSONL.

Each `generate` call steers one batch row per vector (KV cache on; see `generation.generate_batch`).
The text file reads like the seed's dumps (`1st orthogonal steering vector: ...`); the JSONL
has one object per completion (`row` is null for compositions). `compose_sweep` adds the
seed's composition experiments: the mean of generated vectors 1..k and that mean times
sqrt(k), for k in 1, 2, 3, 5, 10, 20, 50, 100, 200, 500, 1000, ... up to the bank's size.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from melbo_tui.atomic import atomic_write_text
from melbo_tui.bank import VectorBank
from melbo_tui.compose import ComposeMode, Composition, compose
from melbo_tui.generation import GenerationSettings, generate_batch
from melbo_tui.metrics import batched, default_batch_size
from melbo_tui.models import LoadedModel

DUMP_METRICS = ("kl_seq", "err", "kl", "kl_unsteered", "score", "sigma")  # shown beside a row's completion, when stored


@dataclass(frozen=True)
class DumpEntry:
    name: str  # "1st orthogonal steering vector", "mean[1:11]", ...
    row: int | None  # bank row, None for a composition
    composition: str | None
    text: str
    label: str = ""


def sweep_sizes(available: int) -> list[int]:
    """1, 2, 3, 5, 10, 20, 50, 100, 200, 500, ... not above `available`."""
    sizes = [1, 2, 3, 5]
    scale = 10
    while scale <= available:
        sizes.extend(scale * m for m in (1, 2, 5))
        scale *= 10
    return [k for k in sizes if k <= available]


def sweep_compositions(bank: VectorBank) -> list[Composition]:
    """The seed's compositions over the generated vectors (every row but the base)."""
    generated = [i for i in range(len(bank)) if i != bank.meta.base_index]
    out = []
    for k in sweep_sizes(len(generated)):
        rows = tuple(generated[:k])
        out.append(Composition(rows, ComposeMode.MEAN))
        if k > 1:
            out.append(Composition(rows, ComposeMode.MEAN_SQRT))
    return out


def row_name(bank: VectorBank, row: int) -> str:
    if row == bank.meta.base_index:
        return "base vector" if bank.meta.kind != "ortho" else "MELBO base vector"
    index = row if row > bank.meta.base_index else row + 1
    noun = "orthogonal steering vector" if bank.meta.kind == "ortho" else "steering vector"
    return f"{ordinal(index)} {noun}"


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def dump_completions(
    lm: LoadedModel,
    bank: VectorBank,
    input_ids: torch.Tensor,  # [1, T]
    rows: list[int],
    settings: GenerationSettings,
    compositions: list[Composition] | None = None,
    batch_size: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[DumpEntry]:
    """One completion per row (then per composition), `batch_size` vectors per `generate` call.

    Sampled completions do not depend on the batch size: each completion samples from its own
    stream, keyed by its bank row (a composition by its label), see `generation.RowSampler`.
    """
    named: list[tuple[str, int | None, str | None]] = [(row_name(bank, r), r, None) for r in rows]
    vectors = [bank.vectors[r] for r in rows]
    for composition in compositions or []:
        named.append((composition.label, None, composition.label))
        vectors.append(compose(bank.vectors, composition))
    if not vectors:
        return []
    stacked = torch.stack(vectors).float()  # [M, d]
    keys = [str(row) if row is not None else str(label) for _, row, label in named]
    done = [0]

    def run(indices: torch.Tensor) -> list[str]:  # [b] positions in `named`
        picked = indices.tolist()
        texts = generate_batch(lm, input_ids, bank.meta.source_layer, stacked[picked].to(lm.device), settings,
                               keys=[keys[i] for i in picked])
        done[0] += len(texts)
        if on_progress is not None:
            on_progress(done[0], len(named))
        return texts

    texts = _batched_texts(run, torch.arange(len(named)), batch_size or default_batch_size(lm.device) // 2, lm.device)
    return [DumpEntry(name, row, comp, text) for (name, row, comp), text in zip(named, texts, strict=True)]


def write_dump(entries: list[DumpEntry], text_path: Path, jsonl_path: Path, prompt: str,
               settings: GenerationSettings, bank: VectorBank, system: str | None = None, raw: bool = False) -> None:
    """The seed-style text file and the JSONL, each written atomically; every record names its bank's vectors.

    A row's stored metrics (those `eval` measured: kl_seq, err, kl, ...) go beside its completion,
    so a dump reads as behaviour *and* how close it is to the base over a continuation.
    """
    header = (f"# prompt: {prompt!r}; temperature {settings.temperature:g}, {settings.max_new_tokens} new tokens, "
              f"seed {settings.seed}\n\n")
    shown = [m for m in DUMP_METRICS if m in bank.metrics]

    def metrics(entry: DumpEntry) -> dict[str, float]:
        return {m: round(float(bank.metrics[m][entry.row]), 4) for m in shown} if entry.row is not None else {}

    def title(entry: DumpEntry) -> str:
        values = ", ".join(f"{k} {v:.3g}" for k, v in metrics(entry).items())
        return f"{entry.name}{f' [{entry.label}]' if entry.label else ''}{f' ({values})' if values else ''}"

    blocks = [f"{title(e)}:\n{e.text}\n" for e in entries]
    atomic_write_text(text_path, header + "\n".join(blocks))
    origin = {"bank": bank.fingerprint(), "bank_rows": len(bank)}
    lines = [json.dumps({**asdict(e), "prompt": prompt, "system": system, "raw": raw, **asdict(settings), **origin, "metrics": metrics(e)}, ensure_ascii=False)
             for e in entries]
    atomic_write_text(jsonl_path, "\n".join(lines) + "\n")


def read_dump(path: Path) -> list[dict[str, object]]:
    """The JSONL objects of a dump file."""
    from melbo_tui.errors import InputError

    try:
        return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        raise InputError(f"dump file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a JSONL dump ({str(exc).splitlines()[0]})") from None


def _batched_texts(fn: Callable[[torch.Tensor], list[str]], rows: torch.Tensor, batch_size: int,
                   device: torch.device) -> list[str]:
    texts: list[str] = []

    def collect(chunk: torch.Tensor) -> torch.Tensor:
        texts.extend(fn(chunk))
        return torch.zeros(chunk.shape[0])

    batched(collect, rows, max(1, batch_size), device)
    return texts
