"""Choosing R: sweep it, measure how much the target layer moves, find the elbow.

The MELBO post picks R at the elbow of the target-layer change against R (too small: nothing
changes; too large: gibberish). For each R a few quick vectors are trained and the mean
per-token change ||Z_t(theta) - Z_t(0)||_2 is recorded over the positions MELBO compares (the
attention sink left out by default: its change is ~100x the others' on the embedded model and
would make the curve a curve of the sink). The curve is S-shaped, so it has two
knees and we report both:
- `onset`: where the slope rises the most (the change "takes off"): the MELBO elbow;
- `saturation`: the point farthest from the first-to-last chord with both axes scaled to
  [0, 1] (the "kneedle" rule): past it, extra norm buys little change (and mostly gibberish).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from melbo_tui.errors import InputError
from melbo_tui.melbo import MelboConfig, MelboObjective, TrainProgress, train
from melbo_tui.models import LoadedModel
from melbo_tui.prompts import encode
from melbo_tui.sink import SinkReport


@dataclass(frozen=True)
class CalibrationPoint:
    radius: float
    mean_change: float  # mean over vectors, prompts and compared positions of ||Z_t(theta) - Z_t(0)||_2
    unsteered_norm: float  # mean ||Z_t(0)||_2 over the same positions, to read the change against


def sweep(
    lm: LoadedModel,
    base: MelboConfig,
    radii: list[float],
    prompts: list[str],
    system: str | None = None,
    raw: bool = False,
    on_point: Callable[[int, CalibrationPoint], None] | None = None,
    on_progress: Callable[[TrainProgress], None] | None = None,
    on_sink: Callable[[SinkReport], None] | None = None,
) -> list[CalibrationPoint]:
    if len(radii) < 3:
        raise InputError("give at least 3 radii to find an elbow")
    inputs = [encode(lm, p, system, raw) for p in prompts]
    objective = MelboObjective(lm, base, inputs)
    points = []
    for i, radius in enumerate(radii):
        config = replace(base, radius=radius)
        vectors = train(lm, config, inputs, on_progress=on_progress, on_sink=on_sink if i == 0 else None)
        point = _measure(objective, radius, vectors)
        points.append(point)
        if on_point is not None:
            on_point(i, point)
    return points


def find_onset(xs: list[float], ys: list[float]) -> int:
    """Index of the interior point where the slope increases the most (slopes per unit of x)."""
    if len(xs) < 3:
        return 0
    slopes = [(ys[i + 1] - ys[i]) / max(xs[i + 1] - xs[i], 1e-12) for i in range(len(xs) - 1)]
    rises = [slopes[i] - slopes[i - 1] for i in range(1, len(slopes))]
    return 1 + max(range(len(rises)), key=rises.__getitem__)


def find_elbow(xs: list[float], ys: list[float]) -> int:
    """Saturation knee: the point farthest from the first-to-last chord, axes scaled to [0, 1]."""
    if len(xs) < 3:
        return len(xs) - 1
    x = torch.tensor(xs, dtype=torch.float64)
    y = torch.tensor(ys, dtype=torch.float64)
    x = (x - x.min()) / max(float(x.max() - x.min()), 1e-12)
    y = (y - y.min()) / max(float(y.max() - y.min()), 1e-12)
    chord = torch.stack([x[-1] - x[0], y[-1] - y[0]])
    chord = chord / chord.norm().clamp_min(1e-12)
    rel = torch.stack([x - x[0], y - y[0]], dim=1)
    distance = (rel[:, 0] * chord[1] - rel[:, 1] * chord[0]).abs()
    return int(distance.argmax())


def _measure(objective: MelboObjective, radius: float, vectors: torch.Tensor) -> CalibrationPoint:
    changes, norms = [], []
    with torch.no_grad():
        for prompt, positions in enumerate(objective.positions):
            kept = positions.kept
            changes.append(float(objective.per_position(vectors.to(objective.lm.device), prompt)[:, kept.to(vectors.device)].mean()))
            norms.append(float(objective.unsteered[prompt][kept.to(objective.unsteered[prompt].device)].norm(dim=-1).mean()))
    return CalibrationPoint(radius, sum(changes) / len(changes), sum(norms) / len(norms))
