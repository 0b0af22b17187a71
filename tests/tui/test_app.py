"""The explorer driven by Pilot against the scripted backend: what a user sees after each key."""

from __future__ import annotations

import io
import itertools
import time
from pathlib import Path

import pytest

from melbo_tui.tui.backend import ScriptedBackend
from melbo_tui.tui.components.help_screen import HelpScreen
from melbo_tui.tui.components.plots_screen import PlotsScreen
from melbo_tui.tui.components.settings_screen import SettingsScreen
from melbo_tui.tui.components.sweep_screen import SweepScreen
from melbo_tui.tui.keymap import APP_KEYS

from .conftest import make_bank, notifications, screen_text, wait_for


def steered(app) -> str:  # type: ignore[no-untyped-def]
    return app.panel.texts()["steered"]


async def test_first_frame_before_the_model_loads(bank_path: Path, make_app) -> None:
    backend = ScriptedBackend(load_seconds=1.5, tokens=6)
    app = make_app([bank_path], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        start = time.monotonic()
        await wait_for(pilot, lambda: app.table.row_count == 40, timeout=1.0)
        assert "loading model" in screen_text(app)
        await wait_for(pilot, lambda: "model loading" in screen_text(app), timeout=0.5)  # says why nothing streams
        await pilot.press("j", "j")  # browsing works meanwhile
        assert app.current_row() == 2
        assert not backend.loaded.is_set() and time.monotonic() - start < 1.5
        await wait_for(pilot, lambda: "w5" in steered(app))
        assert steered(app).startswith(" mean_2_")  # the highlighted row streamed once ready


async def test_navigation_keys(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.table.row_count == 40)
        await pilot.press("j", "j", "j", "k")
        assert app.current_row() == 2
        await pilot.press("G")
        assert app.current_row() == 39
        await pilot.press("g")
        assert app.current_row() == 0
        await pilot.press("down", "pagedown")
        assert app.current_row() > 10
        await pilot.press("colon", *"17", "enter")
        assert app.current_row() == 17
        await wait_for(pilot, lambda: "vector 17" in screen_text(app) and "mean_17_x1.0-w11" in steered(app))


async def test_moving_the_highlight_cancels_the_running_generation(bank_path: Path, make_app) -> None:
    backend = ScriptedBackend(token_seconds=0.03, tokens=200)
    app = make_app([bank_path], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: "mean_0_x1.0-w2" in steered(app))
        await pilot.press("j")
        await wait_for(pilot, lambda: len(backend.finished) >= 1, timeout=1.0)  # the model thread stopped
        first_request, first_result = backend.finished[0]
        assert first_request.target.rows == (0,) and first_result.stopped
        assert first_result.num_tokens < 50
        await wait_for(pilot, lambda: "mean_1_x1.0-w2" in steered(app))
        assert "mean_0" not in steered(app)  # no late piece of the old completion leaks in
        await pilot.press("escape")
        await wait_for(pilot, lambda: len(backend.finished) >= 2, timeout=1.0)
        assert backend.finished[1][1].stopped
        await pilot.pause(0.1)
        assert "[stopped" in screen_text(app)


async def test_debounce_skips_rows_passed_over(bank_path: Path, make_app) -> None:
    backend = ScriptedBackend(token_seconds=0.002, tokens=5)
    app = make_app([bank_path], backend, debounce=1.0)  # long enough for four key presses on a loaded machine
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: "w4" in steered(app))
        await pilot.press("j", "j", "j", "j")
        await wait_for(pilot, lambda: "mean_4_x1.0-w4" in steered(app))
        assert [r.target.rows for r in backend.started] == [(0,), (4,)]


async def test_select_and_compose(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.table.row_count == 40)
        await pilot.press("j", "space", "space", "space")  # space selects and moves down
        assert app.selected == {1, 2, 3}
        assert "●" in screen_text(app) and "selected 3" in screen_text(app)
        await pilot.press("c")
        await wait_for(pilot, lambda: "mean_1,2,3_x1.0-w11" in steered(app))
        assert "mean[1-3] (k=3)" in screen_text(app)
        await wait_for(pilot, lambda: "KL to base" in screen_text(app) and "norm" in screen_text(app))
        await pilot.press("m")  # next mode: sum
        await wait_for(pilot, lambda: "sum_1,2,3_x1.0-w11" in steered(app))
        assert "sum[1-3]" in screen_text(app)
        await pilot.press("m", "plus")  # mean-sqrt, scale 1.25
        await wait_for(pilot, lambda: "mean-sqrt_1,2,3_x1.25-w11" in steered(app))
        assert "x1.25" in screen_text(app)
        await pilot.press("u")
        assert app.selected == set()
        await pilot.press("c")
        await pilot.pause(0.05)
        assert any("nothing selected" in n for n in notifications(app))


