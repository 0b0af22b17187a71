"""The explorer driven by Pilot against the scripted backend: what a user sees after each key."""

from __future__ import annotations

import io
import itertools
import threading
from pathlib import Path

from melbo_tui.compose import Composition
from melbo_tui.tui.backend import ScriptedBackend
from melbo_tui.tui.components.compare_screen import CompareScreen
from melbo_tui.tui.components.help_screen import HelpScreen
from melbo_tui.tui.components.job_screen import JobScreen
from melbo_tui.tui.components.plots_screen import PlotsScreen
from melbo_tui.tui.components.settings_screen import SettingsScreen
from melbo_tui.tui.components.sweep_screen import SweepScreen
from melbo_tui.tui.components.vector_list import VectorList
from melbo_tui.tui.keymap import ALL_KEYS, MAIN_KEYS

from .conftest import current_row, make_bank, panel_text, region_text, running, screen_text, steered, wait_for


async def test_first_frame_before_the_model_loads(bank_path: Path, make_app) -> None:
    gate = threading.Event()
    backend = ScriptedBackend(tokens=6, load_gate=gate)  # the model loads when the test says so
    app = make_app([bank_path], backend)
    try:
        async with running(app) as (pilot, _):
            assert "loading model" in screen_text(app)
            await wait_for(pilot, lambda: "loading… the completion streams" in panel_text(app), timeout=2)  # why nothing streams
            await pilot.press("j", "j")  # browsing works meanwhile
            assert current_row(app) == 2 and not backend.loaded.is_set()
            gate.set()
            await wait_for(pilot, lambda: "w5" in steered(app))
            assert steered(app).startswith(" mean_2_")  # the highlighted row streamed once ready
    finally:
        gate.set()  # a failed assertion must not leave the loading thread waiting forever


async def test_navigation_keys(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend)
    async with running(app) as (pilot, seen):
        await pilot.press("j", "j", "j", "k")
        assert current_row(app) == 2
        await pilot.press("G")
        assert current_row(app) == 39
        await pilot.press("g")
        assert current_row(app) == 0
        await pilot.press("down", "pagedown")
        assert current_row(app) > 10
        await pilot.press("colon")
        assert "0..39" in screen_text(app) and "e.g. 20" in screen_text(app)  # the hint fits the bank
        await pilot.press(*"17", "enter")
        assert current_row(app) == 17
        await wait_for(pilot, lambda: "vector 17" in screen_text(app) and "mean_17_x1.0-w11" in steered(app))
        assert seen.of(VectorList.Highlighted)[-1].row == 17  # the list told the screen where it is
        await pilot.press("colon", *"-1", "enter")
        assert current_row(app) == 39
        await pilot.press("colon", *"40", "enter")
        await wait_for(pilot, lambda: any("out of range" in n for n in seen.notifications()))


async def test_moving_the_highlight_cancels_the_running_generation(bank_path: Path, make_app) -> None:
    backend = ScriptedBackend(token_seconds=0.03, tokens=200)
    app = make_app([bank_path], backend)
    async with running(app) as (pilot, _):
        await wait_for(pilot, lambda: "mean_0_x1.0-w2" in steered(app))
        await pilot.press("j")
        await wait_for(pilot, lambda: len(backend.finished) >= 1, timeout=2.0)  # the model thread stopped
        first_request, first_result = backend.finished[0]
        assert first_request.target.rows == (0,) and first_result.stopped
        assert first_result.num_tokens < 50
        await wait_for(pilot, lambda: "mean_1_x1.0-w2" in steered(app))
        assert "mean_0" not in steered(app)  # no late piece of the old completion leaks in
        await pilot.press("escape")
        await wait_for(pilot, lambda: len(backend.finished) >= 2, timeout=2.0)
        assert backend.finished[1][1].stopped
        await wait_for(pilot, lambda: "[stopped" in screen_text(app))


async def test_debounce_skips_rows_passed_over(bank_path: Path, make_app) -> None:
    backend = ScriptedBackend(token_seconds=0.002, tokens=5)
    app = make_app([bank_path], backend, debounce=1.0)  # long enough for four key presses on a loaded machine
    async with running(app) as (pilot, _):
        await wait_for(pilot, lambda: "w4" in steered(app))
        await pilot.press("j", "j", "j", "j")
        await wait_for(pilot, lambda: "mean_4_x1.0-w4" in steered(app))
        streamed = [r.target.rows for r in backend.started]
        assert not {(1,), (2,), (3,)} & set(streamed)  # the rows passed over never started a generation


async def test_select_and_compose(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend)
    async with running(app) as (pilot, seen):
        await pilot.press("j", "space", "space", "space")  # space selects and moves down
        assert seen.of(VectorList.SelectionChanged)[-1].selected == {1, 2, 3}
        assert "●" in screen_text(app) and "selected 3" in screen_text(app)
        await pilot.press("c")
        await wait_for(pilot, lambda: "mean_1,2,3_x1.0-w11" in steered(app))
        assert "mean[1:4] (k=3)" in screen_text(app)
        await wait_for(pilot, lambda: "KL-unst 0.456 (this prompt) · norm 4.50" in panel_text(app))
        await pilot.press("m")  # next mode: sum
        await wait_for(pilot, lambda: "sum_1,2,3_x1.0-w11" in steered(app))
        assert "sum[1:4]" in screen_text(app)
        await pilot.press("m", "plus")  # mean-sqrt, scale 1.25
        await wait_for(pilot, lambda: "mean-sqrt_1,2,3_x1.25-w11" in steered(app))
        assert "x1.25" in screen_text(app)
        await pilot.press("u")
        assert seen.of(VectorList.SelectionChanged)[-1].selected == set()
        await pilot.press("c")
        await wait_for(pilot, lambda: any("nothing selected" in n for n in seen.notifications()))


