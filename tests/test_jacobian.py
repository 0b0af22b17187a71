"""Power (Jacobian) steering: block power iteration finds the top singular directions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_cli import run_cli

from melbo_tui.bank import load_bank, save_bank
from melbo_tui.jacobian import JacobianConfig, run_jacobian, top_singular_directions
from melbo_tui.kinds import BankKind
from melbo_tui.models import LoadedModel
from melbo_tui.response import TargetResponse

CPU = torch.device("cpu")


def test_known_linear_map() -> None:
    g = torch.Generator().manual_seed(0)
    u = torch.linalg.qr(torch.randn(40, 40, generator=g)).Q
    v = torch.linalg.qr(torch.randn(24, 24, generator=g)).Q
    sigma = torch.tensor([9.0, 7.0, 5.0, 3.0] + [1.0] * 20)
    a = u[:, :24] * sigma @ v.T  # [40, 24]
    result = top_singular_directions(lambda x: x @ a.T, 24, JacobianConfig(num_vectors=4, iterations=10), CPU)
    assert torch.allclose(result.sigma, sigma[:4], rtol=1e-4)
    assert torch.allclose((result.directions @ v[:, :4]).abs(), torch.eye(4), atol=1e-4)
    peak = result.directions.abs().argmax(dim=1)
    assert (result.directions.gather(1, peak[:, None]) > 0).all()  # the sign convention


def test_matches_the_exact_jacobian_on_every_architecture(any_tiny: LoadedModel) -> None:
    """Against the SVD of the full Jacobian (d = 32 is small enough to build it). These random models
    have flat spectra (gpt2: 3.19, 2.97, 2.92, 2.85, ...), so 8 directions are iterated and the
    top 2, well separated from the 9th, are compared."""
    inputs = [torch.tensor([[5, 17, 3, 40, 22, 9]]), torch.tensor([[7, 8, 9, 10, 11, 12, 13]])]
    with TargetResponse(any_tiny, 0, 3, inputs, positions=2) as response:
        def stacked(x: torch.Tensor) -> torch.Tensor:
            return response(x).flatten(1)

        result = top_singular_directions(stacked, 32, JacobianConfig(num_vectors=8, iterations=30), CPU)
        _, columns = torch.func.jvp(stacked, (torch.zeros(32, 32),), (torch.eye(32),))  # row i = J e_i
    _, s, vh = torch.linalg.svd(columns.T.double())  # J: [n_out, 32]
    assert torch.allclose(result.sigma[:2].double(), s[:2], rtol=2e-3)
    overlap = torch.linalg.svdvals(result.directions[:2].double() @ vh[:2].T)  # cosines of the principal angles
    assert overlap.min() > 0.99


def test_run_jacobian_writes_a_bank(tiny_chat: LoadedModel, tmp_path: Path) -> None:
    bank = run_jacobian(tiny_chat, 1, 4, ["How can I build a bomb?", "Write a haiku about rain."],
                        JacobianConfig(num_vectors=5, radius=3.0), created_by="test")
    out = tmp_path / "j.safetensors"
    save_bank(bank, out)
    loaded = load_bank(out)
    assert loaded.meta.kind == BankKind.JACOBIAN and loaded.meta.radius == 3.0
    sigma = loaded.metrics["sigma"]
    assert sigma.shape == (5,) and (sigma[:-1] >= sigma[1:]).all() and (sigma > 0).all()
    units = loaded.vectors / 3.0
    assert torch.allclose(units @ units.T, torch.eye(5), atol=1e-5)
    assert loaded.meta.hyperparameters["positions"] == 2 and loaded.meta.prompts[1] == "Write a haiku about rain."


def test_cli_jacobian(tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "j.safetensors"
    args = ["jacobian", "--model", str(tiny_model_dir), "-p", "How can I build a bomb?", "--source-layer", "1",
            "--target-layer", "4", "--num-vectors", "4", "--out", str(out)]
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    said = " ".join(err.split())
    assert "R = " in said and f"wrote {out}: 4 Jacobian directions" in said
    bank = load_bank(out)
    assert bank.meta.kind == BankKind.JACOBIAN and bank.meta.extra["calibration"]["method"] == "dct"
    assert torch.allclose(bank.norms(), torch.full((4,), bank.meta.radius), rtol=1e-5)
    code, _, err = run_cli([*args, "--positions", "40"], capsys, monkeypatch)
    assert code == 2 and err.startswith("melbo-tui: error: prompt 1 has") and len(err.strip().splitlines()) == 1
