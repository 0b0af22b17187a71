"""The latency probe the benchmark calls returns sane numbers (small run here)."""

from __future__ import annotations

from melbo_tui.benchmarks.tui_latency import measure_key_latency


def test_latency_probe_measures_key_to_frame_under_streaming() -> None:
    report = measure_key_latency(presses=20, rows=2048)
    assert report.presses == 20 and report.rows == 2048
    assert 0 < report.median_ms <= report.p95_ms <= report.max_ms
    assert report.pieces_streamed > 0  # the generation really ran while keys were pressed
    assert 0 < report.first_frame_ms < report.table_ready_ms


def test_benchmark_entry_point_returns_plain_numbers(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from melbo_tui.benchmarks import tui_latency as latency

    asked = []

    def fake(presses: int) -> latency.LatencyReport:
        asked.append(presses)
        return latency.LatencyReport(presses, 2048, 40.0, 70.0, 90.0, 100.0, 800.0, 12)

    monkeypatch.setattr(latency, "measure_key_latency", fake)
    numbers = latency.measure_latency(quick=True)
    assert asked == [50] and numbers["median_ms"] == 40.0 and numbers["p95_ms"] == 70.0 and numbers["rows"] == 2048
    latency.measure_latency()
    assert asked[-1] == 200