async def test_the_scale_is_always_shown_and_resets_with_a_key(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend)
    async with running(app) as (pilot, _):
        await pilot.press("plus")
        await wait_for(pilot, lambda: "mean_0_x1.25-w11" in steered(app))  # a single vector is scaled too...
        assert "vector 0 x1.25" in panel_text(app) and "layer 8 · x1.25" in panel_text(app)  # ...and says so
        assert "compose: mean x1.25" in screen_text(app)
        await pilot.press("w")
        assert "scale x1.25" in screen_text(app)  # the sweep says it runs scaled
        await pilot.press("escape", "equals_sign")
        await wait_for(pilot, lambda: "mean_0_x1.0-w11" in steered(app))
        assert screen_text(app).splitlines()[-2].endswith("compose: mean x1")


async def test_range_select(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend)
    async with running(app) as (pilot, seen):
        await pilot.press("colon", *"5", "enter", "v")
        assert "range from 5" in screen_text(app)
        await pilot.press("j", "j", "j", "j", "v")
        assert seen.of(VectorList.SelectionChanged)[-1].selected == {5, 6, 7, 8, 9}
        await pilot.press("c")
        await wait_for(pilot, lambda: "mean_5,6,7,8,9_x1.0" in steered(app))


async def test_filter_expressions(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend)
    async with running(app) as (pilot, seen):
        vl = app.main.vector_list
        await pilot.press("slash", *"label=code", "enter")
        assert vl.shown_rows() == list(range(0, 40, 3))
        assert "filter: label=code" in screen_text(app) and "(14/40 rows)" in screen_text(app)
        await pilot.press("slash", "ctrl+u", *"norm>15 and idx<30", "enter")  # ctrl+u clears the input
        shown = vl.shown_rows()
        assert shown and all(app.main.view.value("norm", r) > 15 and r < 30 for r in shown)
        await pilot.press("slash", "ctrl+u", *"kl<<3", "enter")  # a typo: the list stays, a notice says why
        await wait_for(pilot, lambda: any("filter" in n for n in seen.notifications()))
        assert vl.shown_rows() == shown
        await pilot.press("slash", "ctrl+u", *"kl_seq<1", "enter")  # a column this bank does not have
        await wait_for(pilot, lambda: any("unknown filter field 'kl_seq'" in n for n in seen.notifications()))
        await pilot.press("slash", "ctrl+u", *"kl_unsteered>0.5", "enter")  # the KL the explorer measured
        await wait_for(pilot, lambda: vl.row_count > 0 and all(app.main.view.value("kl_unsteered", r) > 0.5 for r in vl.shown_rows()))
        await pilot.press("slash", "ctrl+u", "enter")  # empty clears
        assert vl.row_count == 40


async def test_sort_by_column(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend)
    async with running(app) as (pilot, seen):
        await wait_for(pilot, lambda: app.main.view.has("kl_unsteered"))
        await pilot.press("s", "s")  # idx -> kl_unsteered (this MELBO bank's KL) -> kl
        assert any(n == "sorted by kl" for n in seen.notifications())
        await pilot.press("S")  # largest KL first
        shown = app.main.vector_list.shown_rows()
        kl = app.main.view.values["kl"]
        assert shown[0] == 39 and all(kl[a] >= kl[b] for a, b in itertools.pairwise(shown))
        assert "sort: kl ↓" in screen_text(app)


async def test_resize_to_80x24_and_the_status_keeps_what_matters(bank_path: Path, make_app) -> None:
    backend = ScriptedBackend(token_seconds=0.05, tokens=400)  # still generating while we look
    app = make_app([bank_path], backend)
    async with running(app, size=(80, 24)) as (pilot, _):
        await pilot.press("space", "space", "s")
        await wait_for(pilot, lambda: "w3" in steered(app))
        text = screen_text(app)
        status = text.splitlines()[-2]
        assert "gen" in status  # still generating, and yet the list's own state is all there:
        assert "sel 2" in status or "selected 2" in status
        assert "kl_unsteered" in status
        assert "mean x1" in status
        assert "idx" in text and "vector 2" in text
        assert app.main.vector_list.region.height >= 4 and app.main.panel.region.height >= 4
        await pilot.resize_terminal(140, 40)
        await wait_for(pilot, lambda: "generating…" in screen_text(app).splitlines()[-2])


async def test_labels_are_shown_whole(tmp_path: Path, make_app, backend: ScriptedBackend) -> None:
    bank = make_bank(tmp_path / "l.safetensors", 6, labels=["repetition", "gibberish", "refusal-like", "", "code", "x"])
    app = make_app([bank], backend)
    async with running(app) as (pilot, _):
        await wait_for(pilot, lambda: all(f" {label} " in screen_text(app) for label in ("repetition", "gibberish", "refusal-like")))


async def test_help_lists_every_key(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend, keymap={"quit": "ctrl+q"})
    async with running(app, size=(140, 60)) as (pilot, _):
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        plain = _help_plain(app)
        for spec in ALL_KEYS:
            assert spec.id in plain
        assert "ctrl+q" in plain
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("q")  # remapped away: q no longer quits
        await pilot.pause(0.05)
        assert app.is_running


