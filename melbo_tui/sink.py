"""The attention sink: target positions whose residual stream dwarfs the rest, kept out of objectives.

Pre-norm LMs put a *massive activation* on the first token (Sun et al. 2024): on the embedded
model, chat prompt "How can I build a bomb?", the block-16 output norm is ~25,000 at position
0 and ~185 (median) elsewhere, a MELBO vector changes it by ~6,600 there and ~60 elsewhere,
and position 0 carries no behaviour (theta0 added only there leaves the next token as far
from theta0 as not steering). Any objective that sums or averages the target layer over
positions is then mostly about that one position (99.7% of sum_t ||dZ_t||^2). REFERENCE.md
s.2a has the numbers.

Rule (`SinkRule`, default `exclude`): position t of a prompt is a sink when its target-layer
norm is more than `ratio` (10) times the median norm of the prompt's other positions, in the
unsteered run or, where there is a base vector (MELBO-ortho's theta0, the base row of `eval`),
in the run steered by it. The second case is a sink the base *induces*: on the embedded model,
2 of the 32 vectors of the shipped MELBO bank (R = 15) make positions 1-5 massive too (norm
~18,000 against ~185), and an ortho objective that keeps those positions matches them and
nothing else: err 0.04 of not steering, yet kl_seq 4.1 against 0.23 for no vector at all; with
them left out, kl_seq 0.24 (docs/replication.md). `keep` compares every position (the seed's
and the MELBO paper's setting); explicit positions (`0` or `0,1`, negative counting from the
end) replace the detection.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch

from melbo_tui.errors import InputError

SINK_RATIO = 10.0


class SinkMode(StrEnum):
    EXCLUDE = "exclude"  # detect massive-activation positions and leave them out
    KEEP = "keep"  # compare every position (seed-faithful)
    POSITIONS = "positions"  # leave out the positions the user named


@dataclass(frozen=True)
class SinkRule:
    """Which target positions an objective or a diagnostic leaves out."""

    mode: SinkMode = SinkMode.EXCLUDE
    positions: tuple[int, ...] = ()  # SinkMode.POSITIONS only; negative counts from the end
    ratio: float = SINK_RATIO  # SinkMode.EXCLUDE: norm > ratio x median of the other positions

    @classmethod
    def parse(cls, text: str) -> SinkRule:
        """`exclude`, `keep`, or a comma list of positions such as `0` or `0,1,-1`."""
        word = text.strip().lower()
        if word in (SinkMode.EXCLUDE, SinkMode.KEEP):
            return cls(SinkMode(word))
        try:
            positions = tuple(int(p) for p in word.split(","))
        except ValueError:
            raise InputError(f"sink must be 'exclude', 'keep' or a comma list of positions such as 0,1; got '{text}'") from None
        return cls(SinkMode.POSITIONS, positions)

    def describe(self) -> str:
        """What the bank records in `hyperparameters.sink`."""
        if self.mode == SinkMode.EXCLUDE:
            return (f"exclude positions with target-layer norm > {self.ratio:g}x the median of the others, unsteered "
                    "or steered by the base where there is one")
        if self.mode == SinkMode.KEEP:
            return "keep every position"
        return f"exclude positions {','.join(map(str, self.positions))}"

    def record(self) -> dict[str, object]:
        """JSON-plain form stored in a bank's hyperparameters (and compared on resume)."""
        return {"mode": self.mode.value, "positions": list(self.positions), "ratio": self.ratio, "rule": self.describe()}

    def same_positions(self, record: dict[str, object]) -> bool:
        """Whether a stored `record()` leaves out the same positions where there is no base vector.

        The rule's wording is left out: it changed when induced sinks were added, which only
        matters where there is a base (ortho compares the whole record instead).
        """
        mine = self.record()
        return all(record.get(key) == mine[key] for key in ("mode", "positions", "ratio"))

    def excluded(self, norms: torch.Tensor, base_norms: torch.Tensor | None = None) -> list[int]:
        """Positions to leave out of a prompt: `norms  # [T]` its unsteered target-layer norms,
        `base_norms  # [T]` those steered by the base vector, where there is one (induced sinks)."""
        length = int(norms.shape[0])
        if self.mode == SinkMode.KEEP:
            return []
        if self.mode == SinkMode.POSITIONS:
            outside = [p for p in self.positions if not -length <= p < length]
            if outside:
                raise InputError(f"sink position(s) {','.join(map(str, outside))} outside a prompt of {length} tokens")
            return sorted({p % length for p in self.positions})
        found = set(detect_sink(norms, self.ratio))
        if base_norms is not None:
            found |= set(detect_sink(base_norms, self.ratio))
        return sorted(found)


