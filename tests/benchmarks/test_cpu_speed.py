"""benchmarks/cpu_speed.py end to end on a small size: every graph exported, equal to eager
PyTorch, timed in one run, the report written. Timings are not asserted."""

from __future__ import annotations

import json

from benchmarks.cpu_speed import main


def test_smoke_run_writes_every_graph_with_parity(tmp_path, capsys) -> None:
    out = tmp_path / "s.json"
    assert main(["--cases", "hd-mobilenetv2", "--size", "320x256", "--rounds", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (case,) = result["cases"]
    graphs = {row["graph"]: row for row in case["graphs"]}
    assert list(graphs) == ["original", "reference", "previous", "+fixed-weights", "default"]
    assert graphs["original"]["vs_original"] == 1.0 and graphs["previous"]["vs_previous"] == 1.0
    for row in graphs.values():
        # 320x256 refines 5,000 of 5,120 cells, many tied at zero error: "warn" is the explained tie
        assert row["verdict"] in ("pass", "warn")
        assert row["vs_floor"] > 0
    assert case["floor_ms"] > 0 and case["gflops"] > 0 and result["peak_gflops"] > 0
    assert "| default |" in capsys.readouterr().out
