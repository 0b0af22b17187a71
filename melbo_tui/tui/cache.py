"""Completions already generated, on disk, so a revisit shows them at once, even after a restart.

One append-only JSONL file per bank, named by the bank file's sha256, under
`$MELBO_TUI_CACHE` or `$XDG_CACHE_HOME/melbo-tui/completions/`. A line is one finished
(never a stopped) completion; the key covers everything the text depends on: model,
target (vector or composition), prompt, system prompt, raw flag, temperature, max tokens, seed.
A corrupt line is skipped, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from melbo_tui.atomic import atomic_write_text
from melbo_tui.compose import Composition
from melbo_tui.tui.settings import ExploreSettings


def cache_root() -> Path:
    explicit = os.environ.get("MELBO_TUI_CACHE")
    base = Path(explicit) if explicit else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "melbo-tui"
    return base / "completions"


@dataclass(frozen=True)
class CachedCompletion:
    key: str
    target: str  # human label, e.g. "vector 5" or "mean[1:4]"
    text: str
    num_tokens: int
    seconds: float
    model: str
    prompt: str
    system: str | None
    raw: bool
    temperature: float
    max_new_tokens: int
    seed: int

    @property
    def tokens_per_second(self) -> float:
        return self.num_tokens / self.seconds if self.seconds > 0 else 0.0


def completion_key(model: str, target: Composition, settings: ExploreSettings) -> str:
    decoding = settings.generation
    parts = {
        "model": model, "target": target.key(), "prompt": settings.prompt, "system": settings.system,
        "raw": settings.raw, "temperature": decoding.temperature, "max_new_tokens": decoding.max_new_tokens,
        "seed": decoding.seed if decoding.temperature > 0 else 0,  # greedy ignores the seed
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


class CompletionCache:
    """The cache of one bank (by file digest)."""

    def __init__(self, digest: str, root: Path | None = None) -> None:
        self.path = (root or cache_root()) / f"{digest[:24]}.jsonl"
        self._entries: dict[str, CachedCompletion] = {}
        self._load()

    def _load(self) -> None:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return
        for line in lines:
            try:
                entry = CachedCompletion(**json.loads(line))
            except (ValueError, TypeError):
                continue
            self._entries[entry.key] = entry

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> CachedCompletion | None:
        return self._entries.get(key)

    def put(self, entry: CachedCompletion) -> None:
        """Remember `entry`; a disk that refuses only costs the persistence (raises OSError)."""
        self._entries[entry.key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(entry), sort_keys=True) + "\n")

    def move_to(self, digest: str) -> None:
        """Become the cache of bank file `digest`, taking every entry along (a growing bank's new checkpoint).

        The entries merge with what the new file already held; the old file is removed. A disk
        that refuses only costs the persistence: the entries stay in memory.
        """
        new_path = self.path.with_name(f"{digest[:24]}.jsonl")
        if new_path == self.path:
            return
        old_path, self.path = self.path, new_path
        self._load()  # entries the new file already had (keys match: ours win only where absent)
        try:
            if self._entries:
                text = "".join(json.dumps(asdict(e), sort_keys=True) + "\n" for e in self._entries.values())
                new_path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(new_path, text)
            old_path.unlink(missing_ok=True)
        except OSError:
            pass

    def entries(self) -> list[CachedCompletion]:
        return list(self._entries.values())


@dataclass(frozen=True)
class ExportRecord:
    """One completion as the explorer shows it: what steers it, the row's label and values, the text."""

    name: str  # "vector 7", "unsteered", "base: vector 0", "mean[1:4]"
    row: int | None  # the bank row, None for the unsteered model and compositions
    label: str
    metrics: dict[str, float]
    text: str
    num_tokens: int


def write_completions(jsonl: Path, readable: Path, heading: dict[str, object], records: list[ExportRecord]) -> None:
    """The records as JSONL (each line with the heading: bank, prompt, decoding) and as readable text."""
    lines = [json.dumps({**heading, **asdict(r)}, ensure_ascii=False, sort_keys=True) + "\n" for r in records]
    atomic_write_text(jsonl, "".join(lines))
    top = "\n".join(f"# {k}: {v!r}" for k, v in heading.items())
    blocks = []
    for r in records:
        label = f" [{r.label}]" if r.label else ""
        values = ", ".join(f"{k} {v:.4g}" for k, v in r.metrics.items())
        blocks.append(f"## {r.name}{label}{f'  ({values})' if values else ''}\n{r.text.strip()}\n")
    atomic_write_text(readable, top + "\n\n" + "\n".join(blocks))
