"""The attention sink: detected on a model whose first position is made massive, left out where it must be."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from conftest import tiny_model
from helpers_ortho import one_thread, random_bank  # noqa: F401 (autouse fixture)

from melbo_tui.errors import InputError
from melbo_tui.kinds import Objective
from melbo_tui.melbo import MelboConfig, MelboObjective
from melbo_tui.models import LoadedModel
from melbo_tui.ortho import OrthoLoss, _CachedForward
from melbo_tui.sink import SinkMode, SinkRule, detect_sink, select_positions
from melbo_tui.steering import run_to_layer

SINK_TOKEN = 95  # appears only at position 0 of `IDS`
IDS = torch.tensor([[SINK_TOKEN, 5, 17, 33, 8, 61, 12, 40, 3]])


@pytest.fixture
def sink_llama() -> LoadedModel:
    """A tiny Llama whose position-0 token has a 300x embedding: a massive activation all the way up, like SmolLM2's."""
    lm = tiny_model("llama")
    with torch.no_grad():
        lm.model.get_input_embeddings().weight[SINK_TOKEN] *= 300.0
    return lm


@contextmanager
def perturbed_at(lm: LoadedModel, layer: int, position: int, seed: int) -> Iterator[None]:
    """Add noise to block `layer`'s output at one position only (what the objective reads there)."""
    noise = torch.randn(lm.hidden_size, generator=torch.Generator().manual_seed(seed)) * 50.0

    def hook(_module: torch.nn.Module, _args: object, output: object) -> object:
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[:, position] += noise
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = lm.blocks[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def test_detection_rule() -> None:
    assert detect_sink(torch.tensor([25_040.0, 185.0, 170.0, 220.0])) == [0]
    assert detect_sink(torch.tensor([25_040.0, 185.0])) == [0]  # "the rest" excludes the candidate itself
    assert detect_sink(torch.tensor([100.0, 120.0, 90.0])) == []
    assert detect_sink(torch.tensor([5.0])) == []


def test_the_massive_first_position_is_found_at_the_target_layer(sink_llama: LoadedModel) -> None:
    with torch.no_grad():
        norms = run_to_layer(sink_llama, 2, IDS)[0].norm(dim=-1)
        plain = run_to_layer(tiny_model("llama"), 2, IDS)[0].norm(dim=-1)
    assert float(norms[0] / norms[1:].median()) > 10
    assert detect_sink(norms) == [0] and detect_sink(plain) == []
    positions = select_positions(norms, SinkRule(), slice(-3, None))
    assert positions.kept.tolist() == [6, 7, 8] and positions.excluded == ()  # a slice away from the sink needs no exclusion
    assert select_positions(norms, SinkRule()).excluded == (0,)
    assert select_positions(norms, SinkRule(SinkMode.KEEP)).kept.tolist() == list(range(9))
    with pytest.raises(InputError, match="no target position left"):
        select_positions(norms, SinkRule(), slice(0, 1))


def test_parse_and_describe() -> None:
    assert SinkRule.parse("keep").mode == SinkMode.KEEP and SinkRule.parse(" Exclude ").mode == SinkMode.EXCLUDE
    named = SinkRule.parse("0,-1")
    assert named.mode == SinkMode.POSITIONS and named.excluded(torch.ones(5)) == [0, 4]
    assert "10x the median" in SinkRule().describe()
    with pytest.raises(InputError, match="comma list of positions"):
        SinkRule.parse("first")


@pytest.mark.parametrize("objective", list(Objective))
def test_ortho_objective_ignores_an_excluded_position_and_sees_a_kept_one(sink_llama: LoadedModel, objective: Objective) -> None:
    theta0, thetas = random_bank(sink_llama, rows=3, norm=4.0).vectors.split([1, 2])
    values = {}
    for rule in (SinkRule(), SinkRule(SinkMode.KEEP)):
        loss = OrthoLoss(_CachedForward(sink_llama, 0, 2, [IDS]), objective, rule, theta0[0])
        before = loss.value(thetas)
        with perturbed_at(sink_llama, 2, position=0, seed=1):  # changes Z_0(theta) but not Z_0(theta0), fixed above
            after = loss.value(thetas)
        values[rule.mode] = (before, after)
    unchanged, changed = values[SinkMode.EXCLUDE], values[SinkMode.KEEP]
    torch.testing.assert_close(unchanged[0], unchanged[1])
    assert not torch.allclose(changed[0], changed[1], rtol=1e-3)


def test_melbo_objective_ignores_the_excluded_sink(sink_llama: LoadedModel) -> None:
    thetas = random_bank(sink_llama, rows=2, norm=4.0).vectors
    objective = MelboObjective(sink_llama, MelboConfig(0, 2, radius=4.0), [IDS])
    kept = MelboObjective(sink_llama, MelboConfig(0, 2, radius=4.0, sink=SinkRule(SinkMode.KEEP)), [IDS])
    assert objective.positions[0].excluded == (0,)
    with torch.no_grad():
        before, before_kept = objective.change(thetas), kept.change(thetas)
        with perturbed_at(sink_llama, 2, position=0, seed=2):
            after, after_kept = objective.change(thetas), kept.change(thetas)
    torch.testing.assert_close(before, after)
    assert not torch.allclose(before_kept, after_kept, rtol=1e-3)


def test_the_report_says_what_was_left_out_and_warns_when_a_kept_sink_dominates(sink_llama: LoadedModel) -> None:
    theta0 = random_bank(sink_llama, rows=1, norm=4.0).vectors[0]
    lines, reports = {}, {}
    for rule in (SinkRule(), SinkRule(SinkMode.KEEP), SinkRule.parse("1")):  # "1": named, but the sink is 0
        loss = OrthoLoss(_CachedForward(sink_llama, 0, 2, [IDS]), Objective.TOKENS, rule, theta0)
        with perturbed_at(sink_llama, 2, position=0, seed=3):  # theta0 moves the sink a lot, as on SmolLM2 (6,600 vs ~60)
            loss.base = [loss.forward.hidden(theta0[None], 0)[0]]
        reports[rule.mode] = loss.report()
        lines[rule.mode] = reports[rule.mode].lines()
    assert all(report.detected == [[0]] for report in reports.values())
    excluded = lines[SinkMode.EXCLUDE]
    assert len(excluded) == 1 and "excluded position(s) 0" in excluded[0] and "%" in excluded[0]
    assert reports[SinkMode.EXCLUDE].kept_sink_share == 0.0
    assert reports[SinkMode.KEEP].kept_sink_share > 0.5
    assert any(line.startswith("warning: position(s) 0 hold") for line in lines[SinkMode.KEEP])
    named = lines[SinkMode.POSITIONS]
    assert named[0].startswith("sink: excluded position(s) 1 ")
    assert any(line.startswith("warning: position(s) 0 hold") for line in named[1:])


@contextmanager
def induced_sink(lm: LoadedModel, layer: int, position: int, direction: torch.Tensor) -> Iterator[None]:
    """Block `layer` makes `position` massive when the residual there leans along `direction`.

    A stand-in for what 2 of the 32 vectors of the shipped MELBO bank do on SmolLM2 (positions
    1-5 grow to ~18,000 against ~185): the base vector, not the prompt, creates the sink.
    """
    unit = direction / direction.norm()

    def hook(_module: torch.nn.Module, _args: object, output: object) -> object:
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        lean = torch.relu(hidden[:, position] @ unit - 0.5 * float(direction.norm()))  # [B]: 0 unless steered along `direction`
        hidden[:, position] += 2000.0 * lean[:, None] * unit
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = lm.blocks[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def test_a_sink_the_base_induces_is_left_out_too(sink_llama: LoadedModel) -> None:
    theta0 = random_bank(sink_llama, rows=1, norm=8.0).vectors[0]
    with induced_sink(sink_llama, 1, position=4, direction=theta0):  # block 1 reads block 0 + theta
        with torch.no_grad():
            unsteered = run_to_layer(sink_llama, 2, IDS)[0].norm(dim=-1)
        assert detect_sink(unsteered) == [0]  # the prompt alone has only the first-token sink
        default = OrthoLoss(_CachedForward(sink_llama, 0, 2, [IDS]), Objective.TOKENS, SinkRule(), theta0)
        kept = OrthoLoss(_CachedForward(sink_llama, 0, 2, [IDS]), Objective.TOKENS, SinkRule(SinkMode.KEEP), theta0)
        assert float(default.base[0][0, 4].norm()) > 10 * float(default.base[0][0, 1:4].norm(dim=-1).median())
        assert default.positions[0][0].excluded == (0, 4)
        assert kept.positions[0][0].excluded == ()
        report = default.report()
        assert "excluded position(s) 0,4" in report.lines()[0]
        # vectors orthogonal to theta0 do not lean along it: the induced position holds the kept objective alone
        others = random_bank(sink_llama, rows=2, norm=8.0).vectors
        others = others - (others @ theta0)[:, None] * theta0 / theta0.norm() ** 2
        with torch.no_grad():
            z = _CachedForward(sink_llama, 0, 2, [IDS]).hidden(others, 0)[:, 0]  # [K, T, d]
        per_position = (z - kept.base[0][0]).pow(2).sum(dim=-1)  # [K, T]
        assert (per_position[:, 4] / per_position[:, 1:].sum(dim=1) > 0.9).all()
    values = {"metrics": select_positions(unsteered, SinkRule(), base_norms=default.base[0][0].norm(dim=-1))}
    assert values["metrics"].excluded == (0, 4)


def test_only_a_reference_base_decides_which_positions_eval_compares(sink_llama: LoadedModel) -> None:
    """Row 0 of an ortho bank is theta0, whose sinks are left out; row 0 of a MELBO bank is just another vector."""
    from melbo_tui.metrics import evaluate_bank

    banks = {kind: random_bank(sink_llama, rows=3, norm=8.0, target=2, kind=kind) for kind in ("ortho", "melbo")}
    theta0 = banks["ortho"].vectors[0]
    assert torch.equal(theta0, banks["melbo"].vectors[0])
    with induced_sink(sink_llama, 1, position=4, direction=theta0):
        records = {kind: evaluate_bank(sink_llama, bank, IDS, "p", None, True).meta.extra["eval"] for kind, bank in banks.items()}
    assert records["ortho"]["excluded_positions"] == [0, 4] and records["ortho"]["base_sinks"] is True
    assert records["melbo"]["excluded_positions"] == [0] and records["melbo"]["base_sinks"] is False
    assert 4 in records["melbo"]["compared_positions"]


def test_melbo_resume_reads_the_rule_by_its_positions_not_its_wording() -> None:
    """A MELBO bank made before the rule's text mentioned induced sinks resumes; another ratio or mode does not."""
    older = {**SinkRule().record(), "rule": "exclude positions with unsteered target-layer norm > 10x the median of the others"}
    assert SinkRule().same_positions(older)
    assert not SinkRule(ratio=5.0).same_positions(older)
    assert not SinkRule(SinkMode.KEEP).same_positions(older)
    assert SinkRule.parse("0,1").same_positions(SinkRule.parse("0,1").record())
    assert not SinkRule.parse("0,1").same_positions(SinkRule.parse("0").record())


def test_a_named_position_outside_the_prompt_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"sink position\(s\) 99 outside a prompt of 9 tokens"):
        SinkRule.parse("0,99").excluded(torch.ones(9))
    assert SinkRule.parse("-1").excluded(torch.ones(9)) == [8]


@pytest.mark.parametrize("target_tokens, warned", [(":", True), ("-3:", False)])
def test_a_kept_sink_outside_the_target_tokens_is_not_warned_about(sink_llama: LoadedModel, target_tokens: str,
                                                                   warned: bool) -> None:
    """`--sink keep --target-tokens -3:` never compares position 0, so it must not be called most of the objective."""
    thetas = random_bank(sink_llama, rows=2, norm=4.0).vectors
    config = MelboConfig(0, 2, radius=4.0, sink=SinkRule(SinkMode.KEEP), target_tokens=target_tokens)
    objective = MelboObjective(sink_llama, config, [IDS])
    with perturbed_at(sink_llama, 2, position=0, seed=4):  # the sink's change dwarfs the rest, as on SmolLM2
        report = objective.report(thetas)
    assert report.detected == [[0]]
    assert report.kept_sinks == ([[0]] if warned else [[]])
    assert any(line.startswith("warning: position(s) 0 hold") for line in report.lines()) == warned