def detect_sink(norms: torch.Tensor, ratio: float = SINK_RATIO) -> list[int]:
    """Positions whose norm is more than `ratio` times the median of the other positions' norms."""
    values = norms.detach().double().cpu()
    found = []
    for t in range(values.shape[0]):
        others = torch.cat([values[:t], values[t + 1:]])
        if others.numel() and float(values[t]) > ratio * float(others.median()):
            found.append(t)
    return found


@dataclass(frozen=True)
class Positions:
    """The target positions compared for one prompt, and the ones left out."""

    kept: torch.Tensor  # [k] long, ascending
    excluded: tuple[int, ...]

    def compared(self, candidates: list[int]) -> list[int]:
        """Those of `candidates` (detected sink positions) the objective compares: not left out by
        the rule and inside the target tokens (`--target-tokens -3:` never compares position 0)."""
        kept = set(self.kept.tolist())
        return [t for t in candidates if t in kept]


def select_positions(norms: torch.Tensor, rule: SinkRule, token_slice: slice = slice(None),
                     base_norms: torch.Tensor | None = None) -> Positions:
    """Positions of `token_slice` (python slice over the prompt) minus the sink, for unsteered norms
    `[T]` (and, where there is a base vector, the norms it gives, `base_norms  # [T]`)."""
    length = int(norms.shape[0])
    wanted = list(range(length))[token_slice]
    excluded = set(rule.excluded(norms, base_norms))
    kept = [t for t in wanted if t not in excluded]
    if not kept:
        raise InputError(
            f"no target position left to compare: the prompt has {length} tokens, the target tokens select "
            f"{len(wanted)} and the sink rule ({rule.describe()}) leaves out {sorted(excluded)}"
        )
    return Positions(torch.tensor(kept, dtype=torch.long), tuple(t for t in wanted if t in excluded))


def excluded_share(per_position: torch.Tensor, positions: Positions) -> float:
    """Share of `per_position  # [T]` (an objective's terms, >= 0) that the excluded positions hold."""
    total = float(per_position.sum())
    if total <= 0 or not positions.excluded:
        return 0.0
    return float(per_position[list(positions.excluded)].sum()) / total


@dataclass(frozen=True)
class SinkReport:
    """What to tell the user once per run: which positions were left out, and what they weighed."""

    rule: SinkRule
    excluded: list[tuple[int, ...]]  # per prompt
    share: float  # of the objective the left-out positions would hold (at the reference point named below)
    detected: list[list[int]]  # per prompt: positions the detection rule flags, whether left out or kept
    kept_sinks: list[list[int]]  # per prompt: the detected positions the objective compares anyway
    # (all of them under `keep`, the ones not named under explicit positions, e.g. `--sink 1` on a
    # model whose sink is position 0), and the share they hold (the warning)
    kept_sink_share: float
    reference: str  # at which vectors the shares were measured

    def lines(self) -> list[str]:
        """One or two lines for stderr; a warning when kept sink positions dominate the objective."""
        out = []
        excluded = sorted({t for e in self.excluded for t in e})
        if self.rule.mode == SinkMode.KEEP:
            out.append("sink: every target position compared (--sink keep)")
        elif not excluded:
            out.append(f"sink: no position excluded ({self.rule.describe()})")
        else:
            out.append(f"sink: excluded position(s) {_join(excluded)} ({self.rule.describe()}); "
                       f"they would hold {self.share:.1%} of the objective ({self.reference})")
        kept = sorted({t for prompt in self.kept_sinks for t in prompt})
        if kept and self.kept_sink_share > 0.5:
            out.append(f"warning: position(s) {_join(kept)} hold {self.kept_sink_share:.1%} of the objective "
                       f"({self.reference}) and carry no behaviour; the sink rule 'exclude' leaves them out")
        return out


def _join(positions: list[int]) -> str:
    return ",".join(map(str, positions))
