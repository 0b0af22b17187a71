"""Choosing R, two ways: MELBO's elbow of the target-layer change, and DCT's nonlinearity ratio.

Elbow (`sweep`, `find_onset`, `find_elbow`):

The MELBO post picks R at the elbow of the target-layer change against R (too small: nothing
changes; too large: gibberish). For each R a few quick vectors are trained and the mean
per-token change ||Z_t(theta) - Z_t(0)||_2 is recorded. The curve is S-shaped, so it has two
knees and we report both:
- `onset`: where the slope rises the most (the change "takes off"): the MELBO elbow;
- `saturation`: the point farthest from the first-to-last chord with both axes scaled to
  [0, 1] (the "kneedle" rule): past it, extra norm buys little change (and mostly gibberish).

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
from melbo_tui.melbo import MelboConfig, TrainProgress, train_melbo
from melbo_tui.metrics import batched
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
        return tangent.detach().flatten(1)  # [c, d_out]

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
    scan_points: int = 20,
    seed: int = 0,
    chunk: int = 64,
    on_point: Callable[[RatioPoint], None] | None = None,
) -> DCTCalibration:
    """R such that the nonlinear part of the response is `target` times the linear part.

    As the authors' later code: the ratio is evaluated at `scan_points` log-spaced R over the
    bracket, the first interval where it rises through `target` brackets the root, and Brent's
    method finds it there (to ~5 significant digits).
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

    scan = [point(lo * (hi / lo) ** (i / (scan_points - 1))) for i in range(scan_points)]
    crossing = next((i for i in range(scan_points - 1) if scan[i].ratio <= target <= scan[i + 1].ratio), None)
    if crossing is None:
        seen = ", ".join(f"{p.ratio:.3g}" for p in scan)
        raise InputError(f"the nonlinearity ratio never rises through {target:g} for R in [{lo:g}, {hi:g}] "
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

