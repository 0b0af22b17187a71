"""What a researcher reads on the main screen: steered beside unsteered, rows prepared ahead, what
good is, labels and KL tied to their prompt, each bank's own state, and the keys they expect."""

from __future__ import annotations

import json
from pathlib import Path

from textual.containers import VerticalScroll

from melbo_tui.bank import BankMeta, VectorBank, save_bank
from melbo_tui.labels import MadeOn, save_labels
from melbo_tui.tui.backend import ScriptedBackend
from melbo_tui.tui.columns import fmt

from .conftest import PROMPT, current_row, make_bank, region_text, running, screen_text, steered, wait_for


def eval_bank(path: Path, n: int = 30) -> Path:
    """A MELBO-ortho bank as `ortho` leaves it: kl_seq and err measured, the unsteered values recorded, labels with their prompt."""
    import torch

    vectors = torch.linalg.qr(torch.randn(n, 576, generator=torch.Generator().manual_seed(3)).T)[0].T * 20
    kl_seq = torch.linspace(0.0, 0.9, n)  # rows 1..14 below the unsteered 0.458, the rest above
    err = torch.linspace(0.0, 1.5, n)
    meta = BankMeta(kind="ortho", model="embedded:SmolLM2-135M-Instruct", hidden_size=576, num_layers=30, source_layer=8,
                    target_layer=16, prompts=[PROMPT],
                    extra={"eval": {"prompt": PROMPT, "unsteered": {"kl_seq": 0.458, "err": 1.0}}})
    save_bank(VectorBank(vectors=vectors, meta=meta, metrics={"kl_seq": kl_seq, "err": err}), path)
    made_on = {"prompt": PROMPT, "system": None, "raw": False, "max_new_tokens": 48, "temperature": 0.0, "seed": 0}
    path.with_name(path.stem + ".labels.json").write_text(json.dumps({"labels": ["code"] * n, "made_on": made_on}))
    return path


async def test_steered_beside_unsteered_and_the_base_without_a_key(tmp_path: Path, make_app) -> None:
    backend = ScriptedBackend(token_seconds=0.001, tokens=6)
    app = make_app([eval_bank(tmp_path / "o.safetensors")], backend)
    async with running(app, size=(120, 40)) as (pilot, _):
        panel = app.main.panel
        await wait_for(pilot, lambda: panel.texts() == [" mean_0_x1.0-w0 mean_0_x1.0-w1 mean_0_x1.0-w2 mean_0_x1.0-w3 "
                                                        "mean_0_x1.0-w4 mean_0_x1.0-w5", " plain-w0 plain-w1 plain-w2 plain-w3 "
                                                        "plain-w4 plain-w5"])  # row 0 is the base: no third column
        await pilot.press("j")
        await wait_for(pilot, lambda: len(panel.texts()) == 3 and panel.texts()[2].startswith(" mean_0_"))
        titles = [" ".join(t.split()) for t in panel.titles()]  # as wrapped to the column, on one line
        assert "steered: vector 1 · code · KL-seq 0.031✓ (unsteered 0.458)" in titles[0] and "norm 20.0" in titles[0]
        assert titles[1] == "unsteered: no vector" and titles[2] == "base: vector 0 [code]"
        assert [r.target.rows for r in backend.started].count(()) == 1  # the unsteered answer: generated once


async def test_the_list_says_what_good_is(tmp_path: Path, make_app) -> None:
    app = make_app([eval_bank(tmp_path / "o.safetensors")], ScriptedBackend(token_seconds=0.001, tokens=4))
    async with running(app, size=(120, 40)) as (pilot, _):
        legend = app.main.query_one("#legend")
        expected = "KL-seq: lower = closer to the base · ✓ 14/29 beat unsteered 0.458"
        await wait_for(pilot, lambda: expected in region_text(app, legend))
        text = screen_text(app)
        lines = text.splitlines()
        row = next(line for line in lines if line.split()[:2] == ["1", "code"])
        far = next(line for line in lines if line.split()[:2] == ["20", "code"])
        assert "0.031✓" in row and "✓" not in far  # rows that beat no vector are marked, the others not
        assert "idx ▲" in text
        await pilot.press("s")  # sort by the next column: KL-seq, ascending, and the header says so
        await wait_for(pilot, lambda: "KL-seq ▲" in screen_text(app) and "idx ▲" not in screen_text(app))
        await pilot.press("S")
        await wait_for(pilot, lambda: "KL-seq ▼" in screen_text(app) and current_row(app) is not None)
        await pilot.press("s")  # err: its own legend, and its own bar (1: no vector)
        await wait_for(pilot, lambda: "err: lower = closer to the base's effect" in region_text(app, legend))
        await pilot.press("i")
        await wait_for(pilot, lambda: "to beat" in screen_text(app))
        assert "target-layer RMS error" in screen_text(app) and "0.458" in screen_text(app)


