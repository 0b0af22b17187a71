"""Choosing R: sweep it, train a few quick vectors per R, and find where the response takes off.

The MELBO post picks R at the elbow of the target-layer change against R: too small changes
nothing, too large gives gibberish. For each R a few quick vectors are trained and the mean
per-token change ||Z_t(theta) - Z_t(0)||_2 is recorded over the positions MELBO compares (the
attention sink left out by default: its change is ~100x the others' on the embedded model and
would make the curve a straight line of the sink).

Small R answers about linearly (change ~ a constant times R); past some R the change explodes.
`find_takeoff` is the first R whose change per unit R is at least twice that of the smallest R
tried, and `recommend` the largest R tried at or below 3/4 of it: quick vectors keep optimising
in a real run and reach the explosive regime sooner. Measured on the embedded model (blocks 8 ->
16, sink left out, 4 quick vectors of 100 steps): linear to R = 20 (change/R 3.1 at 5, 3.9 at 20),
12 at R = 25, 35 at R = 30; vectors trained 300 steps were coherent and distinct at R = 15 and
mostly gibberish at R = 20 and above.
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


TAKEOFF_FACTOR = 2.0  # change per unit R, relative to the smallest R's, that counts as "no longer linear"
RECOMMEND_FRACTION = 0.75


def find_takeoff(radii: list[float], changes: list[float], factor: float = TAKEOFF_FACTOR) -> int | None:
    """Index of the first R whose change per unit R is >= `factor` x the smallest R's; None if none is."""
    if len(radii) < 2 or radii[0] <= 0 or changes[0] <= 0:
        return None
    linear = changes[0] / radii[0]
    return next((i for i in range(1, len(radii)) if changes[i] / radii[i] >= factor * linear), None)


def recommend(radii: list[float], takeoff: int | None, fraction: float = RECOMMEND_FRACTION) -> int | None:
    """Index of the largest R tried at or below `fraction` x the take-off R (None without a take-off)."""
    if takeoff is None:
        return None
    below = [i for i in range(takeoff) if radii[i] <= fraction * radii[takeoff]]
    return below[-1] if below else None


def _measure(objective: MelboObjective, radius: float, vectors: torch.Tensor) -> CalibrationPoint:
    changes, norms = [], []
    with torch.no_grad():
        for prompt, positions in enumerate(objective.positions):
            kept = positions.kept
            changes.append(float(objective.per_position(vectors.to(objective.lm.device), prompt)[:, kept.to(vectors.device)].mean()))
            norms.append(float(objective.unsteered[prompt][kept.to(objective.unsteered[prompt].device)].norm(dim=-1).mean()))
    return CalibrationPoint(radius, sum(changes) / len(changes), sum(norms) / len(norms))