async def test_range_select(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.table.row_count == 40)
        await pilot.press("colon", *"5", "enter", "v", "j", "j", "j", "j", "v")
        assert app.selected == {5, 6, 7, 8, 9}
        await pilot.press("c")
        await wait_for(pilot, lambda: "mean_5,6,7,8,9_x1.0" in steered(app))


async def test_filter_expressions(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.table.row_count == 40)
        await pilot.press("slash", *"label=code", "enter")
        shown = [int(k.value) for k in app.table.rows]
        assert shown == list(range(0, 40, 3))
        assert "filter: label=code" in screen_text(app) and "(14/40 rows)" in screen_text(app)
        await pilot.press("slash", "ctrl+u", *"norm>15 and idx<30", "enter")  # ctrl+u clears the input
        shown = [int(k.value) for k in app.table.rows]
        norms = app.view.values["norm"]
        assert shown and all(norms[r] > 15 and r < 30 for r in shown)
        await pilot.press("slash", "ctrl+u", *"kl<<3", "enter")  # a typo: the table stays, a notice says why
        await pilot.pause(0.05)
        assert [int(k.value) for k in app.table.rows] == shown
        assert any("filter" in n for n in notifications(app))
        await pilot.press("slash", "ctrl+u", "enter")  # empty clears
        assert app.table.row_count == 40


async def test_sort_by_column(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.table.row_count == 40)
        await pilot.press("s")  # idx -> kl
        assert app.sort_key == "kl"
        await pilot.press("S")  # largest KL first
        shown = [int(k.value) for k in app.table.rows]
        kl = app.view.values["kl"]
        assert shown[0] == 39 and all(kl[a] >= kl[b] for a, b in itertools.pairwise(shown))
        assert "sort: kl ↓" in screen_text(app)


async def test_resize_to_80x24(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: "w11" in steered(app))
        text = screen_text(app)
        assert app._widget("#main", object).has_class("narrow")
        assert "idx" in text and "vector 0" in text and "mean_0_x1.0-w0" in text
        assert app.table.region.height >= 4 and app.panel.region.height >= 4
        await pilot.resize_terminal(140, 40)
        await pilot.pause(0.05)
        assert not app._widget("#main", object).has_class("narrow")


async def test_help_lists_every_key(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend, keymap={"quit": "ctrl+q"})
    async with app.run_test(size=(140, 60)) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        await pilot.pause(0.05)
        for spec in APP_KEYS:
            assert spec.id in _help_plain(app)
        assert "ctrl+q" in _help_plain(app)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("q")  # remapped away: q no longer quits
        await pilot.pause(0.05)
        assert app.is_running


def _help_plain(app) -> str:  # type: ignore[no-untyped-def]
    from rich.console import Console

    from melbo_tui.tui.components.help_screen import help_table

    console = Console(width=160, record=True, color_system=None, file=io.StringIO())
    console.print(help_table(app.keymap_overrides))
    return console.export_text()


async def test_model_load_failure_is_shown_and_browsing_still_works(bank_path: Path, make_app) -> None:
    backend = ScriptedBackend(fail_load="cannot load model 'nope' (tried local path)")
    app = make_app([bank_path], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.model_error is not None)
        await pilot.pause(0.05)
        assert any("cannot load model 'nope'" in n for n in notifications(app))
        assert "failed to load" in screen_text(app)
        await pilot.press("j", "j")
        assert app.current_row() == 2
        assert "failed to load" in screen_text(app)


async def test_generation_error_is_shown_in_the_panel(bank_path: Path, make_app) -> None:
    backend = ScriptedBackend(fail_stream="steering vector has shape [3], model needs [..., 576]")
    app = make_app([bank_path], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: "⚠ steering vector has shape" in screen_text(app))
        await pilot.press("j")
        await wait_for(pilot, lambda: len(backend.started) >= 2)
        assert app.is_running