async def test_rows_ahead_are_prepared_in_the_direction_of_travel(tmp_path: Path, make_app) -> None:
    backend = ScriptedBackend(token_seconds=0.001, tokens=6)
    app = make_app([make_bank(tmp_path / "m.safetensors", 40)], backend)
    async with running(app, size=(120, 40)) as (pilot, _):
        await wait_for(pilot, lambda: {1, 2, 3, 4, 5, 6, 7, 8} <= {t.rows[0] for t in backend.completed})
        await pilot.press("j")
        assert "mean_1_x1.0-w5" in steered(app) and "cached" in app.main.panel.text(0).note  # at once, from the read-ahead
        assert (1,) not in [r.target.rows for r in backend.started]  # never streamed
        await pilot.press("colon", *"30", "enter")
        await wait_for(pilot, lambda: "mean_30_x1.0-w5" in steered(app))
        await pilot.press("k")  # moving up: the rows above come first
        await wait_for(pilot, lambda: {28, 27, 26} <= {t.rows[0] for t in backend.completed})
        after = [t.rows[0] for t in backend.completed]
        up = after[after.index(28):]
        assert up[:4] == [28, 27, 26, 25]


async def test_what_the_user_asks_for_never_waits_for_the_read_ahead(tmp_path: Path, make_app) -> None:
    backend = ScriptedBackend(token_seconds=0.001, tokens=6, batch_seconds=60.0)  # a batch would hold the model a minute
    app = make_app([make_bank(tmp_path / "m.safetensors", 40)], backend)
    async with running(app, size=(120, 40)) as (pilot, _):
        await wait_for(pilot, lambda: app.main.read_ahead.running)
        await pilot.press("colon", *"25", "enter")
        await wait_for(pilot, lambda: "mean_25_x1.0-w5" in steered(app), timeout=10)  # within seconds, not a minute
        assert not backend.completed  # the batch gave way and was dropped


async def test_labels_made_on_another_prompt_are_marked_then_made_again(tmp_path: Path, make_app) -> None:
    bank = eval_bank(tmp_path / "o.safetensors")
    sidecar = bank.with_name("o.labels.json")
    before = sidecar.read_text()
    app = make_app([bank], ScriptedBackend(token_seconds=0.001, tokens=6))
    async with running(app, size=(120, 40)) as (pilot, _):
        await wait_for(pilot, lambda: " code " in screen_text(app))
        await pilot.press("e")
        app.screen.query_one("#prompt").value = "Tell me a joke."
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: "(code)" in screen_text(app))  # the file's labels describe another prompt
        await wait_for(pilot, lambda: app.main.view.label(1) == ("gibberish", True))  # completed here: labelled again
        assert " KL-seq* " in screen_text(app)  # and the KL measured on the bank's prompt says so
        # the highlighted row (streamed, not read ahead) is labelled again in the list as well as in its title
        await wait_for(pilot, lambda: "θ0 gibberish" in screen_text(app))
    assert sidecar.read_text() == before  # the explorer never writes beside a bank it did not make


async def test_each_bank_keeps_its_own_sort_filter_and_counts(tmp_path: Path, make_app) -> None:
    a = eval_bank(tmp_path / "a.safetensors", 30)
    b = make_bank(tmp_path / "b.safetensors", 12, labels=["code", "list"] * 6)
    app = make_app([a, b], ScriptedBackend(token_seconds=0.001, tokens=4))
    async with running(app, size=(120, 40)) as (pilot, _):
        vl = app.main.vector_list
        await pilot.press("slash", *"kl_seq<0.3", "enter", "s", "S")
        await wait_for(pilot, lambda: vl.sort_key == "kl_seq" and vl.sort_reverse and vl.row_count == 10)
        await pilot.press("n")
        await wait_for(pilot, lambda: vl.view is not None and vl.view.name == "b.safetensors")
        assert vl.sort_key == "idx" and not vl.filter_text and vl.row_count == 12
        assert "b.safetensors (12/12 rows)" in screen_text(app) and "filter" not in screen_text(app).splitlines()[-2]
        await pilot.press("n")
        await wait_for(pilot, lambda: vl.view is not None and vl.view.name == "a.safetensors")
        assert vl.sort_key == "kl_seq" and vl.sort_reverse and vl.filter_text == "kl_seq<0.3" and vl.row_count == 10
        assert "a.safetensors (10/30 rows)" in screen_text(app)


