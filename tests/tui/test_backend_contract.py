"""The backend contract: the same behaviours from the scripted stand-in and from the real engine.

The explorer's tests run against `ScriptedBackend` for speed; this file is what makes that
honest. Every test runs twice: on the scripted backend and on `EngineBackend` with a tiny
random-weight chat model (real loading, chat template, generation, KL and jobs).
"""

from __future__ import annotations

import math
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from melbo_tui.bank import load_bank
from melbo_tui.compose import UNSTEERED, Composition, compose
from melbo_tui.decoding import GenerationSettings
from melbo_tui.errors import BankError
from melbo_tui.models import ModelRequest
from melbo_tui.tui.backend import (
    Backend,
    BatchRequest,
    EngineBackend,
    GenerationRequest,
    MelboJob,
    MetricsRequest,
    ModelTurns,
    OrthoJob,
    ScriptedBackend,
)
from melbo_tui.tui.settings import ExploreSettings

from .conftest import PROMPT, make_bank

SETTINGS = ExploreSettings(prompt=PROMPT, generation=GenerationSettings(max_new_tokens=8))


@pytest.fixture(params=["scripted", pytest.param("engine", marks=pytest.mark.embedded)])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "scripted":
        chosen: Backend = ScriptedBackend(token_seconds=0.001, hidden_size=64)
    else:
        tiny = request.getfixturevalue("tiny_model_dir")
        chosen = EngineBackend(ModelRequest(str(tiny), device="cpu", threads=1))
    chosen.load(str(tiny) if isinstance(chosen, EngineBackend) else "scripted")
    return chosen


@pytest.fixture
def bank_file(tmp_path: Path, backend: Backend) -> Path:
    """An ortho-shaped bank made with the tiny chat model: hidden 64, 6 layers, steering at layer 2."""
    model = backend.request.name if isinstance(backend, EngineBackend) else "scripted"
    return make_bank(tmp_path / "tiny.safetensors", 6, hidden=64, num_layers=6, source_layer=2, target_layer=4,
                     kind="ortho", metrics=False, model=str(model))


def test_load_describes_the_model_in_one_line(backend: Backend, bank_file: Path) -> None:
    model = backend.model_for(load_bank(bank_file))
    description = backend.load(model)
    assert description.strip() and "\n" not in description and model


def test_a_bank_made_for_another_model_is_refused(backend: Backend, bank_file: Path, tmp_path: Path) -> None:
    backend.check_bank(load_bank(bank_file))
    model = load_bank(bank_file).meta.model
    other = load_bank(make_bank(tmp_path / "wide.safetensors", 3, hidden=576, model=model))
    with pytest.raises(BankError, match="576"):
        backend.check_bank(other)  # the model it names, but not its shape
    if isinstance(backend, EngineBackend):  # with --model, a bank made with another model: refused by name
        named = load_bank(make_bank(tmp_path / "named.safetensors", 3, hidden=64, num_layers=6, source_layer=2,
                                    target_layer=4, model="gemma-3-270m"))
        with pytest.raises(BankError, match="made with gemma-3-270m, not with .* \\(--model\\): open it without --model"):
            backend.check_bank(named)


def test_stream_hands_over_every_piece_and_stops_when_asked(backend: Backend, bank_file: Path) -> None:
    bank = load_bank(bank_file)
    pieces: list[str] = []
    result = backend.stream(GenerationRequest(bank, Composition((1,)), SETTINGS), pieces.append, lambda: False)
    assert "".join(pieces) == result.text and result.text.strip()
    assert 0 < result.num_tokens <= 8 and not result.stopped and result.seconds > 0
    cut: list[str] = []
    stopped = backend.stream(GenerationRequest(bank, Composition((1,)), SETTINGS), cut.append, lambda: len(cut) >= 1)
    assert stopped.stopped and stopped.num_tokens < result.num_tokens


def test_steering_changes_the_completion_and_greedy_repeats_it(backend: Backend, bank_file: Path) -> None:
    bank = load_bank(bank_file)

    def text(target: Composition) -> str:
        return backend.stream(GenerationRequest(bank, target, SETTINGS), lambda _: None, lambda: False).text

    steered = text(Composition((5,), scale=4.0))
    assert steered == text(Composition((5,), scale=4.0))
    assert steered != text(UNSTEERED)


