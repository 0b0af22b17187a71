"""How to decode and what a decode gave: plain values with no torch, so a face can hold them early.

`melbo_tui.generation` (which imports torch and transformers) re-exports both types; the
explorer builds its settings before the first frame, when importing torch would cost seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from melbo_tui.errors import InputError

MAX_NEW_TOKENS_LIMIT = 4096  # one bound for every face: beyond it a "completion" is a job, not a preview


@dataclass(frozen=True)
class GenerationSettings:
    """How to decode. The defaults are every face's defaults (CLI, dump, sweep, explorer):
    greedy, so a completion is reproducible and comparable across vectors, and 48 tokens,
    enough to read a behaviour at ~27 tokens/s on a 2-core CPU."""

    max_new_tokens: int = 48
    temperature: float = 0.0
    seed: int = 0

    def check(self) -> None:
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise InputError(f"max new tokens must be 1..{MAX_NEW_TOKENS_LIMIT}, got {self.max_new_tokens}")
        if not self.temperature >= 0 or self.temperature == float("inf"):
            raise InputError(f"temperature must be a finite number >= 0, got {self.temperature}")


@dataclass(frozen=True)
class GenerationResult:
    text: str
    num_tokens: int
    seconds: float
    stopped: bool  # True when `should_stop` cut it short

    @property
    def tokens_per_second(self) -> float:
        return self.num_tokens / self.seconds if self.seconds > 0 else 0.0
