"""`melbo-tui doctor`: the environment and quick parity checks on this machine's model."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from melbo_tui.cli.app import app
from melbo_tui.cli.options import (
    DeterministicOpt,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    OffloadOpt,
    RevisionOpt,
    ThreadsOpt,
    TrustOpt,
    check_output,
    err,
    open_model,
)


@app.command()
def doctor(
    source_layer: Annotated[int | None, typer.Option(help="Source layer of the generation and KV-cache checks (default ~L/3).")] = None,
    target_layer: Annotated[int | None, typer.Option(help="Layer of the massive-activation scan (default ~2L/3).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the report to this file.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    model: ModelOpt = None, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto", trust_remote_code: TrustOpt = False,
    revision: RevisionOpt = None, threads: ThreadsOpt = None, offload_folder: OffloadOpt = None,
    deterministic: DeterministicOpt = False,
) -> None:
    """Print the environment and check, on this model and machine, that steering is computed right.

    Checks (PASS/FAIL with numbers): block discovery; steered forward with vs without the KV
    cache; the prefix cache vs the full forward at every source layer; steering survives the
    generation path; bf16 vs fp32 KL ranking (bf16/fp16 models). Also lists massive-activation
    positions of the chat template. Exit status 1 when a check fails. Paste the output into a
    bug report.
    """
    from melbo_tui.doctor import Status, run_doctor, summary
    from melbo_tui.models import ModelRequest
    from melbo_tui.steering import check_layer

    if out is not None:
        check_output(out)
    lm = open_model(ModelRequest(model, device, dtype, trust_remote_code, revision, threads, offload_folder, deterministic))
    for layer, what in ((source_layer, "source layer"), (target_layer, "target layer")):
        if layer is not None:
            check_layer(lm, layer, what)
    with err.status("checking ...") as status:
        report = run_doctor(lm, source_layer, target_layer,
                            on_check=lambda c: status.update(f"checking: {c.name} {c.status.value} ..."))
    text = json.dumps(summary(report), indent=2) + "\n" if as_json else report.render()
    print(text, end="")
    if out is not None:
        from melbo_tui.atomic import atomic_write_text

        atomic_write_text(out, text)
        err.print(f"wrote {out}")
    if any(c.status is Status.FAIL for c in report.checks):
        sys.exit(1)  # SystemExit passes through click untouched; typer.Exit's code would be lost
