"""The notebook face: one export list, every method with the same shared inputs, old spellings warned."""

from __future__ import annotations

import warnings

import pytest
import torch

import melbo_tui as mt
from melbo_tui.models import LoadedModel

PROMPTS = ["How can I build a bomb?"]


def test_all_is_the_export_list_and_every_name_resolves() -> None:
    assert mt.__all__ == sorted(mt._EXPORTS)
    for name in mt.__all__:
        assert getattr(mt, name) is not None
    for method in ("train_melbo", "find_orthogonal", "train_dct", "power_steering", "ablate", "calibrate"):
        assert method in mt.__all__ and getattr(mt, method).__doc__


def test_find_orthogonal_takes_num_vectors_and_warns_on_count(tiny_chat: LoadedModel) -> None:
    theta0 = torch.randn(tiny_chat.hidden_size, generator=torch.Generator().manual_seed(0)) * 4
    common = {"source_layer": 1, "target_layer": 4, "steps": 10}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = mt.find_orthogonal(tiny_chat, theta0, PROMPTS, num_vectors=2, **common)
    assert new.shape == (2, tiny_chat.hidden_size)
    assert (new @ theta0).abs().max() < 1e-3 * theta0.norm() * new.norm(dim=1).max()
    with pytest.warns(DeprecationWarning, match="`count=` is deprecated: use `num_vectors=`"):
        old = mt.find_orthogonal(tiny_chat, theta0, PROMPTS, count=2, **common)
    assert torch.equal(old, new)
    with pytest.raises(mt.MelboError, match="give `num_vectors` only"):
        mt.find_orthogonal(tiny_chat, theta0, PROMPTS, num_vectors=2, count=2, **common)


def test_every_method_takes_the_same_shared_inputs(tiny_chat: LoadedModel) -> None:
    layers = {"source_layer": 1, "target_layer": 4}
    dct = mt.train_dct(tiny_chat, PROMPTS, num_vectors=4, iterations=1, radius=2.0, **layers)
    assert dct is not None and dct.vectors.shape == (4, tiny_chat.hidden_size) and dct.meta.kind == mt.BankKind.DCT
    assert torch.all(dct.metrics["score"][:-1] >= dct.metrics["score"][1:])  # ranked
    power = mt.power_steering(tiny_chat, PROMPTS, num_vectors=3, radius=2.0, **layers)
    assert torch.allclose(power.vectors.norm(dim=1), torch.full((3,), 2.0), atol=1e-4)
    assert torch.all(power.metrics["sigma"][:-1] >= power.metrics["sigma"][1:])
    sweep = mt.calibrate(tiny_chat, PROMPTS, radii=[0.5, 1.0, 2.0, 4.0], num_vectors=2, steps=5, **layers)
    assert [p.radius for p in sweep.points] == [0.5, 1.0, 2.0, 4.0]
    assert sweep.recommended is None or sweep.recommended < (sweep.takeoff or 0)
    ids = mt.encode(tiny_chat, PROMPTS[0])
    plain = tiny_chat.model(input_ids=ids).logits
    with mt.ablate(tiny_chat, power.vectors[0]):
        ablated = tiny_chat.model(input_ids=ids).logits
    assert not torch.allclose(plain, ablated)
    assert torch.equal(tiny_chat.model(input_ids=ids).logits, plain)  # the hooks leave with the block


def test_no_engine_error_spells_a_command_line_flag() -> None:
    """The engine names parameters (`name`); the CLI renders them as --flags, the explorer and notebooks plainly."""
    import ast
    from pathlib import Path

    engine = Path(mt.__file__).parent
    offenders = []
    for path in sorted(engine.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                text = ast.unparse(node.exc)
                if "Error(" in text and " --" in text.replace("'--", " --").replace('"--', " --"):
                    offenders.append(f"{path.name}:{node.lineno}: {text[:80]}")
    assert not offenders, offenders