async def test_invalid_bank_file_is_a_notification(tmp_path: Path, make_app, backend: ScriptedBackend) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    good = make_bank(tmp_path / "good.safetensors", 12)
    app = make_app([bad, good], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.table.row_count == 12)
        assert any("bad.safetensors" in n and "not a readable" in n for n in notifications(app))
    only_bad = make_app([bad], backend)
    async with only_bad.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: "no bank could be opened" in screen_text(only_bad))
        assert "not a readable safetensors bank" in only_bad.panel.column("steered").note
        await wait_for(pilot, lambda: "readable" in screen_text(only_bad), timeout=1)
        assert "no bank opened" in screen_text(only_bad)


@pytest.mark.parametrize("load_seconds", [0.0, 0.4])  # model ready before / after the bank
async def test_bank_for_another_model_is_refused_with_a_message(tmp_path: Path, make_app, load_seconds: float) -> None:
    path = make_bank(tmp_path / "wide.safetensors", 5, hidden=64)
    backend = ScriptedBackend(hidden_size=576, tokens=4, load_seconds=load_seconds)
    app = make_app([path], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: "hidden size 64" in app.panel.column("steered").note)
        await wait_for(pilot, lambda: "⚠ bank was made for hidden" in screen_text(app))
        assert any("hidden size 64" in n for n in notifications(app))
        await pilot.press("j")
        assert app.current_row() == 1
        await pilot.pause(0.1)
        assert backend.started == []  # nothing was ever steered with a misfit bank


async def test_cache_hit_survives_a_restart(bank_path: Path, make_app, tmp_path: Path) -> None:
    first = ScriptedBackend(tokens=8)
    app = make_app([bank_path], first)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: "w7" in steered(app) and len(first.finished) == 1)
        await pilot.pause(0.05)
        generated = steered(app)
    second = ScriptedBackend(tokens=8, load_seconds=1.5)  # the model is not even loaded: the cache answers
    again = make_app([bank_path], second)
    async with again.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: steered(again) == generated, timeout=1.0)
        await wait_for(pilot, lambda: "cached" in screen_text(again), timeout=0.4)
        assert not second.loaded.is_set()
        assert second.started == []


async def test_side_by_side_baselines(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend)
    async with app.run_test(size=(150, 40)) as pilot:
        await pilot.press("j", "j")
        await pilot.press("b")
        await wait_for(pilot, lambda: "w11" in app.panel.texts()["base"] and "w11" in app.panel.texts()["unsteered"])
        texts = app.panel.texts()
        assert texts["steered"].startswith(" mean_2_") and texts["unsteered"].startswith(" plain-w0")
        assert texts["base"].startswith(" mean_0_")
        assert "unsteered (no vector)" in screen_text(app) and "base vector" in screen_text(app)


async def test_settings_form_validates_and_applies(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.table.row_count == 40)
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
        assert app.settings.temperature == 0.7 and app.settings.seed == 42
        await wait_for(pilot, lambda: "T=0.7  seed=42" in screen_text(app) and "Write a poem." in screen_text(app))
        await wait_for(pilot, lambda: backend.started and backend.started[-1].settings.prompt == "Write a poem.")


async def test_plots_screen(tmp_path: Path, make_app, backend: ScriptedBackend) -> None:
    path = make_bank(tmp_path / "big.safetensors", 400)
    app = make_app([path], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.table.row_count == 400)
        await pilot.press("colon", *"200", "enter", "p")
        assert isinstance(app.screen, PlotsScreen)
        plots = app.screen
        assert plots.visible_range() == (0, 399) and plots.window == 50
        await pilot.press("right_square_bracket", "z", "z", "right")
        assert plots.window == 100
        lo, hi = plots.visible_range()
        assert hi - lo + 1 == 100 and lo <= 201 <= hi
        assert "cursor 201" in screen_text(app) and "moving average over 100" in screen_text(app)
        await pilot.press("escape")
        assert app.current_row() == 201  # the list followed the plot cursor


async def test_sweep_streams_first_k_compositions(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.table.row_count == 40)
        await pilot.press("w")
        assert isinstance(app.screen, SweepScreen)
        sweep = app.screen
        assert [len(t.rows) for t in sweep.targets] == [1, 2, 3, 5, 10, 20]
        await wait_for(pilot, lambda: "w11" in sweep.texts.get(20, ""), timeout=5)
        assert sweep.texts[3].startswith(" mean_1,2,3_x1.0")  # the base row is never part of the sweep
        await pilot.press("escape")
        assert not isinstance(app.screen, SweepScreen)


