"""Defaults in the model's own units: SmolLM2 keeps its choices, massive activations do not move the unit."""

from __future__ import annotations

import pytest
import torch

from melbo_tui.cli.engine_cmds import _no_takeoff_advice
from melbo_tui.models import LoadedModel
from melbo_tui.scale import CALIBRATE_RADII, MELBO_RADIUS, model_scale, residual_size


def test_massive_coordinates_move_the_norm_but_not_the_unit() -> None:
    """Gemma 3's residual stream at block 6 is 3 coordinates of ~2,000 among 640 of ~8: the norm follows
    the three, the typical coordinate does not (the take-off follows the latter, docs/replication.md)."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(12, 640, generator=gen) * 8.0
    unit, norm = residual_size(hidden)
    massive = hidden.clone()
    massive[:, [163, 87, 400]] += torch.tensor([2772.0, -1863.0, 1436.0])
    unit_m, norm_m = residual_size(massive)
    assert norm_m > 15 * norm
    assert unit_m == pytest.approx(unit, rel=0.02)
    sink = massive.clone()
    sink[0] *= 100.0  # an attention sink at position 0 is left out of both
    assert residual_size(sink) == pytest.approx((unit_m, norm_m), rel=0.02)


@pytest.mark.embedded
def test_smollm2_keeps_its_defaults(embedded: LoadedModel) -> None:
    scale = model_scale(embedded, 8)
    assert scale.factor == pytest.approx(1.0, abs=0.01)
    assert scale.radius() == MELBO_RADIUS
    assert scale.radii() == list(CALIBRATE_RADII)
    assert scale.record()["unit"] < scale.record()["residual_norm"]


def test_a_sweep_without_take_off_says_which_way_to_go() -> None:
    # Gemma 3 270M with the norm-scaled radii: every R already past the take-off (measured, docs/replication.md)
    radii = [140.0, 290.0, 430.0, 580.0, 720.0, 870.0, 1200.0, 1700.0]
    changes = [13422.0, 22669.0, 28604.0, 33086.0, 41524.0, 45835.0, 52189.0, 57665.0]
    saturating = _no_takeoff_advice(radii, changes, None, keep_sink=False)
    assert "Try smaller radii, e.g. --radii 4.2,8.4,17,35,70,140" in saturating and "larger" not in saturating
    linear = _no_takeoff_advice([5.0, 10.0, 20.0], [50.0, 101.0, 199.0], None, keep_sink=False)
    assert "Try larger radii, e.g. --radii 10,20,30,40,60,80" in linear and "--sink exclude" not in linear
    assert "try --sink exclude" in _no_takeoff_advice([5.0, 10.0, 20.0], [50.0, 101.0, 199.0], None, keep_sink=True)
    assert "start lower" in _no_takeoff_advice([40.0, 60.0], [100.0, 400.0], 1, keep_sink=False)
