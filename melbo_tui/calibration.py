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

DCT's ratio (`calibrate_dct`, the authors' `SteeringCalibrator`): for random unit directions v,
the part of the response that is not linear, relative to the linear part,

    ratio(R) = sqrt( mean_v ||Delta(R v) - R J v||^2 / ||R J v||^2 ),

with J v exact (forward-mode `torch.func.jvp` at 0: finite differences are noise in bf16), and R
the root of ratio(R) = 0.5 found by Brent's method on [0.001, 100]. The mean is over directions
of each direction's squared ratio, then the square root (as in the authors' code). It works on
any differentiable response map `thetas [K, d] -> [K, d_out]` (`response.TargetResponse`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from melbo_tui.errors import InputError
from melbo_tui.melbo import MelboConfig, MelboObjective, TrainProgress, train
from melbo_tui.metrics import batched
from melbo_tui.models import LoadedModel
from melbo_tui.prompts import encode
from melbo_tui.scale import SCAN_POINTS
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
        raise InputError("give at least 3 radii to find the take-off")
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


@dataclass(frozen=True)
class MelboCalibration:
    """A MELBO radius sweep read: the points, the take-off R and the recommended R (None where the sweep shows none)."""

    points: list[CalibrationPoint]
    takeoff: float | None
    recommended: float | None


def calibrate_melbo(points: list[CalibrationPoint]) -> MelboCalibration:
    """Read a sweep: the take-off (`find_takeoff`) and the recommendation (`recommend`)."""
    radii, changes = [p.radius for p in points], [p.mean_change for p in points]
    takeoff = find_takeoff(radii, changes)
    pick = recommend(radii, takeoff)
    return MelboCalibration(points, radii[takeoff] if takeoff is not None else None, radii[pick] if pick is not None else None)


def _measure(objective: MelboObjective, radius: float, vectors: torch.Tensor) -> CalibrationPoint:
    changes, norms = [], []
    with torch.no_grad():
        for prompt, positions in enumerate(objective.positions):
            kept = positions.kept
            changes.append(float(objective.per_position(vectors.to(objective.lm.device), prompt)[:, kept.to(vectors.device)].mean()))
            norms.append(float(objective.unsteered[prompt][kept.to(objective.unsteered[prompt].device)].norm(dim=-1).mean()))
    return CalibrationPoint(radius, sum(changes) / len(changes), sum(norms) / len(norms))


# --- DCT's calibration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RatioPoint:
    radius: float
    ratio: float  # sqrt(mean_v ||Delta(R v) - R J v||^2 / ||R J v||^2)


@dataclass(frozen=True)
class DCTCalibration:
    radius: float  # the root of ratio(R) = target
    target: float
    num_directions: int
    scan: list[RatioPoint]  # log-spaced over the bracket: where the root was bracketed, and the chart
    evaluations: list[RatioPoint]  # every R Brent's method tried, in order

    def to_json(self) -> dict[str, object]:
        """What a bank records about how its R was chosen."""
        return {"method": "dct", "radius": self.radius, "target_ratio": self.target, "directions": self.num_directions,
                "scan": [[p.radius, p.ratio] for p in self.scan]}


def nonlinearity_ratio(response: Callable[[torch.Tensor], torch.Tensor], directions: torch.Tensor,
                       chunk: int = 64) -> Callable[[float], float]:
    """`R -> ratio(R)` for unit `directions  # [n, d]`; J v is computed once, exactly (forward mode)."""
    device = directions.device

    def jvp(rows: torch.Tensor) -> torch.Tensor:
        tangent = torch.func.jvp(response, (torch.zeros_like(rows),), (rows,))[1]
        linear: torch.Tensor = tangent.detach().flatten(1)  # [c, d_out]
        return linear

    jv = batched(jvp, directions, chunk, device).double()  # [n, d_out]
    linear_sq = jv.pow(2).sum(dim=1)  # ||J v||^2

    def forward(rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return response(rows).detach().flatten(1)

    def ratio(radius: float) -> float:
        delta = batched(forward, radius * directions, chunk, device).double()  # [n, d_out]
        residual_sq = (delta - radius * jv).pow(2).sum(dim=1)
        return math.sqrt(float((residual_sq / (radius**2 * linear_sq).clamp_min(1e-300)).mean()))

    return ratio


def calibrate_dct(
    response: Callable[[torch.Tensor], torch.Tensor],
    hidden_size: int,
    device: torch.device,
    num_directions: int = 30,
    target: float = 0.5,
    bracket: tuple[float, float] = (0.001, 100.0),
    scan_points: int = SCAN_POINTS,
    seed: int = 0,
    chunk: int = 64,
    on_point: Callable[[RatioPoint], None] | None = None,
) -> DCTCalibration:
    """R such that the nonlinear part of the response is `target` times the linear part.

    As the authors' later code: the ratio is evaluated at `scan_points` log-spaced R over the
    bracket, the first interval where it rises through `target` brackets the root, and Brent's
    method finds it there (to ~5 significant digits). Where the ratio is still below `target` at
    the top of the bracket (a model whose own scale the bracket misjudged), the scan goes on up,
    at the same spacing, for at most three more decades before giving up.
    """
    lo, hi = bracket
    if not 0 < lo < hi < math.inf:
        raise InputError(f"the R bracket must satisfy 0 < low < high, got {lo}, {hi}")
    if num_directions <= 0 or not target > 0 or scan_points < 2:
        raise InputError("the calibration needs directions > 0, a target ratio > 0 and at least 2 scan points")
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(num_directions, hidden_size, generator=generator)
    directions = (directions / directions.norm(dim=1, keepdim=True)).to(device)  # [n, d]
    ratio = nonlinearity_ratio(response, directions, chunk)

    def point(radius: float) -> RatioPoint:
        found = RatioPoint(radius, ratio(radius))
        if on_point is not None:
            on_point(found)
        return found

    step = (hi / lo) ** (1 / (scan_points - 1))
    scan = [point(lo * step**i) for i in range(scan_points)]
    crossing = next((i for i in range(scan_points - 1) if scan[i].ratio <= target <= scan[i + 1].ratio), None)
    while crossing is None and scan[-1].ratio < target and scan[-1].radius < hi * 1000:
        scan.append(point(scan[-1].radius * step))
        if scan[-2].ratio <= target <= scan[-1].ratio:
            crossing = len(scan) - 2
    if crossing is None:
        seen = ", ".join(f"{p.ratio:.3g}" for p in scan)
        raise InputError(f"the nonlinearity ratio never rises through {target:g} for R in [{lo:g}, {scan[-1].radius:g}] "
                         f"(ratios seen: {seen}): give the radius yourself")
    a, b = scan[crossing], scan[crossing + 1]
    evaluations: list[RatioPoint] = []

    def excess(radius: float) -> float:
        found = point(radius)
        evaluations.append(found)
        return found.ratio - target

    root = brent_root(excess, a.radius, b.radius, a.ratio - target, b.ratio - target, xtol=1e-6, rtol=1e-5)
    return DCTCalibration(root, target, num_directions, scan, evaluations)


def brent_root(f: Callable[[float], float], a: float, b: float, fa: float, fb: float,
               xtol: float = 1e-12, rtol: float = 4 * 2.2e-16, maxiter: int = 100) -> float:
    """A root of `f` in [a, b] given f(a) and f(b) of opposite signs (Brent 1973: bisection,
    secant and inverse quadratic interpolation, never worse than bisection)."""
    if fa == 0:
        return a
    if fb == 0:
        return b
    if fa * fb > 0:
        raise ValueError("f(a) and f(b) must have opposite signs")
    c, fc = a, fa
    d = e = b - a
    for _ in range(maxiter):
        if fb * fc > 0:  # keep the root between b and c
            c, fc = a, fa
            d = e = b - a
        if abs(fc) < abs(fb):  # b is the best guess
            a, b, c = b, c, b
            fa, fb, fc = fb, fc, fb
        tol = 2 * rtol * abs(b) + xtol / 2
        half = (c - b) / 2
        if abs(half) <= tol or fb == 0:
            return b
        if abs(e) >= tol and abs(fa) > abs(fb):  # try interpolation
            s = fb / fa
            if a == c:  # secant
                p, q = 2 * half * s, 1 - s
            else:  # inverse quadratic
                q0, r = fa / fc, fb / fc
                p = s * (2 * half * q0 * (q0 - r) - (b - a) * (r - 1))
                q = (q0 - 1) * (r - 1) * (s - 1)
            if p > 0:
                q = -q
            p = abs(p)
            if 2 * p < min(3 * half * q - abs(tol * q), abs(e * q)):
                e, d = d, p / q
            else:
                d = e = half
        else:
            d = e = half
        a, fa = b, fb
        b += d if abs(d) > tol else math.copysign(tol, half)
        fb = f(b)
    return b