async def test_switch_between_banks(tmp_path: Path, make_app, backend: ScriptedBackend) -> None:
    a = make_bank(tmp_path / "a.safetensors", 10)
    b = make_bank(tmp_path / "b.safetensors", 25, seed=1)
    app = make_app([a, b], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.table.row_count == 10)
        await pilot.press("n")
        assert app.table.row_count == 25 and "bank 2/2 b.safetensors" in screen_text(app)


async def test_metrics_are_computed_on_demand(tmp_path: Path, make_app, backend: ScriptedBackend) -> None:
    path = make_bank(tmp_path / "bare.safetensors", 30, metrics=False)
    app = make_app([path], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.table.row_count == 30)
        await wait_for(pilot, lambda: app.view.has("kl"))
        await pilot.pause(0.1)
        assert backend.metrics_calls == 1
        assert any("KL measured" in n for n in notifications(app))
        row = app.table.get_row("5")
        assert row[4].strip() == f"{app.view.value('kl', 5):.3f}"


async def test_export_writes_jsonl_and_text(bank_path: Path, make_app, backend: ScriptedBackend, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    app = make_app([bank_path], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: len(backend.finished) == 1)
        await pilot.pause(0.05)
        await pilot.press("x")
        exported = tmp_path / "small.completions.jsonl"
        assert exported.is_file() and "mean_0_x1.0-w0" in exported.read_text()
        assert "vector 0" in (tmp_path / "small.completions.txt").read_text()


async def test_command_palette_runs_explorer_commands(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.table.row_count == 40)
        await pilot.press("ctrl+p")
        await pilot.press(*"Side by side")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.baselines)


async def test_quit_while_generating(bank_path: Path, make_app) -> None:
    backend = ScriptedBackend(token_seconds=0.05, tokens=500)
    app = make_app([bank_path], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: "w2" in steered(app))
        await pilot.press("q")
        await pilot.pause(0.2)
        assert not app.is_running
    assert backend.finished and backend.finished[0][1].stopped


async def test_mouse_click_highlights_and_header_sorts(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.table.row_count == 40)
        await pilot.click("#vectors", offset=(8, 5))  # header is line 0: line 5 is row 4
        assert app.current_row() == 4
        await wait_for(pilot, lambda: "mean_4_x1.0-w11" in steered(app))
        kl_x = screen_text(app).splitlines()[3].index(" KL ") + 2
        await pilot.click("#vectors", offset=(kl_x, 0))
        assert app.sort_key == "kl"
        await pilot.click("#vectors", offset=(kl_x, 0))
        assert app.sort_reverse and int(app.table.rows and next(iter(app.table.rows)).value) == 39


async def test_background_ortho_job_opens_its_bank_and_fills_in(tmp_path: Path, make_app) -> None:
    bank = make_bank(tmp_path / "parent.safetensors", 10)
    backend = ScriptedBackend(token_seconds=0.002, tokens=6)
    backend.job_block, backend.job_steps, backend.job_step_seconds = 4, 10, 0.02
    app = make_app([bank], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.model_ready and app.table.row_count == 10)
        await pilot.press("colon", *"3", "enter", "o", "ctrl+u", *"8", "enter")
        out = tmp_path / "parent.ortho-from3.safetensors"
        await wait_for(pilot, lambda: len(app.views) == 2)  # opened at once (row 0 = theta0)
        await wait_for(pilot, lambda: "ortho 4/8" in screen_text(app))
        await pilot.press("j")  # browsing and streaming go on meanwhile
        await wait_for(pilot, lambda: "mean_4_x1.0-w5" in steered(app))
        await wait_for(pilot, lambda: not app.job_running)
        assert out.is_file() and len(app.views[1]) == 9
        await pilot.press("n")
        assert app.table.row_count == 9 and "parent.ortho-from3.safetensors" in screen_text(app)
        await wait_for(pilot, lambda: app.views[1].has("kl"))  # measured once the job is done


async def test_background_job_can_be_stopped(tmp_path: Path, make_app) -> None:
    bank = make_bank(tmp_path / "parent.safetensors", 10)
    backend = ScriptedBackend(token_seconds=0.002, tokens=6)
    backend.job_block, backend.job_steps, backend.job_step_seconds = 2, 50, 0.02
    app = make_app([bank], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.model_ready and app.table.row_count == 10)
        await pilot.press("o", "ctrl+u", *"20", "enter")
        await wait_for(pilot, lambda: app.job_running and "ortho 0/20" in screen_text(app))
        await pilot.press("O")
        await wait_for(pilot, lambda: not app.job_running)
        assert any("stopped" in n for n in notifications(app))