def test_metrics_are_the_requested_columns_one_value_per_row(backend: Backend, bank_file: Path) -> None:
    bank = load_bank(bank_file)
    progress: list[tuple[int, int]] = []
    names = ("kl", "kl_rev", "kl_unsteered", "sigma")
    measured = backend.metrics(MetricsRequest(bank, PROMPT, None, False, names), lambda: False, lambda d, t: progress.append((d, t)))
    values = measured.values
    assert {"kl", "kl_rev", "kl_unsteered"} <= set(values) <= set(names)
    assert all(len(column) == len(bank) and all(math.isfinite(v) for v in column) for column in values.values())
    assert values["kl"][0] == pytest.approx(0.0, abs=1e-5)  # KL of the base row to itself
    assert all(v >= -1e-6 for name in ("kl", "kl_rev", "kl_unsteered") for v in values[name])
    assert progress and progress[-1][0] == progress[-1][1]
    # the value to beat: no vector's KL to the base, on the same prompt (and no vector is 0 from itself)
    assert set(measured.unsteered) == set(values) and measured.unsteered["kl"] > 0
    assert measured.unsteered["kl_unsteered"] == pytest.approx(0.0, abs=1e-5)
    only = backend.metrics(MetricsRequest(bank, PROMPT, None, False, ("kl_unsteered",)), lambda: False, lambda d, t: None).values
    assert set(only) == {"kl_unsteered"} and only["kl_unsteered"] == pytest.approx(values["kl_unsteered"], rel=1e-4, abs=1e-6)


def test_a_stopped_measurement_returns_no_partial_column(backend: Backend, bank_file: Path) -> None:
    request = MetricsRequest(load_bank(bank_file), PROMPT, None, False, ("kl", "kl_unsteered"))
    assert backend.metrics(request, lambda: True, lambda d, t: None).values == {}


def test_target_metrics_of_a_composition(backend: Backend, bank_file: Path) -> None:
    bank = load_bank(bank_file)
    target = Composition((1, 2, 3))
    values = backend.target_metrics(bank, target, SETTINGS)
    assert values["norm"] == pytest.approx(float(compose(bank.vectors, target).norm()), rel=1e-5)
    assert values["kl"] >= 0 and values["kl_unsteered"] >= 0
    assert backend.target_metrics(bank, UNSTEERED, SETTINGS) == {}