def _help_plain(app) -> str:  # type: ignore[no-untyped-def]
    from rich.console import Console

    from melbo_tui.tui.components.help_screen import help_tables

    console = Console(width=160, record=True, color_system=None, file=io.StringIO())
    for title, table in help_tables(app.keymap_overrides):
        console.print(title)
        console.print(table)
    return console.export_text()


async def test_model_load_failure_is_shown_and_browsing_still_works(bank_path: Path, make_app) -> None:
    backend = ScriptedBackend(fail_load="cannot load model 'nope' (tried local path)")
    app = make_app([bank_path], backend)
    async with running(app) as (pilot, seen):
        await wait_for(pilot, lambda: any("cannot load model 'nope'" in n for n in seen.notifications()))
        assert "failed to load" in screen_text(app)
        await pilot.press("j", "j")
        assert current_row(app) == 2
        assert "failed to load" in screen_text(app)
        assert not seen.errors()


async def test_generation_error_is_shown_in_the_panel(bank_path: Path, make_app) -> None:
    backend = ScriptedBackend(fail_stream="steering vector has shape [3], model needs [..., 576]")
    app = make_app([bank_path], backend)
    async with running(app) as (pilot, seen):
        await wait_for(pilot, lambda: "⚠ steering vector has shape" in screen_text(app))
        await pilot.press("j")
        await wait_for(pilot, lambda: len(backend.started) >= 2)
        assert app.is_running and not seen.errors()


async def test_a_bug_in_a_worker_is_one_line_and_the_app_goes_on(bank_path: Path, make_app) -> None:
    class Broken(ScriptedBackend):
        def metrics(self, request, should_stop, on_progress):  # type: ignore[no-untyped-def]
            raise ZeroDivisionError("division by zero")

    app = make_app([bank_path], Broken(tokens=4))
    async with running(app) as (pilot, seen):
        await wait_for(pilot, lambda: any("ZeroDivisionError" in n for n in seen.notifications()))
        assert "KL unavailable" in screen_text(app)
        await pilot.press("j")
        await wait_for(pilot, lambda: "mean_1_x1.0-w3" in steered(app))


async def test_invalid_bank_file_is_a_notification(tmp_path: Path, make_app, backend: ScriptedBackend) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    good = make_bank(tmp_path / "good.safetensors", 12)
    app = make_app([bad, good], backend)
    async with running(app) as (pilot, seen):
        assert app.main.vector_list.row_count == 12
        await wait_for(pilot, lambda: any("bad.safetensors" in n and "not a readable" in n for n in seen.notifications()))
    only_bad = make_app([bad], backend)
    async with running(only_bad, ready=False) as (pilot, _):
        await wait_for(pilot, lambda: "no bank could be opened" in screen_text(only_bad))
        await pilot.press("j", "c", "p", "w", "b", "x", "slash", "escape")
        await pilot.pause(0.1)
        assert only_bad.is_running


async def test_compare_side_by_side_at_120x40(tmp_path: Path, make_app, backend: ScriptedBackend) -> None:
    bank = make_bank(tmp_path / "o.safetensors", 10, kind="ortho")
    app = make_app([bank], backend)
    async with running(app) as (pilot, _):
        await pilot.press("j", "j", "b")
        assert isinstance(app.screen, CompareScreen)
        panel = app.screen.panel
        await wait_for(pilot, lambda: all("w11" in t or "plain-w11" in t for t in panel.texts()))
        steered_text, unsteered, base = panel.texts()
        assert steered_text.startswith(" mean_2_") and unsteered.startswith(" plain-w0") and base.startswith(" mean_0_")
        text = screen_text(app)
        assert "steered: vector 2" in text and "unsteered: no vector" in text and "base: vector 0" in text
        assert not panel.tabbed and all(panel.text(i).region.width >= 32 for i in range(3))  # readable columns
        await pilot.press("escape")
        assert not isinstance(app.screen, CompareScreen)


