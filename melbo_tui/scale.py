"""The model's own unit for radii: every default R is a multiple of its typical residual coordinate.

The defaults were chosen on SmolLM2-135M-Instruct: at the output of block 8 `calibrate` found
the take-off of the response at R = 25 and recommended R = 15. A radius means the same on
another model when it is the same multiple of that model's residual stream at the layer it is
added to, so a default written for SmolLM2 (`R_ref`) becomes `R_ref x unit / REFERENCE_UNIT`,
rounded to two significant digits (on SmolLM2 at block 8 the factor is exactly 1: the same
choices as before).

Which size of the residual stream? Not its norm: Gemma 3 270M's is 3,790 per token at block 6,
29x SmolLM2's at block 8, but 3 of its 640 coordinates carry ~3,500 of it (massive
activations, the same dimensions in every token), and measured, its take-off is at R = 70
(`calibrate --radii 5,10,20,30,45,70,100,140`), 2.8x SmolLM2's, so the norm put its default R
(430) far past the point where vectors break the model. The unit here is the typical
coordinate's size, sqrt(d) x the median |x_i|, which massive dimensions do not move: 46.3 on
SmolLM2, 197 on Gemma (4.3x; default R 64, calibrate's recommendation 45 on the seed prompt).
A starting point, not a measurement: `calibrate` measures R for a model, layer and prompt.

The unit is measured on one fixed text, the seed's prompt in the model's own format, so it is
a property of the model and the layer, not of the prompt a run happens to use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads where a model is measured: the CLI's help reads the constants below
    import torch

    from melbo_tui.models import LoadedModel

REFERENCE_PROMPT = "How can I build a bomb?"
REFERENCE_UNIT = 46.28  # SmolLM2-135M-Instruct, output of block 8: sqrt(d) x median |x_i|, median over the chat prompt's tokens, sink left out
MELBO_RADIUS = 15.0  # `calibrate`'s recommendation on SmolLM2 at blocks 8 -> 16, in its units
CALIBRATE_RADII = (2.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 60.0)  # the sweep that found it, from a linear start
DCT_BRACKET = (0.001, 100.0)  # where DCT's calibration looks for its root (the authors')
SCAN_POINTS = 20  # log-spaced points of that scan before Brent's method (the authors')


@dataclass(frozen=True)
class ModelScale:
    """The residual stream's size at one layer, and defaults written in its units."""

    layer: int
    unit: float  # sqrt(d) x median |x_i| at the output of block `layer`: median over the reference prompt's tokens, sink left out
    norm: float  # the median per-token norm there (recorded: the ratio unit / norm shows massive activations)

    @property
    def factor(self) -> float:
        return self.unit / REFERENCE_UNIT

    def radius(self, reference: float = MELBO_RADIUS) -> float:
        """A radius written for SmolLM2 (`reference`), in this model's units: two significant digits."""
        return round_significant(reference * self.factor)

    def radii(self) -> list[float]:
        """`calibrate`'s default sweep."""
        return [self.radius(r) for r in CALIBRATE_RADII]

    def bracket(self) -> tuple[float, float]:
        """DCT's calibration interval."""
        return (DCT_BRACKET[0] * self.factor, DCT_BRACKET[1] * self.factor)

    def record(self) -> dict[str, Any]:
        """What a bank records about the defaults it was made with."""
        return {"layer": self.layer, "unit": round(self.unit, 2), "residual_norm": round(self.norm, 2), "reference_unit": REFERENCE_UNIT,
                "factor": round(self.factor, 4), "reference_prompt": REFERENCE_PROMPT}


def round_significant(value: float, digits: int = 2) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def model_scale(lm: LoadedModel, layer: int) -> ModelScale:
    """The residual stream's typical coordinate (and norm) at the output of block `layer`, on the reference prompt."""
    import torch

    from melbo_tui.prompts import encode
    from melbo_tui.steering import run_to_layer

    ids = encode(lm, REFERENCE_PROMPT)
    with torch.no_grad():
        hidden = run_to_layer(lm, layer, ids)[0].float()  # [T, d]
    unit, norm = residual_size(hidden)
    return ModelScale(layer, unit, norm)


def residual_size(hidden: torch.Tensor) -> tuple[float, float]:
    """(typical coordinate x sqrt(d), norm) of residual states `hidden` [T, d]: medians over the positions, sink left out."""
    from melbo_tui.sink import SinkRule, select_positions

    norms = hidden.norm(dim=-1)  # [T]
    kept = select_positions(norms, SinkRule()).kept.to(norms.device)
    typical = hidden[kept].abs().median(dim=-1).values * math.sqrt(hidden.shape[-1])  # [T kept]
    return float(typical.median()), float(norms[kept].median())
