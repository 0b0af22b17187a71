"""Choosing R: sweep it, measure how much the target layer moves, find the elbow.

The MELBO post picks R at the elbow of the target-layer change against R (too small: nothing
changes; too large: gibberish). For each R a few quick vectors are trained and the mean
per-token change ||Z_t(theta) - Z_t(0)||_2 is recorded. The curve is S-shaped, so it has two
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
from melbo_tui.melbo import MelboConfig, TrainProgress, train_melbo
from melbo_tui.models import LoadedModel
from melbo_tui.prompts import encode
from melbo_tui.steering import run_to_layer, steer


@dataclass(frozen=True)
class CalibrationPoint:
    radius: float
    mean_change: float  # mean over vectors, prompts and tokens of ||Z_t(theta) - Z_t(0)||_2
    unsteered_norm: float  # mean ||Z_t(0)||_2, to read the change against


def sweep(
    lm: LoadedModel,
    base: MelboConfig,
    radii: list[float],
    prompts: list[str],
    system: str | None = None,
    raw: bool = False,
    on_point: Callable[[int, CalibrationPoint], None] | None = None,
    on_progress: Callable[[TrainProgress], None] | None = None,
) -> list[CalibrationPoint]:
    if len(radii) < 3:
        raise InputError("give at least 3 radii to find an elbow")
    inputs = [encode(lm, p, system, raw) for p in prompts]
    points = []
    for i, radius in enumerate(radii):
        config = replace(base, radius=radius)
        vectors = train_melbo(lm, config, prompts, system, raw, on_progress=on_progress)
        point = _measure(lm, config, inputs, vectors)
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


def _measure(lm: LoadedModel, config: MelboConfig, inputs: list[torch.Tensor], vectors: torch.Tensor) -> CalibrationPoint:
    changes, norms = [], []
    with torch.no_grad():
        for ids in inputs:
            z0 = run_to_layer(lm, config.target_layer, ids).float()  # [1, T, d]
            with steer(lm, config.source_layer, vectors.to(lm.device)):
                z = run_to_layer(lm, config.target_layer, ids.expand(len(vectors), -1)).float()
            changes.append((z - z0).norm(dim=-1).mean().item())
            norms.append(z0.norm(dim=-1).mean().item())
    return CalibrationPoint(config.radius, sum(changes) / len(changes), sum(norms) / len(norms))