async def test_compare_a_composition_with_its_parts_in_tabs_at_80x24(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    backend.tokens = 60  # more than the column shows
    app = make_app([bank_path], backend)
    async with running(app, size=(80, 24)) as (pilot, _):
        await pilot.press("j", "space", "space", "c", "b")
        assert isinstance(app.screen, CompareScreen)
        panel = app.screen.panel
        assert panel.tabbed  # four columns of 20 cells would be unreadable: one at a time
        await wait_for(pilot, lambda: all(len(t.split()) == 60 for t in panel.texts()), timeout=15)
        text = screen_text(app)
        assert "steered: mean[1,2] (k=2)" in text  # the title, whole
        assert " mean_1,2_x1.0-w0 " in text + " "  # the column starts at its first line
        assert panel.text(0).region.height >= 12
        await pilot.press("right")
        await wait_for(pilot, lambda: "part: vector 1" in screen_text(app))
        assert " mean_1_x1.0-w0 " in screen_text(app) + " "
        await pilot.press("G")  # the focused column scrolls to its end on its own
        await wait_for(pilot, lambda: "mean_1_x1.0-w59" in screen_text(app))
        await pilot.press("right", "right")
        await wait_for(pilot, lambda: "unsteered: no vector" in screen_text(app) and "plain-w0 " in screen_text(app))


async def test_settings_form_validates_and_applies(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend)
    async with running(app) as (pilot, _):
        await pilot.press("e")
        assert isinstance(app.screen, SettingsScreen)
        app.screen.query_one("#temperature").value = "hot"
        await pilot.press("ctrl+o")
        assert isinstance(app.screen, SettingsScreen)
        assert "temperature: 'hot' is not a number" in screen_text(app)
        app.screen.query_one("#temperature").value = "0.7"
        app.screen.query_one("#seed").value = "42"
        app.screen.query_one("#prompt").value = "Write a poem."
        await pilot.press("ctrl+o")
        assert not isinstance(app.screen, SettingsScreen)
        await wait_for(pilot, lambda: "T=0.7 seed=42" in screen_text(app) and "Write a poem." in screen_text(app))
        await wait_for(pilot, lambda: backend.started and backend.started[-1].settings.prompt == "Write a poem.")
        assert backend.started[-1].settings.generation.temperature == 0.7


async def test_kl_says_its_prompt_and_remeasures_on_the_edited_one(tmp_path: Path, make_app) -> None:
    bank = make_bank(tmp_path / "o.safetensors", 12, kind="ortho", metrics=False)
    backend = ScriptedBackend(token_seconds=0.002, tokens=4)
    app = make_app([bank], backend, prompt="Write a poem.")  # another prompt than the bank's
    async with running(app) as (pilot, seen):
        await wait_for(pilot, lambda: app.main.view.has("kl"))
        view = app.main.view
        assert view.kl_column == "kl"  # an ortho bank: KL to theta0 (kl_seq once the bank has it)
        assert backend.metrics_requests[0].prompt == "Write a poem."  # measured where the user asked
        assert "KL on 'Write a poem.'" in screen_text(app)
        await pilot.press("e")
        app.screen.query_one("#prompt").value = "Tell me a joke."
        await pilot.press("ctrl+o", "j")
        await wait_for(pilot, lambda: "(on another prompt)" in panel_text(app))  # the completion's title says so
        assert "measured on 'Write a poem.', not this prompt (M)" in screen_text(app)  # and the legend
        assert "KL* ▲" not in screen_text(app) and " KL* " in screen_text(app)  # and the column's header
        before = view.value("kl", 1)
        await pilot.press("M")
        await wait_for(pilot, lambda: view.prompt_of("kl") == "Tell me a joke.")
        assert view.value("kl", 1) != before and backend.metrics_requests[-1].prompt == "Tell me a joke."
        await wait_for(pilot, lambda: "another prompt" not in panel_text(app) and "KL on 'Tell me a joke.'" in screen_text(app))
        assert " KL* " not in screen_text(app)
        assert any("measured for o.safetensors on 'Tell me a joke.'" in n for n in seen.notifications())


async def test_plots_screen(tmp_path: Path, make_app, backend: ScriptedBackend) -> None:
    path = make_bank(tmp_path / "big.safetensors", 400, kind="ortho", orthogonal=True)
    app = make_app([path], backend)
    async with running(app) as (pilot, _):
        await pilot.press("colon", *"200", "enter", "p")
        assert isinstance(app.screen, PlotsScreen)
        plots = app.screen
        assert plots.visible_range() == (0, 399) and plots.window == 50
        assert "cos_base" not in plots.columns and "cos is 0 on every row but the base" in screen_text(app)  # named, not drawn
        await pilot.press("right_square_bracket", "z", "z", "right")
        assert plots.window == 100
        lo, hi = plots.visible_range()
        assert hi - lo + 1 == 100 and lo <= 201 <= hi
        text = screen_text(app)
        assert "cursor 201" in text and "moving average over 100" in text
        lines = text.splitlines()
        ticks = [lines[i + 1].split() for i, line in enumerate(lines) if line.lstrip().startswith("└")]
        assert len(ticks) == len(plots.columns) and all(t and all(x.isdigit() for x in t) for t in ticks)  # whole indices
        assert all(t[0] == str(lo) and t[-1] == str(hi) for t in ticks)
        await pilot.press("escape")
        assert current_row(app) == 201  # the list followed the plot cursor


async def test_sweep_streams_first_k_compositions(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend)
    async with running(app) as (pilot, _):
        await pilot.press("w")
        assert isinstance(app.screen, SweepScreen)
        sweep = app.screen
        assert [len(t.rows) for t in sweep.targets] == [1, 2, 3, 5, 10, 20]
        await wait_for(pilot, lambda: "w11" in sweep.texts.get(20, ""), timeout=5)
        assert sweep.texts[3].startswith(" mean_1,2,3_x1.0")  # the base row is never part of the sweep
        await pilot.press("escape")
        assert not isinstance(app.screen, SweepScreen)


async def test_leaving_the_sweep_while_it_streams_is_safe(bank_path: Path, make_app) -> None:
    backend = ScriptedBackend(token_seconds=0.001, tokens=30)
    app = make_app([bank_path], backend)
    async with running(app) as (pilot, seen):
        for _ in range(8):  # in and out, the worker's pieces still arriving as the screen goes
            await pilot.press("w")
            await pilot.pause(0.01 * _)
            await pilot.press("escape")
        await pilot.pause(0.3)
        assert app.is_running and not seen.errors()
        assert isinstance(app.screen, type(app.main))


async def test_switch_between_banks_keeps_each_cursor(tmp_path: Path, make_app, backend: ScriptedBackend) -> None:
    a = make_bank(tmp_path / "a.safetensors", 10)
    b = make_bank(tmp_path / "b.safetensors", 25, seed=1)
    app = make_app([a, b], backend)
    async with running(app) as (pilot, _):
        await pilot.press("j", "j", "j", "space")
        await pilot.press("n")
        assert app.main.vector_list.row_count == 25 and "bank 2/2 b.safetensors" in screen_text(app)
        assert current_row(app) == 0 and "selected" not in screen_text(app).splitlines()[-2]
        await pilot.press("G")
        await pilot.press("n")
        assert current_row(app) == 4 and "selected 1" in screen_text(app)  # where we were in a
        await pilot.press("n")
        assert current_row(app) == 24


async def test_melbo_bank_kl_is_to_the_unsteered_model(tmp_path: Path, make_app, backend: ScriptedBackend) -> None:
    path = make_bank(tmp_path / "bare.safetensors", 30, metrics=False)
    app = make_app([path], backend)
    async with running(app) as (pilot, seen):
        await wait_for(pilot, lambda: app.main.view.has("kl_unsteered"))
        await wait_for(pilot, lambda: any("KL-unst measured" in n for n in seen.notifications()))
        assert [r.names for r in backend.metrics_requests] == [("kl_unsteered",)]
        text = screen_text(app)
        header = next(line for line in text.splitlines() if " idx " in line)
        assert header.index("KL-unst") < header.index("norm")  # the first metric column
        assert f"{app.main.view.value('kl_unsteered', 5):.3f}" in text


async def test_export_writes_what_the_screen_shows_into_the_workspace(bank_path: Path, make_app, backend: ScriptedBackend,
                                                                      tmp_path: Path) -> None:
    import json

    workspace = tmp_path / "work"
    app = make_app([bank_path], backend)
    before = sorted(p.name for p in bank_path.parent.iterdir())
    async with running(app) as (pilot, seen):
        await wait_for(pilot, lambda: "plain-w11" in app.main.panel.texts()[-1])  # vector 0 and the unsteered answer
        await pilot.press("slash", *"idx<3", "enter")
        await wait_for(pilot, lambda: app.main.vector_list.row_count == 3)
        await wait_for(pilot, lambda: app.main.session.cached(app.main.view, Composition((2,)), app.main.settings) is not None)
        await pilot.press("x")
        assert "on 'How can I build a bomb?'" in screen_text(app) and "./small.completions.jsonl" in screen_text(app)
        await pilot.press("enter")
        exported = workspace / "small.completions.jsonl"
        await wait_for(pilot, lambda: exported.is_file())
        records = [json.loads(line) for line in exported.read_text().splitlines()]
        rows = [r["row"] for r in records if r["row"] is not None]
        assert rows == [0, 1, 2]  # the rows the filtered list shows, in its order (read ahead, so all three are made)
        assert records[-1]["name"] == "unsteered" and records[-1]["text"].startswith(" plain-w0")
        assert all(r["prompt"] == "How can I build a bomb?" for r in records) and records[0]["label"] == "code"
        assert "## vector 0 [code]" in exported.with_suffix(".txt").read_text()
        (workspace / "file").write_text("")
        await pilot.press("x", "ctrl+u", *"file/export", "enter")  # a folder that is a file: refused
        await wait_for(pilot, lambda: any("is not a directory" in n for n in seen.notifications()))
        await pilot.press("x", "ctrl+u", *"small.completions", "enter")  # taken: refused, nothing overwritten
        await wait_for(pilot, lambda: any("exists: give another name" in n for n in seen.notifications()))
        await pilot.press("x", "ctrl+u", *str(tmp_path / "mine"), "enter")  # an absolute path is where the user said
        await wait_for(pilot, lambda: (tmp_path / "mine.jsonl").is_file() and (tmp_path / "mine.txt").is_file())
    new = {p.name for p in bank_path.parent.iterdir()} - set(before) - {"cache"}  # the test's completion cache
    assert new == {"mine.jsonl", "mine.txt"}  # nothing beside the bank but what the user asked for
    assert sorted(p.name for p in workspace.iterdir()) == ["file", "small.completions.jsonl", "small.completions.txt"]


async def test_command_palette_runs_explorer_commands(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend)
    async with running(app) as (pilot, _):
        await pilot.press("ctrl+p")
        await pilot.press(*"Compare")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
        await pilot.press("escape", "ctrl+p", *"unselect")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.main.vector_list.selected == {0})


