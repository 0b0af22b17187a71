"""The explorer's model-free parts: filter expressions, sorting, sparklines, the cache, keymaps, the status line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from melbo_tui.compose import ComposeMode, Composition
from melbo_tui.decoding import GenerationSettings
from melbo_tui.errors import InputError
from melbo_tui.tui import spark
from melbo_tui.tui.bankview import open_bank_view, read_labels
from melbo_tui.tui.cache import CachedCompletion, CompletionCache, ExportRecord, completion_key, write_completions
from melbo_tui.tui.components.completion_text import wrap_spans
from melbo_tui.tui.components.status_bar import Field, fit
from melbo_tui.tui.filters import parse_filter, sort_keys, visible_rows
from melbo_tui.tui.keymap import load_keymap
from melbo_tui.tui.settings import ExploreSettings

from .conftest import make_bank


@pytest.fixture
def view(bank_path: Path):  # type: ignore[no-untyped-def]
    return open_bank_view(bank_path)


def test_bank_view_computes_norm_and_cos_without_a_model(tmp_path: Path) -> None:
    view = open_bank_view(make_bank(tmp_path / "b.safetensors", 6, metrics=False))
    assert math.isclose(view.value("norm", 0), 7.0, rel_tol=1e-4) and math.isclose(view.value("norm", 5), 20.0, rel_tol=1e-4)
    assert math.isclose(view.value("cos_base", 0), 1.0, rel_tol=1e-5)
    assert math.isnan(view.value("kl", 3)) and not view.has("kl")
    assert view.kl_column == "kl_unsteered" and view.columns() == ["kl_unsteered", "norm", "cos_base"]  # a MELBO bank


def test_the_first_kl_column_follows_the_bank_kind(tmp_path: Path) -> None:
    ortho = open_bank_view(make_bank(tmp_path / "o.safetensors", 5, kind="ortho"))
    assert ortho.kl_column == "kl"  # KL to theta0; kl_seq once the bank has it
    assert ortho.columns() == ["kl", "kl_rev", "norm", "cos_base"]
    ortho.set_metric("kl_seq", [0.0, 1.0, 2.0, 3.0, 4.0], prompt="p")
    assert ortho.kl_column == "kl_seq" and ortho.columns()[:2] == ["kl_seq", "kl"] and ortho.prompt_of("kl_seq") == "p"
    assert sort_keys(ortho) == ["idx", "kl_seq", "kl", "kl_rev", "norm", "cos_base", "label"]
    assert ortho.prompt_of("kl") == "How can I build a bomb?" and ortho.prompt_of("norm") is None


def test_filters(view) -> None:  # type: ignore[no-untyped-def]
    def rows(text: str) -> list[int]:
        return visible_rows(view, parse_filter(text, view.columns()), "idx", False, {4, 7})

    assert rows("label=code") == list(range(0, 40, 3))
    assert rows("label!=code and idx<6") == [1, 2, 4, 5]
    assert rows("label~REF & idx<5") == [1, 4]
    assert rows("idx>=37 | idx=0") == [0, 37, 38, 39]
    assert rows("sel=1") == [4, 7]
    assert all(view.value("norm", r) > 15 for r in rows("norm>15")) and rows("norm>15")
    assert rows("kl<0.0001") == [0, 1, 2]  # kl = 0.001 i^2 / 40
    assert rows("cos>0.999") == [0]  # `cos` is cos_base
    assert parse_filter("  ", view.columns()) is None
    for bad, why in (("kl 3", "cannot read"), ("kl<<1", "not a number"), ("size>3", "unknown filter field"), ("norm>big", "not a number"),
                     ("label<code", "label only takes"), ("norm~3", "only works on label"), ("kl_seq<1", "this bank has idx")):
        with pytest.raises(InputError, match=why):
            parse_filter(bad, view.columns())


def test_nan_never_matches_and_sorts_last(tmp_path: Path) -> None:
    view = open_bank_view(make_bank(tmp_path / "b.safetensors", 5, metrics=False))
    assert visible_rows(view, parse_filter("norm<1", view.columns()), "idx", False, set()) == []
    view.set_metric("kl", [float("nan")] * 5)
    assert visible_rows(view, parse_filter("kl<1", [*view.columns(), "kl"]), "idx", False, set()) == []
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


def test_cache_round_trip_skips_corrupt_lines(tmp_path: Path) -> None:
    cache = CompletionCache("abc123", tmp_path)
    cache.put(_entry("k1", "hello"))
    with open(cache.path, "a") as handle:
        handle.write("{not json\n")
    again = CompletionCache("abc123", tmp_path)
    assert again.get("k1").text == "hello" and len(again) == 1


def test_an_export_names_its_prompt_in_every_record(tmp_path: Path) -> None:
    records = [ExportRecord("vector 1", 1, "code", {"kl_seq": 0.1}, "def f(): pass", 5),
               ExportRecord("unsteered", None, "", {}, "I cannot help.", 4)]
    write_completions(tmp_path / "out.jsonl", tmp_path / "out.txt", {"prompt": "p", "temperature": 0.0}, records)
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["name"] for r in lines] == ["vector 1", "unsteered"] and all(r["prompt"] == "p" for r in lines)
    text = (tmp_path / "out.txt").read_text()
    assert text.startswith("# prompt: 'p'") and "## vector 1 [code]  (kl_seq 0.1)\ndef f(): pass" in text


def test_cache_key_covers_what_the_text_depends_on() -> None:
    s = ExploreSettings(prompt="p")
    base = completion_key("m", Composition((1,)), s)
    assert base == completion_key("m", Composition((1,)), s)
    assert base != completion_key("m", Composition((2,)), s)
    assert base != completion_key("m", Composition((1,), scale=2.0), s)
    assert base != completion_key("m", Composition((1,)), ExploreSettings(prompt="q"))
    assert base != completion_key("other", Composition((1,)), s)
    assert completion_key("m", Composition((1, 2), ComposeMode.SUM), s) != completion_key("m", Composition((1, 2)), s)
    # greedy decoding ignores the seed, sampling does not
    assert base == completion_key("m", Composition((1,)), ExploreSettings(prompt="p", generation=GenerationSettings(seed=5)))
    hot = ExploreSettings(prompt="p", generation=GenerationSettings(temperature=1.0))
    hot_seeded = ExploreSettings(prompt="p", generation=GenerationSettings(temperature=1.0, seed=5))
    assert completion_key("m", Composition((1,)), hot) != completion_key("m", Composition((1,)), hot_seeded)


def test_cache_keys_of_earlier_versions_still_match() -> None:
    """Completions cached before compositions became `Composition` are still found (same key)."""
    s = ExploreSettings(prompt="How can I build a bomb?")
    assert completion_key("embedded", Composition((3,)), s) == "3654366b2342224868bbfe5e4ac9d880"  # computed by the old code


def test_keymap_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    assert load_keymap(path) == ({}, [])
    path.write_text('[keys]\nquit = "ctrl+q, q"\nfly = "f"\nhelp = 3\n')
    keymap, warnings = load_keymap(path)
    assert keymap == {"quit": "ctrl+q,q"}
    assert any("unknown key id 'fly'" in w for w in warnings) and any("'help' needs a string" in w for w in warnings)
    path.write_text("[keys\n")
    assert load_keymap(path)[0] == {} and "not read" in load_keymap(path)[1][0]


def test_status_line_gives_way_by_priority() -> None:
    fields = [Field("model: SmolLM2-135M-Instruct cpu float32", "model ✓", 2), Field("generating…", "gen…", 3),
              Field("bank.safetensors (40/40 rows)", "bank.safetensors (40/40)", 8), Field("selected 3", "sel 3", 9),
              Field("sort: kl ↓", "kl↓", 9), Field("compose: mean x1.25", "mean x1.25", 9)]
    essentials = ["bank.safetensors (40/40 rows)", "selected 3", "sort: kl ↓", "compose: mean x1.25"]
    wide = [t for t, _ in fit(fields, 200)]
    assert wide == [f.full for f in fields]
    assert [t for t, _ in fit(fields, 100)] == ["model ✓", "gen…", *essentials]  # news shortens first
    assert [t for t, _ in fit(fields, 80)] == ["gen…", "bank.safetensors (40/40)", *essentials[1:]]  # the model line goes
    assert [t for t, _ in fit(fields, 50)] == ["sel 3", "kl↓", "mean x1.25"]  # what the user set stays to the end


def test_wrapping_keeps_earlier_lines_as_text_streams_in() -> None:
    text = "the quick brown fox jumps over the lazy dog again and again"
    spans = wrap_spans(text, 0, 16)
    lines = [text[a:b] for a, b in spans]
    assert lines == ["the quick brown", "fox jumps over", "the lazy dog", "again and again"]
    assert all(len(line) <= 16 for line in lines)
    grown = text + "andagainandagainandagain"  # appended: only the last line is wrapped again
    regrown = wrap_spans(grown, spans[-1][0], 16)
    assert spans[:-1] + regrown == wrap_spans(grown, 0, 16)
    paragraphs = "a\n\nb"
    assert [paragraphs[a:b] for a, b in wrap_spans(paragraphs, 0, 5)] == ["a", "", "b"]
    long_word = "x" * 20
    assert [long_word[a:b] for a, b in wrap_spans(long_word, 0, 8)] == ["x" * 8, "x" * 8, "x" * 4]