def test_ortho_job_saves_a_bank_of_orthogonal_vectors(backend: Backend, bank_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "ortho.safetensors"
    done: list[int] = []
    model = backend.model_for(load_bank(bank_file))
    job = OrthoJob(model, load_bank(bank_file), bank_file, 1, 2, out)
    assert backend.estimate(job) > 0  # seconds per vector, timed
    summary = backend.run_ortho(job, lambda p: done.append(p.done), lambda: False)
    assert str(out) in summary and done and max(done) == 2
    made, parent = load_bank(out), load_bank(bank_file)
    assert len(made) == 3 and torch.equal(made.vectors[0], parent.vectors[1])  # row 0 = theta0
    assert made.meta.created_by == f"melbo-tui ortho {bank_file.resolve()} --base 1 --num-vectors 2 --out {out.resolve()}{_flags(backend, model)}"
    unit = made.vectors / made.vectors.norm(dim=1, keepdim=True)
    cos = unit @ unit.T - torch.eye(3)
    assert cos.abs().max() < 1e-3
    if isinstance(backend, EngineBackend):  # as `melbo-tui ortho` does: every row measured into the file
        assert made.metrics["kl_seq"].shape == (3,) and made.meta.extra["eval"]["prompt"] == PROMPT
    never = tmp_path / "never.safetensors"
    stopped = backend.run_ortho(OrthoJob(model, load_bank(bank_file), bank_file, 1, 2, never), lambda p: None, lambda: True)
    assert "stopped" in stopped and not never.exists()  # stopped before its first vector: no file


def _flags(backend: Backend, model: str) -> str:
    return "".join(f" {flag}" for flag in backend.model_flags(model))


def test_melbo_job_saves_vectors_of_the_radius(backend: Backend, bank_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "melbo.safetensors"
    model = backend.model_for(load_bank(bank_file))
    job = MelboJob(model=model, prompt=PROMPT, system=None, raw=False, source_layer=2, target_layer=4, radius=5.0, out=out,
                   count=2, steps=3, batch_vectors=2)
    assert backend.estimate(job) > 0
    summary = backend.run_melbo(job, lambda p: None, lambda: False)
    made = load_bank(out)
    assert "2 MELBO vectors" in summary and len(made) == 2 and made.meta.prompts == [PROMPT]
    assert made.vectors.norm(dim=1) == pytest.approx(torch.full((2,), 5.0), rel=1e-4)
    assert made.meta.created_by == job.command(backend.model_flags(model))
    never = replace(job, out=tmp_path / "never.safetensors")
    stopped = backend.run_melbo(never, lambda p: None, lambda: True)
    assert "nothing saved" in stopped and not never.out.exists()


def test_read_ahead_gives_the_streamed_text_and_yields_to_a_generation(backend: Backend, bank_file: Path) -> None:
    bank = load_bank(bank_file)
    targets = tuple(Composition((r,)) for r in (1, 2, 3, 4, 5))
    made: dict[Composition, str] = {}
    backend.complete(BatchRequest(bank, targets, SETTINGS), lambda t, r: made.setdefault(t, r.text), lambda: False)
    assert list(made) == list(targets)  # every one, in the order asked
    for target in targets[:2]:  # the batched text is the text a user would have streamed
        assert made[target] == backend.stream(GenerationRequest(bank, target, SETTINGS), lambda _: None, lambda: False).text
    nothing: list[Composition] = []
    backend.complete(BatchRequest(bank, targets, SETTINGS), lambda t, r: nothing.append(t), lambda: True)
    assert nothing == []  # asked to stop: nothing half-made is handed over


def test_a_completion_asked_for_cuts_the_read_ahead_short(backend: Backend, bank_file: Path) -> None:
    if isinstance(backend, ScriptedBackend):
        backend.batch_seconds = 0.05
    bank = load_bank(bank_file)
    targets = tuple(Composition((r % 6,), scale=1.0 + r / 100) for r in range(200))  # 50 batches: long enough to interrupt
    made: list[Composition] = []
    first = threading.Event()

    def completed(target: Composition, _result: object) -> None:
        made.append(target)
        first.set()

    reader = threading.Thread(target=backend.complete, args=(BatchRequest(bank, targets, SETTINGS), completed, lambda: False))
    reader.start()
    assert first.wait(60)
    asked = backend.stream(GenerationRequest(bank, Composition((2,)), SETTINGS), lambda _: None, lambda: False)
    reader.join(60)
    assert not reader.is_alive() and asked.text and not asked.stopped
    assert 0 < len(made) < len(targets) and len(made) % 4 == 0  # whole batches only, then it gave way


def test_a_waiting_generation_goes_before_the_next_measurement_chunk() -> None:
    turns = ModelTurns()
    order: list[str] = []
    holder_has_model, holder_may_go = threading.Event(), threading.Event()

    def long_chunk() -> None:
        with turns.measurement(lambda: False):
            holder_has_model.set()
            holder_may_go.wait(5)

    def generation() -> None:
        with turns.generation():
            order.append("generation")

    def next_chunk() -> None:
        with turns.measurement(lambda: False):
            order.append("measurement")

    holder = threading.Thread(target=long_chunk)
    holder.start()
    holder_has_model.wait(5)
    queued = [threading.Thread(target=generation), threading.Thread(target=next_chunk)]
    queued[0].start()
    while turns.waiting == 0:
        time.sleep(0.001)
    queued[1].start()
    time.sleep(0.05)
    holder_may_go.set()
    for thread in [holder, *queued]:
        thread.join(5)
    assert order == ["generation", "measurement"] and turns.waiting == 0


def test_the_waiting_count_is_exact_under_contention() -> None:
    """Many threads queueing generations at once leave the count at zero (it is changed under a lock)."""
    turns = ModelTurns()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        def work() -> None:
            for _ in range(2000):
                with turns.generation():
                    pass

        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        sys.setswitchinterval(interval)
    assert turns.waiting == 0


async def test_the_explorer_behaves_the_same_on_both(backend: Backend, bank_file: Path, tmp_path: Path) -> None:
    """Open, stream, measure, compose, compare: what a user does first, on each backend."""
    from melbo_tui.tui.app import ExplorerApp
    from melbo_tui.tui.components.compare_screen import CompareScreen

    from .conftest import panel_text, running, steered, wait_for

    app = ExplorerApp([bank_file], backend, cache_root=tmp_path / "cache", keymap={}, debounce=0.01,
                      generation=GenerationSettings(max_new_tokens=6), workspace=tmp_path)
    async with running(app) as (pilot, seen):
        view = app.main.view
        await wait_for(pilot, lambda: "tok/s]" in app.main.panel.text(0).note, timeout=30)  # row 0 streamed to its end
        assert steered(app).strip()
        await wait_for(pilot, lambda: view.has("kl"), timeout=30)  # an ortho bank without KL: measured on open
        assert view.value("kl", 0) == pytest.approx(0.0, abs=1e-5) and view.has("kl_rev")
        await pilot.press("j", "space", "space", "c")
        await wait_for(pilot, lambda: "mean[1,2] (k=2)" in panel_text(app) and "(this prompt)" in panel_text(app), timeout=30)
        await pilot.press("b")
        assert isinstance(app.screen, CompareScreen)
        panel = app.screen.panel
        await wait_for(pilot, lambda: all(panel.text(i).note.endswith("tok/s]") for i in range(len(panel.texts()))), timeout=60)
        assert len(set(panel.texts())) > 1  # the columns differ: steered, parts, unsteered, base
        assert not seen.errors()