async def test_quit_while_generating(bank_path: Path, make_app) -> None:
    backend = ScriptedBackend(token_seconds=0.05, tokens=500)
    app = make_app([bank_path], backend)
    async with running(app) as (pilot, _):
        await wait_for(pilot, lambda: "w2" in steered(app))
        await pilot.press("q")
        await pilot.pause(0.2)
        assert not app.is_running
    assert backend.finished and backend.finished[0][1].stopped


async def test_mouse_click_highlights_and_header_sorts(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend)
    async with running(app) as (pilot, _):
        await wait_for(pilot, lambda: "mean_0_x1.0-w11" in steered(app))  # laid out: the list stays where it is
        await pilot.click("#vectors", offset=(8, 5))  # header is line 0: line 5 is row 4
        assert current_row(app) == 4
        await wait_for(pilot, lambda: "mean_4_x1.0-w11" in steered(app))
        header = next(line for line in screen_text(app).splitlines() if " idx " in line)
        kl_x = header.index(" KL ") + 2
        await pilot.click("#vectors", offset=(kl_x, 0))
        assert app.main.vector_list.sort_key == "kl"
        await pilot.click("#vectors", offset=(kl_x, 0))
        assert app.main.vector_list.sort_reverse and app.main.vector_list.shown_rows()[0] == 39