async def test_typing_in_a_form_never_triggers_app_keys(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    app = make_app([bank_path], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.table.row_count == 40)
        await pilot.press("slash", *"label~q?s", "enter")  # q, ? and s are app keys outside the input
        assert app.is_running and app.filter_text == "label~q?s" and app.sort_key == "idx"
        assert app.table.row_count == 0
        assert any("no vector matches" in n for n in notifications(app))


async def test_random_keys_never_crash_the_app(bank_path: Path, make_app, tmp_path: Path, monkeypatch) -> None:
    import random

    monkeypatch.chdir(tmp_path)  # x exports into the working directory
    backend = ScriptedBackend(token_seconds=0.001, tokens=5)
    backend.job_block, backend.job_steps, backend.job_step_seconds = 2, 3, 0.001
    app = make_app([bank_path], backend)
    keys = ["j", "k", "g", "G", "space", "v", "u", "c", "m", "plus", "minus", "b", "r", "s", "S", "n", "escape",
            "enter", "slash", "colon", "e", "p", "w", "question_mark", "x", "o", "O", "T", "z", "left_square_bracket",
            "1", "0", "a", "=", "<", "backspace", "pagedown", "pageup", "tab", "ctrl+o", "ctrl+u"]
    rng = random.Random(7)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.table.row_count == 40)
        for _ in range(100):
            await pilot.press(rng.choice(keys))
            assert app.is_running
        await pilot.pause(0.2)
        assert app.is_running
        assert not [n for n in notifications(app) if n.startswith("internal error")]


async def test_fast_typing_select_then_compose_keeps_the_composition(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    from textual import events

    app = make_app([bank_path], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.table.row_count == 40)
        for key, char in (("j", "j"), ("space", " "), ("space", " "), ("space", " "), ("c", "c")):
            event = events.Key(key, char)  # all queued at once, as a real terminal delivers a fast typist
            event.set_sender(app)
            app._driver.send_message(event)
        await wait_for(pilot, lambda: "mean_1,2,3_x1.0-w11" in steered(app))
        await pilot.pause(0.2)
        assert "mean[1-3] (k=3)" in screen_text(app) and app.composition is not None


async def test_background_melbo_training_opens_its_bank_and_grows(tmp_path: Path, make_app) -> None:
    from melbo_tui.bank import load_bank

    bank = make_bank(tmp_path / "parent.safetensors", 10)
    backend = ScriptedBackend(token_seconds=0.002, tokens=6)
    backend.job_steps, backend.job_step_seconds = 10, 0.03
    app = make_app([bank], backend, prompt="Tell me a story.", system="Be brief.")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.model_ready and app.table.row_count == 10)
        await pilot.press("T", "ctrl+u", *"x", "enter")  # not a number: a notification, no job
        await wait_for(pilot, lambda: any("not a number of vectors" in n for n in notifications(app)))
        assert not app.job_running
        await pilot.press("T", "ctrl+u", *"12 50", "enter")
        await wait_for(pilot, lambda: app.job_running and "melbo 0/12" in screen_text(app))
        job = backend.melbo_jobs[-1]
        assert (job.prompt, job.system, job.source_layer, job.target_layer, job.radius, job.count, job.steps) == (
            "Tell me a story.", "Be brief.", 8, 16, 40.0, 12, 50)  # the bank records no radius: 40
        out = tmp_path / "parent.melbo-L8-R40.safetensors"
        await wait_for(pilot, lambda: len(app.views) == 2 and len(app.views[1]) == 4)  # opened at the first batch
        await pilot.press("j")  # browsing and streaming go on meanwhile
        await wait_for(pilot, lambda: "mean_1_x1.0-w5" in steered(app))
        await wait_for(pilot, lambda: len(app.views[1]) == 8)  # grew at the next checkpoint
        await pilot.press("O")
        await wait_for(pilot, lambda: not app.job_running)
        assert any("stopped: 8 MELBO vectors" in n for n in notifications(app))
        saved = load_bank(out)  # what the stop left is a valid bank
        assert len(saved) == 8 and saved.meta.prompts == ["Tell me a story."] and saved.meta.radius == 40.0
        await pilot.press("n")
        assert app.table.row_count == 8 and out.name in screen_text(app)


