"""What a completion depends on besides the steering vector: the prompt and how to decode.

What steers is a `melbo_tui.compose.Composition` (no rows = unsteered); how to decode is the
engine's `GenerationSettings`. Both are torch-free, so the app holds them before its first frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from melbo_tui.compose import ComposeMode, Composition, check_scale
from melbo_tui.decoding import GenerationSettings
from melbo_tui.errors import InputError
from melbo_tui.labels import MadeOn


@dataclass(frozen=True)
class ExploreSettings:
    """The prompt as the model sees it, decoding, and the composition mode and scale that `+`/`-`/`m` change."""

    prompt: str
    system: str | None = None
    raw: bool = False
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    scale: float = 1.0  # applies to single vectors and compositions alike (always shown in the status bar)
    mode: ComposeMode = ComposeMode.MEAN

    def check(self) -> None:
        if not self.prompt.strip():
            raise InputError("empty prompt")
        self.generation.check()
        check_scale(self.scale)

    def target(self, rows: tuple[int, ...]) -> Composition:
        """The rows as steered with this mode and scale."""
        return Composition(rows, self.mode, self.scale)

    def with_mode(self, mode: ComposeMode) -> ExploreSettings:
        return replace(self, mode=mode)

    def made_on(self) -> MadeOn:
        """What a completion on these settings is made on (labels record it): the scale and mode steer, they are not here."""
        g = self.generation
        return MadeOn(self.prompt, self.system, self.raw, g.max_new_tokens, g.temperature, g.seed)

    def unscaled(self) -> ExploreSettings:
        """These settings at scale x1: a row's own completion, the one its label describes."""
        return replace(self, scale=1.0)