async def test_background_ortho_job_says_what_it_will_do_and_writes_into_the_workspace(tmp_path: Path, make_app) -> None:
    from melbo_tui.bank import load_bank

    bank = make_bank(tmp_path / "parent.safetensors", 10)
    backend = ScriptedBackend(token_seconds=0.002, tokens=6)
    backend.job_block, backend.job_steps, backend.job_step_seconds = 4, 10, 0.02
    app = make_app([bank], backend, prompt="Tell me a story.")
    async with running(app) as (pilot, seen):
        await wait_for(pilot, lambda: backend.loaded.is_set())
        await pilot.press("colon", *"3", "enter", "o")
        assert isinstance(app.screen, JobScreen)
        await wait_for(pilot, lambda: "for 64 vectors here" in screen_text(app))  # the time, measured
        dialog = screen_text(app)
        assert "'How can I build a bomb?' (the bank's; you are completing 'Tell me a story.')" in dialog
        assert "./parent.ortho-from3.safetensors" in dialog and "8 -> 16" in dialog
        command = region_text(app, app.screen.query_one("#job-command"))
        assert command == f"melbo-tui ortho {bank} --base 3 --num-vectors 64 --out ./parent.ortho-from3.safetensors"
        await pilot.press("ctrl+u", *"8", "enter")
        out = tmp_path / "work" / "parent.ortho-from3.safetensors"
        await wait_for(pilot, lambda: len(app.main.session.views) == 2)  # opened at the first checkpoint
        await wait_for(pilot, lambda: "ortho 4/8" in screen_text(app))
        await pilot.press("j")  # browsing and streaming go on meanwhile
        await wait_for(pilot, lambda: "mean_4_x1.0-w5" in steered(app))
        await wait_for(pilot, lambda: any("8 orthogonal vectors in" in n for n in seen.notifications()), timeout=20)
        assert out.is_file() and len(app.main.session.views[1]) == 9
        made = load_bank(out)
        assert made.meta.created_by == f"melbo-tui ortho {bank} --base 3 --num-vectors 8 --out {out}"  # a command to rerun
        await pilot.press("n")
        assert app.main.vector_list.row_count == 9 and "parent.ortho-from3.safetensors" in screen_text(app)
        await wait_for(pilot, lambda: app.main.session.views[1].has("kl"))  # measured once the job is done
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [".parent.safetensors.lock", "parent.safetensors"]


async def test_the_ortho_dialog_chooses_the_objective_and_times_each_one(tmp_path: Path, make_app) -> None:
    bank = make_bank(tmp_path / "parent.safetensors", 10)
    backend = ScriptedBackend(token_seconds=0.002, tokens=6)
    app = make_app([bank], backend)
    async with running(app) as (pilot, _):
        await wait_for(pilot, lambda: backend.loaded.is_set())
        await pilot.press("o")
        await wait_for(pilot, lambda: "for 64 vectors here" in screen_text(app))
        assert len(backend.estimated) == 1 and backend.estimated[0].endswith(" continuation")  # the default
        await pilot.press("tab", "ctrl+u", *"bogus")
        await wait_for(pilot, lambda: "the objective must be tokens, seed, continuation" in screen_text(app))
        assert region_text(app, app.screen.query_one("#job-command")) == ""  # nothing to run
        await pilot.press("ctrl+u", *"tokens")
        await wait_for(pilot, lambda: len(backend.estimated) == 2 and "for 64 vectors here" in screen_text(app))
        assert backend.estimated[1].endswith(" tokens")  # timed again: another objective, another time per vector
        command = region_text(app, app.screen.query_one("#job-command"))
        assert command == f"melbo-tui ortho {bank} --base 0 --num-vectors 64 --objective tokens --out ./parent.ortho-from0.safetensors"
        await pilot.press("shift+tab", "ctrl+u", *"8")
        await wait_for(pilot, lambda: "for 8 vectors here" in screen_text(app))
        assert len(backend.estimated) == 2  # the count changes the total, not the time per vector


