"""Row selections (`1:11`, `0,3,7`) and compositions (mean, sum, mean x sqrt(k))."""

from __future__ import annotations

import math

import pytest
import torch

from melbo_tui.compose import ComposeMode, Composition, compose
from melbo_tui.errors import InputError
from melbo_tui.selection import format_rows, parse_selection


@pytest.mark.parametrize(
    ("spec", "rows"),
    [("1:11", list(range(1, 11))), ("0,3,7", [0, 3, 7]), ("1:4,9", [1, 2, 3, 9]), ("-3:", [17, 18, 19]),
     ("::5", [0, 5, 10, 15]), ("2,2,1:3", [2, 1]), ("-1", [19])],
)
def test_python_slice_semantics(spec: str, rows: list[int]) -> None:
    assert parse_selection(spec, 20) == rows


@pytest.mark.parametrize(("spec", "message"), [("", "empty selection"), ("20", "out of range"), ("a", "not an index"),
                                               ("1:1", "selects no rows"), ("::0", "step cannot be zero"), ("1,,2", "empty item")])
def test_bad_selections(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_selection(spec, 20)


def test_compose_modes() -> None:
    vectors = torch.eye(4) * 2.0  # four orthogonal vectors of norm 2
    rows = (0, 1, 2, 3)
    mean = compose(vectors, Composition(rows, ComposeMode.MEAN))
    assert torch.allclose(mean, torch.full((4,), 0.5))
    assert torch.allclose(compose(vectors, Composition(rows, ComposeMode.SUM)), torch.full((4,), 2.0))
    # mean x sqrt(k) of k orthogonal equal-norm vectors keeps the norm of one of them
    assert math.isclose(compose(vectors, Composition(rows, ComposeMode.MEAN_SQRT)).norm().item(), 2.0, rel_tol=1e-6)
    assert torch.allclose(compose(vectors, Composition((1,), scale=-3.0)), torch.tensor([0.0, -6.0, 0.0, 0.0]))


def test_non_finite_scale_is_refused() -> None:
    with pytest.raises(InputError, match="finite"):
        compose(torch.eye(3), Composition((0,), scale=float("nan")))


def test_labels_are_short() -> None:
    assert Composition((5,)).label == "vector 5"
    assert Composition(tuple(range(1, 11)) + (20,), ComposeMode.MEAN_SQRT, 2.0).label == "mean-sqrt[1:11,20] x2"


@pytest.mark.parametrize(("rows", "text"), [((1, 2, 3, 7), "1:4,7"), ((1, 2, 9), "1,2,9"), ((5,), "5"), ((3, 2, 1), "3,2,1"),
                                            ((0, 1, 2, 3, 10, 11, 12), "0:4,10:13"), ((), "")])
def test_format_rows_is_the_short_form_parse_selection_reads_back(rows: tuple[int, ...], text: str) -> None:
    assert format_rows(rows) == text
    if rows:
        assert parse_selection(text, 20) == list(rows)


def test_a_composition_names_unsteered_one_row_and_many_rows() -> None:
    assert Composition().label == "unsteered" and not Composition().steered
    assert Composition((5,), ComposeMode.SUM).label == "vector 5"  # every mode of one row is the row itself
    assert Composition((1, 2, 3, 7), "sum", 2).label == "sum[1:4,7] x2"  # plain values become the enum and a float
    assert Composition((5,), "mean-sqrt").key() == Composition((5,)).key() == "mean:5:x1.0"
    assert Composition((1, 2), ComposeMode.SUM).key() != Composition((1, 2)).key()
    assert Composition((1,), scale=2.0).key() != Composition((1,)).key()
    assert Composition().key() == "unsteered"