async def test_train_key_is_in_help_and_palette(bank_path: Path, make_app, backend: ScriptedBackend) -> None:
    spec = next(s for s in APP_KEYS if s.id == "train")
    assert spec.keys == "T" and spec.group == "jobs"
    app = make_app([bank_path], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.table.row_count == 40)
        commands = [c.help for c in app.get_system_commands(app.screen)]
        assert any("(train)" in h for h in commands)
    assert "(train)" in _help_plain(app)


async def test_plots_and_sweep_screens_own_their_keys(tmp_path: Path, make_app, backend: ScriptedBackend) -> None:
    path = make_bank(tmp_path / "big.safetensors", 100)
    app = make_app([path], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.table.row_count == 100)
        await pilot.press("colon", *"50", "enter", "p")
        plots = app.screen
        assert isinstance(plots, PlotsScreen) and plots.cursor == 50
        await pilot.press("j", "j", "k", "space", "s", "u", "c")  # list keys: j/k move the plot cursor, the rest do nothing
        assert plots.cursor == 51 and app.current_row() == 51
        assert not app.selected and app.sort_key == "idx" and app.composition is None
        await pilot.press("G")
        assert plots.cursor == 99 and app.current_row() == 99
        await pilot.press("g")
        assert plots.cursor == 0 and app.current_row() == 0
        assert "(cursor_down)" not in " ".join(c.help for c in app.get_system_commands(plots))
        await pilot.press("escape")
        assert not isinstance(app.screen, PlotsScreen) and app.current_row() == 0
        await pilot.press("w")
        sweep = app.screen
        assert isinstance(sweep, SweepScreen)
        await pilot.press("j", "j", "G", "space", "s", "n")  # scroll the sweep rows; the list stays as it was
        await pilot.pause(0.05)
        assert app.current_row() == 0 and not app.selected and app.sort_key == "idx"
        await pilot.press("escape")
        assert not isinstance(app.screen, SweepScreen)
        await pilot.press("j")  # back on the list, j moves the list again
        assert app.current_row() == 1


async def test_cache_of_a_growing_bank_survives_its_checkpoints(tmp_path: Path, make_app) -> None:
    bank = make_bank(tmp_path / "parent.safetensors", 10)
    backend = ScriptedBackend(token_seconds=0.002, tokens=6)
    backend.job_steps, backend.job_step_seconds = 10, 0.2  # slow enough for two streams between checkpoints
    app = make_app([bank], backend)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app.model_ready and app.table.row_count == 10)
        await pilot.press("T", "ctrl+u", *"12", "enter")
        await wait_for(pilot, lambda: len(app.views) == 2 and len(app.views[1]) == 4)
        await pilot.press("n", "j")  # on the growing bank: vector 1 streams, then vector 2
        await wait_for(pilot, lambda: app.current_row() == 1 and "mean_1_x1.0-w5" in steered(app))
        await pilot.press("j")
        await wait_for(pilot, lambda: "mean_2_x1.0-w5" in steered(app))
        first_digest = app.views[1].digest
        await wait_for(pilot, lambda: app.views[1].digest != first_digest, timeout=20)  # a checkpoint: a new file hash
        assert len(app.views[1]) > 4 and app.current_row() == 2  # the bank grew, the highlight stayed
        started = len(backend.started)
        await pilot.press("k")  # back to vector 1: from the cache, not generated again
        await wait_for(pilot, lambda: app.current_row() == 1 and "mean_1_x1.0-w5" in steered(app) and "cached" in screen_text(app))
        await pilot.pause(0.1)
        assert len(backend.started) == started
        await wait_for(pilot, lambda: not app.job_running, timeout=30)
    # a restart on the finished bank still finds the completions made while it grew
    out = tmp_path / "parent.melbo-L8-R40.safetensors"
    backend2 = ScriptedBackend(token_seconds=0.002, tokens=6)
    app2 = make_app([out], backend2)
    async with app2.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: app2.model_ready and app2.table.row_count == 12)
        await pilot.press("j")
        await wait_for(pilot, lambda: "mean_1_x1.0-w5" in steered(app2) and "cached" in screen_text(app2))
        assert not [r for r in backend2.started if r.target.rows == (1,)]