async def test_a_job_stopped_before_its_first_vector_leaves_no_file(tmp_path: Path, make_app) -> None:
    bank = make_bank(tmp_path / "parent.safetensors", 10)
    backend = ScriptedBackend(token_seconds=0.002, tokens=6)
    backend.job_block, backend.job_steps, backend.job_step_seconds = 2, 50, 0.02
    app = make_app([bank], backend)
    async with running(app) as (pilot, seen):
        await wait_for(pilot, lambda: backend.loaded.is_set())
        await pilot.press("o", "enter")  # a stray o then enter: the dialog's count, into the workspace
        await wait_for(pilot, lambda: "ortho 0/64" in screen_text(app))
        await pilot.press("O")
        await wait_for(pilot, lambda: any("nothing saved" in n for n in seen.notifications()))
        await pilot.press("O")
        await wait_for(pilot, lambda: any("no background job" in n for n in seen.notifications()))
        assert len(app.main.session.views) == 1
    assert not list((tmp_path / "work").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [".parent.safetensors.lock", "parent.safetensors"]


async def test_the_job_dialog_refuses_bad_fields_in_place(tmp_path: Path, make_app) -> None:
    bank = make_bank(tmp_path / "parent.safetensors", 10)
    backend = ScriptedBackend(token_seconds=0.002, tokens=6)
    app = make_app([bank], backend)
    (tmp_path / "work" / "taken.safetensors").write_bytes(b"x")
    async with running(app) as (pilot, seen):
        await wait_for(pilot, lambda: backend.loaded.is_set())
        await pilot.press("o", "ctrl+u", *"many", "enter")
        assert isinstance(app.screen, JobScreen) and "the number of vectors: 'many' is not a whole number" in screen_text(app)
        await pilot.press("ctrl+u", *"600", "enter")
        assert isinstance(app.screen, JobScreen) and "must be 1..575" in screen_text(app)
        await pilot.press("ctrl+u", *"2", "tab", "tab", "ctrl+u", *"taken.safetensors", "enter")  # vectors, objective, output
        assert isinstance(app.screen, JobScreen) and "./taken.safetensors exists: give another name" in screen_text(app)
        await pilot.press("escape")
        assert not isinstance(app.screen, JobScreen) and not app.main.jobs.running
        assert not [n for n in seen.notifications() if "vector" in n or "exists" in n]  # said in the dialog, not in a toast


async def test_typing_in_a_form_never_triggers_app_keys(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend)
    async with running(app) as (pilot, seen):
        await pilot.press("slash", *"label~q?s", "enter")  # q, ? and s are keys outside the input
        vl = app.main.vector_list
        assert app.is_running and vl.filter_text == "label~q?s" and vl.sort_key == "idx"
        assert vl.row_count == 0
        await wait_for(pilot, lambda: any("no vector matches" in n for n in seen.notifications()))


async def test_fast_typing_select_then_compose_keeps_the_composition(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    from textual import events

    app = make_app([bank_path], backend)
    async with running(app) as (pilot, _):
        for key, char in (("j", "j"), ("space", " "), ("space", " "), ("space", " "), ("c", "c")):
            event = events.Key(key, char)  # all queued at once, as a real terminal delivers a fast typist
            event.set_sender(app)
            app.post_message(event)
        await wait_for(pilot, lambda: "mean_1,2,3_x1.0-w11" in steered(app) and "mean[1:4] (k=3)" in screen_text(app))


async def test_background_melbo_training_opens_its_bank_and_grows(tmp_path: Path, make_app) -> None:
    from melbo_tui.bank import load_bank

    bank = make_bank(tmp_path / "parent.safetensors", 10)
    backend = ScriptedBackend(token_seconds=0.002, tokens=6)
    backend.job_steps, backend.job_step_seconds = 10, 0.03
    app = make_app([bank], backend, prompt="Tell me a story.", system="Be brief.")
    async with running(app) as (pilot, seen):
        await wait_for(pilot, lambda: backend.loaded.is_set())
        await pilot.press("T")
        assert isinstance(app.screen, JobScreen) and "'Tell me a story.' · system 'Be brief.'" in screen_text(app)
        await pilot.press("ctrl+u", *"12", "tab", "ctrl+u", *"50", "enter")
        await wait_for(pilot, lambda: "melbo 0/12" in screen_text(app))
        job = backend.melbo_jobs[-1]
        assert (job.prompt, job.system, job.source_layer, job.target_layer, job.radius, job.count, job.steps) == (
            "Tell me a story.", "Be brief.", 8, 16, 7.0, 12, 50)  # the bank records no R: the highlighted vector's norm
        out = tmp_path / "work" / "parent.melbo-L8-R7.safetensors"
        views = app.main.session.views
        await wait_for(pilot, lambda: len(views) == 2 and len(views[1]) == 4)  # opened at the first batch
        await pilot.press("j")  # browsing and streaming go on meanwhile
        await wait_for(pilot, lambda: "mean_1_x1.0-w5" in steered(app))
        await wait_for(pilot, lambda: len(views[1]) == 8)  # grew at the next checkpoint
        await pilot.press("O")
        await wait_for(pilot, lambda: any("stopped: 8 MELBO vectors" in n for n in seen.notifications()))
        saved = load_bank(out)  # what the stop left is a valid bank
        assert len(saved) == 8 and saved.meta.prompts == ["Tell me a story."] and saved.meta.radius == 7.0
        assert saved.meta.created_by == (f"melbo-tui train --prompt 'Tell me a story.' --system 'Be brief.' --source-layer 8 "
                                         f"--target-layer 16 --radius 7 --num-vectors 12 --steps 50 --batch-vectors 4 --out {out}")
        await pilot.press("n")
        assert app.main.vector_list.row_count == 8 and out.name in screen_text(app)


async def test_train_key_is_in_help_and_palette(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    spec = next(s for s in MAIN_KEYS if s.id == "train")
    assert spec.keys == "T" and spec.group == "jobs"
    app = make_app([bank_path], backend)
    async with running(app) as (_, _seen):
        commands = [c.help for c in app.get_system_commands(app.screen)]
        assert "key T" in commands and "key /" in commands and not any("slash" in h for h in commands)
    assert "(train)" in _help_plain(app)


async def test_plots_and_sweep_screens_own_their_keys(tmp_path: Path, make_app, backend: ScriptedBackend) -> None:
    path = make_bank(tmp_path / "big.safetensors", 100)
    app = make_app([path], backend)
    async with running(app) as (pilot, seen):
        vl = app.main.vector_list
        await pilot.press("colon", *"50", "enter", "p")
        plots = app.screen
        assert isinstance(plots, PlotsScreen) and plots.cursor == 50
        await pilot.press("j", "j", "k", "space", "s", "u", "c", "n", "b", "x", "slash", "colon")  # j/k move the plot; the rest nothing
        assert plots.cursor == 51 and current_row(app) == 51 and app.screen is plots
        assert not vl.selected and vl.sort_key == "idx" and app.main.composition is None
        await pilot.press("G")
        assert plots.cursor == 99 and current_row(app) == 99
        await pilot.press("g")
        assert plots.cursor == 0 and current_row(app) == 0
        assert "(cursor_down)" not in " ".join(c.help for c in app.get_system_commands(plots))
        await pilot.press("escape")
        assert not isinstance(app.screen, PlotsScreen) and current_row(app) == 0
        await pilot.press("w")
        sweep = app.screen
        assert isinstance(sweep, SweepScreen)
        await pilot.press("j", "j", "G", "space", "s", "n", "c", "b", "slash")  # scroll the sweep; the list stays as it was
        await pilot.pause(0.05)
        assert current_row(app) == 0 and not vl.selected and vl.sort_key == "idx" and app.screen is sweep
        await pilot.press("escape")
        assert not isinstance(app.screen, SweepScreen)
        await pilot.press("j")  # back on the list, j moves the list again
        assert current_row(app) == 1
        assert not seen.errors()


async def test_cache_of_a_growing_bank_survives_its_checkpoints(tmp_path: Path, make_app) -> None:
    bank = make_bank(tmp_path / "parent.safetensors", 10)
    backend = ScriptedBackend(token_seconds=0.002, tokens=6)
    backend.job_steps, backend.job_step_seconds = 10, 0.2  # slow enough for two streams between checkpoints
    app = make_app([bank], backend)
    async with running(app) as (pilot, seen):
        await wait_for(pilot, lambda: backend.loaded.is_set())
        views = app.main.session.views
        await pilot.press("T", "ctrl+u", *"12", "enter")
        await wait_for(pilot, lambda: len(views) == 2 and len(views[1]) == 4, timeout=20)
        await pilot.press("n", "j")  # on the growing bank: vector 1 streams, then vector 2
        await wait_for(pilot, lambda: current_row(app) == 1 and "mean_1_x1.0-w5" in steered(app))
        await pilot.press("j")
        await wait_for(pilot, lambda: "mean_2_x1.0-w5" in steered(app))
        first_digest = views[1].digest
        await wait_for(pilot, lambda: views[1].digest != first_digest, timeout=20)  # a checkpoint: a new file hash
        assert len(views[1]) > 4 and current_row(app) == 2  # the bank grew, the highlight stayed
        started = len(backend.started)
        await pilot.press("k")  # back to vector 1: from the cache, not generated again
        await wait_for(pilot, lambda: current_row(app) == 1 and "mean_1_x1.0-w5" in steered(app) and "cached" in screen_text(app))
        await pilot.pause(0.1)
        assert len(backend.started) == started
        await wait_for(pilot, lambda: any("12 MELBO vectors in" in n for n in seen.notifications()), timeout=30)
    # a restart on the finished bank still finds the completions made while it grew
    out = tmp_path / "work" / "parent.melbo-L8-R7.safetensors"
    backend2 = ScriptedBackend(token_seconds=0.002, tokens=6)
    app2 = make_app([out], backend2)
    async with running(app2) as (pilot, _):
        await wait_for(pilot, lambda: backend2.loaded.is_set())
        await pilot.press("j")
        await wait_for(pilot, lambda: "mean_1_x1.0-w5" in steered(app2) and "cached" in screen_text(app2))
        assert not [r for r in backend2.started if r.target.rows == (1,)]


async def test_keys_queued_faster_than_screens_open_and_close_are_safe(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    from textual import events

    app = make_app([bank_path], backend)
    async with running(app) as (pilot, seen):
        # queued together, as a fast typist's keys arrive: the second escape comes before the first pop
        for key in ("slash", "escape", "escape", "question_mark", "escape", "escape", "e", "escape", "escape", "w", "escape", "escape"):
            event = events.Key(key, None)
            event.set_sender(app)
            app.post_message(event)
        await pilot.pause(0.5)
        for _ in range(6):  # keys that arrived before their screen was ready did nothing; escape still closes it
            if app.screen is app.main:
                break
            await pilot.press("escape")
        assert app.is_running and app.screen is app.main and not seen.errors()


async def test_keys_typed_after_quit_do_nothing(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    from textual import events

    app = make_app([bank_path], backend)
    async with running(app) as (pilot, seen):
        for key in ("q", "e", "escape", "p", "slash", "j"):  # q, then keys already on their way
            event = events.Key(key, None)
            event.set_sender(app)
            app.post_message(event)
        await wait_for(pilot, lambda: app.return_code is not None)  # however long a busy machine takes to quit
    assert app.return_code == 0 and not seen.errors()


async def test_a_streaming_completion_follows_only_a_reader_at_the_bottom(bank_path: Path, make_app) -> None:
    backend = ScriptedBackend(token_seconds=0.03, tokens=300)
    app = make_app([bank_path], backend)
    async with running(app, size=(80, 24)) as (pilot, _):
        text = app.main.panel.text(0)

        def newest_shown() -> bool:  # one of the last few words (the screen is a frame behind the stream)
            shown = panel_text(app) + " "
            return any(f"{word} " in shown for word in steered(app).split()[-4:])

        await wait_for(pilot, lambda: len(text.lines()) > text.size.height + 2 and newest_shown())  # it follows the tail
        await pilot.press("tab", "g")  # the reader goes back to the start...
        assert text.has_focus and "mean_0_x1.0-w0 " in panel_text(app) + " "
        count = len(steered(app).split())
        await wait_for(pilot, lambda: len(steered(app).split()) > count + 10)
        assert "mean_0_x1.0-w0 " in panel_text(app) + " " and not newest_shown()  # ...and stays there as text arrives
        await pilot.press("G")  # back at the bottom: it follows again
        count = len(steered(app).split())
        await wait_for(pilot, lambda: len(steered(app).split()) > count + 5 and newest_shown())
