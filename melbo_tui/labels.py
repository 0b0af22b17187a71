"""Behaviour labels for completions: simple documented rules, extendable from a config file.

A rule is a dict with `label` and `kind`; the first rule (in order) that matches a completion
gives its label, and `other` is the fallback. Kinds:
- `regex`: `pattern` (Python regex), `flags` (any of "imsx"), `min_matches` (default 1);
- `repetition`: word 3-grams; matches when the completion has at least `min_words` words and
  the share of distinct 3-grams is below `max_distinct` (default 0.5), or when one character
  run fills `max_run` (default 0.5) of the text;
- `gibberish`: matches empty text, or when letters make less than `min_letters` (default 0.5)
  of the non-space characters, or when words average more than `max_word_len` (default 15).

Default rules, in order: refusal (apology/inability/prohibition phrases), code (at least two
code-looking lines or a fenced block), instructions (a how-to: steps, "first,", "you need",
"here's how", or at least two numbered/bulleted lines), persona (the completion opens with a
self-description: "I am", "I'm", "My name", "As a(n)", "You are a(n)"), compliance (an offer to
help with the request: "I can provide a few ideas", "here are some ways"), fiction (a story, a film,
a character), explanation (a definition or a history: "the term", "refers to", "is a device"),
repetition, gibberish.
Content comes before form: "First, mix. First, mix. First, mix." is instructions. A rules file (JSON or TOML) holds
`rules = [...]` (tried before the defaults) and optionally `replace_defaults = true`.

Labels live beside the bank in `<bank stem>.labels.json` = {"rules": [...], "labels": [one
string per row, "" = not labelled], "made_on": {prompt, system, raw, max_new_tokens,
temperature, seed}} so that the explorer can show and filter them. A label describes a
completion, and a completion depends on the prompt and the decoding: `made_on` records them,
and the explorer shows labels made on another prompt as such. Files written before the record
existed are read as made on the bank's first prompt with the default decoding (what `dump`
did by default).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from melbo_tui.atomic import atomic_write_text
from melbo_tui.errors import InputError

FALLBACK = "other"
LABELS_SUFFIX = ".labels.json"

DEFAULT_RULES: list[dict[str, Any]] = [
    {"label": "refusal", "kind": "regex", "flags": "i",
     "pattern": r"\b(I(?:'m| am) (?:sorry|unable|not able)|I can(?:no|')t (?:help|assist|provide|do|fulfil|comply)"
                r"|I cannot|I won't|as an AI|I must (?:decline|refuse)|not (?:able|allowed) to (?:help|provide|assist)"
                r"|(?:illegal|harmful|dangerous) (?:and|or) (?:illegal|harmful|dangerous|unethical)"
                r"|you(?:'re| are) not allowed|you (?:can(?:no|')t|should(?:n't| not)|must not) (?:have|build|make|use|do))"},
    {"label": "code", "kind": "regex", "flags": "m", "min_matches": 2,
     "pattern": r"^\s*(?:def |class |import |from \S+ import |function |const |let |var |#include|public |private |return\b"
                r"|if __name__|for \w+ in |print\(|console\.log)|```|[{;]\s*$"},
    {"label": "instructions", "kind": "regex", "flags": "i",
     "pattern": r"\b(?:first,|step \d|you(?:'ll| will)? need (?:to|a|an|some)\b|here(?:'s| is| are) (?:how|the steps|some steps)"
                r"|follow these)"},
    {"label": "instructions", "kind": "regex", "flags": "m", "min_matches": 2, "pattern": r"^\s*(?:\d+[.)]|[-*\u2022]) +\w"},
    {"label": "persona", "kind": "regex", "flags": "i",
     "pattern": r"^\W*(?:I am|I'm|My name|As an? |You are an? )"},
    {"label": "compliance", "kind": "regex", "flags": "i",
     "pattern": r"\b(?:I can (?:provide|give|offer|show|build|make) (?:you )?(?:a few|some|the|a)\b|here are (?:a few|some) (?:ideas|ways|tips))"},
    {"label": "fiction", "kind": "regex", "flags": "i",
     "pattern": r"\b(?:once upon a time|fictional|the (?:film|movie|novel|story|protagonist|antagonist)|a (?:story|tale) (?:of|about))\b"},
    {"label": "explanation", "kind": "regex", "flags": "i",
     "pattern": r"\b(?:the term|originates? from|refers? to|is defined as|is an? (?:device|weapon|complex|delicate|type|kind)\b)"},
    {"label": "repetition", "kind": "repetition", "min_words": 8, "max_distinct": 0.5, "max_run": 0.5},
    {"label": "gibberish", "kind": "gibberish", "min_letters": 0.5, "max_word_len": 15},
]

_KINDS = ("regex", "repetition", "gibberish")


@dataclass(frozen=True)
class MadeOn:
    """What completions (and so their labels) were made on: the prompt as the model saw it and the decoding.

    The seed of a greedy decode is recorded as 0: greedy text does not depend on it.
    """

    prompt: str
    system: str | None = None
    raw: bool = False
    max_new_tokens: int = 48
    temperature: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "temperature", float(self.temperature))
        if self.temperature == 0:
            object.__setattr__(self, "seed", 0)

    @classmethod
    def from_record(cls, record: object) -> MadeOn | None:
        """The record as stored in a labels file (None when absent or malformed)."""
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            return None
        try:
            return cls(prompt=record["prompt"], system=record.get("system"), raw=bool(record.get("raw", False)),
                       max_new_tokens=int(record.get("max_new_tokens", 48)), temperature=float(record.get("temperature", 0.0)),
                       seed=int(record.get("seed", 0)))
        except (TypeError, ValueError):
            return None

    def record(self) -> dict[str, Any]:
        return asdict(self)


def labels_path(bank_path: Path) -> Path:
    """Where the labels of `bank_path` live: `<stem>.labels.json` beside it."""
    bank_path = Path(bank_path)
    return bank_path.with_name(bank_path.stem + LABELS_SUFFIX)


def load_rules(path: Path | None) -> list[dict[str, Any]]:
    """The rules in force: a file's rules before the defaults (or instead of them)."""
    if path is None:
        return [dict(r) for r in DEFAULT_RULES]
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except FileNotFoundError:
        raise InputError(f"rules file not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read rules ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("rules", []), list):
        raise InputError(f"{path}: expected an object with a 'rules' list")
    rules = [dict(r) for r in data.get("rules", [])]
    for rule in rules:
        check_rule(rule, str(path))
    return rules if data.get("replace_defaults") else rules + [dict(r) for r in DEFAULT_RULES]


def check_rule(rule: dict[str, Any], where: str = "rules") -> None:
    if not isinstance(rule, dict) or not isinstance(rule.get("label"), str) or not rule["label"]:
        raise InputError(f"{where}: every rule needs a non-empty 'label'")
    if rule.get("kind") not in _KINDS:
        raise InputError(f"{where}: rule '{rule['label']}' has kind {rule.get('kind')!r}; use one of {', '.join(_KINDS)}")
    if rule["kind"] == "regex":
        try:
            _compile(rule)
        except (re.error, TypeError, KeyError) as exc:
            raise InputError(f"{where}: rule '{rule['label']}' has a bad pattern ({exc})") from None


def classify(text: str, rules: list[dict[str, Any]]) -> str:
    """The label of the first rule matching `text`, else `other`."""
    for rule in rules:
        if _matches(text, rule):
            return str(rule["label"])
    return FALLBACK


def label_texts(texts: list[str], rules: list[dict[str, Any]]) -> list[str]:
    return [classify(t, rules) for t in texts]


def save_labels(bank_path: Path, num_rows: int, labelled: dict[int, str], rules: list[dict[str, Any]],
                made_on: MadeOn) -> Path:
    """Merge `labelled` (row -> label) into the bank's sidecar and write it atomically.

    Under the bank's write lock, and sized to the bank as it is on disk now: a bank that
    `ortho --resume` grew since the caller loaded it keeps the labels of every row. Labels of
    completions made on another prompt or decoding replace the file's instead of merging:
    one file describes one set of completions (`made_on`).
    """
    from melbo_tui.locking import bank_lock

    path = labels_path(bank_path)
    with bank_lock(bank_path):
        num_rows = max(num_rows, _rows_on_disk(bank_path))
        labels = [""] * num_rows
        old = read_labels(bank_path) if path.exists() else None
        if old is not None and len(old) <= num_rows and read_made_on(bank_path) in (made_on, None):
            labels[:len(old)] = old
        for row, label in labelled.items():
            if not 0 <= row < num_rows:
                raise InputError(f"label for row {row} outside the bank's rows 0..{num_rows - 1}")
            labels[row] = label
        atomic_write_text(path, json.dumps({"rules": rules, "labels": labels, "made_on": made_on.record()}, indent=1))
    return path


def _rows_on_disk(bank_path: Path) -> int:
    """How many vectors the bank file holds now (0 if it cannot be read): its header, not its data."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(bank_path), framework="pt") as handle:
            return int(handle.get_slice("vectors").get_shape()[0])
    except (OSError, SafetensorError, KeyError, ValueError):  # a missing or unreadable bank: the caller's count stands
        return 0


def read_labels(bank_path: Path) -> list[str] | None:
    """The labels of a bank (one per row), or None when it has no sidecar."""
    path = labels_path(bank_path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: unreadable labels ({str(exc).splitlines()[0]})") from None
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise InputError(f"{path}: 'labels' must be a list of strings")
    return labels


def read_made_on(bank_path: Path) -> MadeOn | None:
    """What the bank's labels were made on, as recorded (None: no labels file, or no record in it)."""
    path = labels_path(bank_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return MadeOn.from_record(data.get("made_on")) if isinstance(data, dict) else None


def _compile(rule: dict[str, Any]) -> re.Pattern[str]:
    flags = 0
    for letter in rule.get("flags", ""):
        flags |= {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE}[letter]
    return re.compile(rule["pattern"], flags)


def _matches(text: str, rule: dict[str, Any]) -> bool:
    kind = rule["kind"]
    if kind == "regex":
        return len(_compile(rule).findall(text)) >= int(rule.get("min_matches", 1))
    if kind == "repetition":
        return _is_repetitive(text, int(rule.get("min_words", 8)), float(rule.get("max_distinct", 0.5)),
                              float(rule.get("max_run", 0.5)))
    return _is_gibberish(text, float(rule.get("min_letters", 0.5)), float(rule.get("max_word_len", 15)))


def _is_repetitive(text: str, min_words: int, max_distinct: float, max_run: float) -> bool:
    stripped = text.strip()
    if stripped:
        longest = max(len(m.group(0)) for m in re.finditer(r"(.)\1*", stripped, re.DOTALL))
        if len(stripped) >= 8 and longest / len(stripped) >= max_run:
            return True
    words = text.split()
    if len(words) < min_words:
        return False
    grams = list(zip(words, words[1:], words[2:], strict=False))  # trigrams: the shorter tails end it
    return len(Counter(grams)) / len(grams) < max_distinct


def _is_gibberish(text: str, min_letters: float, max_word_len: float) -> bool:
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return True
    letters = sum(c.isalpha() for c in chars) / len(chars)
    words = text.split()
    mean_len = sum(len(w) for w in words) / len(words)
    return letters < min_letters or mean_len > max_word_len