async def test_y_copies_what_the_reader_looks_at(tmp_path: Path, make_app) -> None:
    app = make_app([make_bank(tmp_path / "m.safetensors", 10)], ScriptedBackend(token_seconds=0.001, tokens=5))
    async with running(app, size=(120, 40)) as (pilot, seen):
        await wait_for(pilot, lambda: "plain-w4" in " ".join(app.main.panel.texts()))
        await pilot.press("y")
        assert app.clipboard == steered(app) and "mean_0_x1.0-w4" in app.clipboard
        await pilot.press("tab", "tab", "y")  # the focused column: the unsteered one
        assert app.clipboard.startswith(" plain-w0")
        await wait_for(pilot, lambda: any("copied the unsteered completion" in n for n in seen.notifications()))


async def test_help_scrolls_to_its_ends_and_names_keys_as_typed(tmp_path: Path, make_app) -> None:
    app = make_app([make_bank(tmp_path / "m.safetensors", 10)], ScriptedBackend(token_seconds=0.001, tokens=4))
    async with running(app, size=(80, 24)) as (pilot, _):
        await pilot.press("question_mark")
        body = app.screen.query_one("#help-body", VerticalScroll)
        await pilot.press("G")
        await wait_for(pilot, lambda: body.scroll_y == body.max_scroll_y > 0)
        assert "keys.toml" in screen_text(app)
        await pilot.press("g")
        await wait_for(pilot, lambda: body.scroll_y == 0)
        assert "slash" not in screen_text(app) and "question_mark" not in screen_text(app)


async def test_notifications_stay_above_the_status_line(tmp_path: Path, make_app) -> None:
    app = make_app([make_bank(tmp_path / "m.safetensors", 10)], ScriptedBackend(token_seconds=0.001, tokens=4))
    async with running(app, size=(80, 24), notifications=True) as (pilot, _):
        await wait_for(pilot, lambda: "sort: idx" in screen_text(app))
        app.notify("a long notification " * 6, timeout=30)
        def toast_above_status() -> bool:  # a frame drawn while the toast is placed can be blank: wait for a whole one
            lines = screen_text(app).splitlines()
            status, footer = lines[-2:]
            return ("a long notification" in "\n".join(lines[:-2]) and "sort: idx" in status and "compose: mean x1" in status
                    and "? Help" in footer)

        await wait_for(pilot, toast_above_status)


def test_values_never_read_minus_zero() -> None:
    assert fmt(-0.0004, "cos_base") == "0.00" and fmt(-0.2, "cos_base") == "-0.20" and fmt(float("nan"), "kl") == "–"


async def test_each_bank_is_served_by_the_model_it_names_loaded_when_first_shown(tmp_path: Path, make_app) -> None:
    smol = make_bank(tmp_path / "smol.safetensors", 8)
    gemma = make_bank(tmp_path / "gemma.safetensors", 6, hidden=640, num_layers=18, source_layer=6, target_layer=12,
                      model="gemma-3-270m", raw=True)  # a base model's bank: raw text, its labels made on raw text
    save_labels(gemma, 6, dict.fromkeys(range(6), "persona"), [], MadeOn(PROMPT, None, True))
    backend = ScriptedBackend(token_seconds=0.001, tokens=4, per_bank_models=True)
    app = make_app([smol, gemma], backend)
    async with running(app, size=(120, 40)) as (pilot, _):
        await wait_for(pilot, lambda: "model ✓" in screen_text(app) and "mean_0_x1.0-w3" in steered(app))
        assert backend.loads == ["embedded:SmolLM2-135M-Instruct"]  # the second bank's model: not yet
        await pilot.press("n")
        await wait_for(pilot, lambda: "bank 2/2 gemma" in screen_text(app) and "gemma-3-270m (no weights)" in screen_text(app)
                       and "mean_0_x1.0-w3" in steered(app))
        assert backend.loads == ["embedded:SmolLM2-135M-Instruct", "gemma-3-270m"]
        assert app.main.settings is not None and app.main.settings.raw  # completed as it was made: raw text
        assert "(persona)" not in screen_text(app) and "persona" in screen_text(app)  # so its labels are current
        await pilot.press("n")  # back: the first model is still loaded
        await wait_for(pilot, lambda: "bank 1/2 smol" in screen_text(app) and "model ✓" in screen_text(app))
        assert len(backend.loads) == 2 and not app.main.settings.raw  # the chat bank in its chat template again
