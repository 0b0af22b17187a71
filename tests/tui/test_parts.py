"""The explorer's model-free parts: filter expressions, sorting, sparklines, the cache, keymaps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from melbo_tui.errors import InputError
from melbo_tui.tui import spark
from melbo_tui.tui.bankview import open_bank_view, read_labels
from melbo_tui.tui.cache import CachedCompletion, CompletionCache, completion_key
from melbo_tui.tui.filters import parse_filter, visible_rows
from melbo_tui.tui.keymap import load_keymap
from melbo_tui.tui.settings import ExploreSettings, Target

from .conftest import make_bank


@pytest.fixture
def view(bank_path: Path):  # type: ignore[no-untyped-def]
    return open_bank_view(bank_path)


def test_bank_view_computes_norm_and_cos_without_a_model(tmp_path: Path) -> None:
    view = open_bank_view(make_bank(tmp_path / "b.safetensors", 6, metrics=False))
    assert math.isclose(view.value("norm", 0), 7.0, rel_tol=1e-4) and math.isclose(view.value("norm", 5), 20.0, rel_tol=1e-4)
    assert math.isclose(view.value("cos_base", 0), 1.0, rel_tol=1e-5)
    assert math.isnan(view.value("kl", 3)) and not view.has("kl")


def test_filters(view) -> None:  # type: ignore[no-untyped-def]
    def rows(text: str) -> list[int]:
        return visible_rows(view, parse_filter(text), "idx", False, {4, 7})

    assert rows("label=code") == list(range(0, 40, 3))
    assert rows("label!=code and idx<6") == [1, 2, 4, 5]
    assert rows("label~REF & idx<5") == [1, 4]
    assert rows("idx>=37 | idx=0") == [0, 37, 38, 39]
    assert rows("sel=1") == [4, 7]
    assert all(view.value("norm", r) > 15 for r in rows("norm>15")) and rows("norm>15")
    assert rows("kl<0.0001") == [0, 1, 2]  # kl = 0.001 i^2 / 40
    assert parse_filter("  ") is None
    for bad, why in (("kl 3", "cannot read"), ("kl<<1", "not a number"), ("size>3", "unknown filter field"), ("norm>big", "not a number"),
                     ("label<code", "label only takes"), ("norm~3", "only works on label")):
        with pytest.raises(InputError, match=why):
            parse_filter(bad)


def test_nan_never_matches_and_sorts_last(tmp_path: Path) -> None:
    view = open_bank_view(make_bank(tmp_path / "b.safetensors", 5, metrics=False))
    assert visible_rows(view, parse_filter("kl<1"), "idx", False, set()) == []
    view.set_metric("kl", [0.0, 0.5, float("nan"), 0.2, 0.1])
    assert visible_rows(view, None, "kl", False, set()) == [0, 4, 3, 1, 2]
    assert visible_rows(view, None, "kl", True, set()) == [1, 3, 4, 0, 2]


def test_labels_sidecar(tmp_path: Path) -> None:
    path = make_bank(tmp_path / "b.safetensors", 4)
    assert read_labels(path, 4) == ["", "", "", ""]
    (tmp_path / "b.labels.json").write_text(json.dumps({"labels": ["code", None, "refusal"]}))
    assert read_labels(path, 4) == ["code", "", "refusal", ""]
    (tmp_path / "b.labels.json").write_text("[1, 2]")
    with pytest.raises(Exception, match="expected a JSON object"):
        read_labels(path, 4)


def test_sparkline_text() -> None:
    levels = spark.scaled([0.0, 1.0, 2.0, float("nan")])
    assert levels[:3] == [0.0, 0.5, 1.0] and math.isnan(levels[3])
    assert "".join(spark.block(v) for v in levels) == "▁▅█ "
    cells = spark.window_cells([0.0, 1.0, 0.5], 3)
    assert cells == [" ▁█", "▁█▅", "█▅ "]
    assert spark.buckets([1.0, 3.0, 2.0, 5.0], 2) == [3.0, 5.0]
    for n, width in ((10, 3), (2048, 60), (7, 7), (5, 9)):
        for row in range(n):  # the marker lands in the bucket that holds the row
            b = spark.bucket_of(row, n, width)
            w = min(width, n)
            assert b * n // w <= row < max(b * n // w + 1, (b + 1) * n // w)
    assert spark.moving_average([0, 2, 4, 6], 3) == [1.0, 2.0, 4.0, 5.0]


def _entry(key: str, text: str) -> CachedCompletion:
    return CachedCompletion(key=key, target="vector 1", text=text, num_tokens=3, seconds=0.5, model="m",
                            prompt="p", system=None, raw=False, temperature=0.0, max_new_tokens=8, seed=0)


def test_cache_round_trip_skips_corrupt_lines_and_exports(tmp_path: Path) -> None:
    cache = CompletionCache("abc123", tmp_path)
    cache.put(_entry("k1", "hello"))
    with open(cache.path, "a") as handle:
        handle.write("{not json\n")
    again = CompletionCache("abc123", tmp_path)
    assert again.get("k1").text == "hello" and len(again) == 1
    assert again.export(tmp_path / "out.jsonl") == 1
    assert json.loads((tmp_path / "out.jsonl").read_text())["text"] == "hello"
    again.export(tmp_path / "out.txt")
    assert "## vector 1" in (tmp_path / "out.txt").read_text()


def test_cache_key_covers_what_the_text_depends_on() -> None:
    s = ExploreSettings(prompt="p")
    base = completion_key("m", Target((1,)), s)
    assert base == completion_key("m", Target((1,)), s)
    assert base != completion_key("m", Target((2,)), s)
    assert base != completion_key("m", Target((1,), scale=2.0), s)
    assert base != completion_key("m", Target((1,)), ExploreSettings(prompt="q"))
    assert base != completion_key("other", Target((1,)), s)
    assert completion_key("m", Target((1, 2), "sum"), s) != completion_key("m", Target((1, 2), "mean"), s)
    # greedy decoding ignores the seed, sampling does not
    assert base == completion_key("m", Target((1,)), ExploreSettings(prompt="p", seed=5))
    hot = ExploreSettings(prompt="p", temperature=1.0)
    assert completion_key("m", Target((1,)), hot) != completion_key("m", Target((1,)), ExploreSettings(prompt="p", temperature=1.0, seed=5))


def test_keymap_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    assert load_keymap(path) == ({}, [])
    path.write_text('[keys]\nquit = "ctrl+q, q"\nfly = "f"\nhelp = 3\n')
    keymap, warnings = load_keymap(path)
    assert keymap == {"quit": "ctrl+q,q"}
    assert any("unknown key id 'fly'" in w for w in warnings) and any("'help' needs a string" in w for w in warnings)
    path.write_text("[keys\n")
    assert load_keymap(path)[0] == {} and "not read" in load_keymap(path)[1][0]


def test_target_labels() -> None:
    assert Target(()).label == "unsteered"
    assert Target((5,)).label == "vector 5"
    assert Target((1, 2, 3, 7), "sum", 2.0).label == "sum[1-3,7] (k=4) x2"
