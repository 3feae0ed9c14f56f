"""Reports: JSON schema and round trip, terminal table, markdown and PNG files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from bgm_deploy.bench.report import (
    REPORT_SCHEMA_VERSION,
    BenchReport,
    BenchResult,
    SkippedBackend,
    StageResult,
    render_table,
    write_atomic,
    write_json,
    write_markdown,
    write_plot,
)
from bgm_deploy.bench.stats import summarize
from bgm_deploy.environment import environment_info
from model.errors import UsageError


def _result(backend: str, times: list[float], speedup: float | None, **extra: object) -> BenchResult:
    return BenchResult(
        backend=backend, provider="CPUExecutionProvider", backbone="mobilenetv2", backbone_scale=0.25,
        sample_pixels=80_000, width=1920, height=1080, batch=1, precision="fp32", mode="fixed",
        scope=str(extra.pop("scope", "compute")), stats=summarize(times), speedup_vs_eager=speedup, **extra,  # type: ignore[arg-type]
    )


@pytest.fixture()
def report() -> BenchReport:
    stages = (StageResult("decode", summarize([0.01, 0.01]), 0.25), StageResult("infer", summarize([0.03, 0.03]), 0.75))
    results = [
        _result("eager", [0.6, 0.62, 0.64], 1.0, flops=19_500_000_000, achieved_gflops=31.5, peak_fraction=0.5),
        _result("onnx-cpu", [0.2, 0.3, 0.25], 2.48),
        _result("onnx-cpu", [0.04, 0.04], None, scope="end-to-end", stages=stages, refined_fraction=0.0386),
    ]
    env = environment_info()
    env["threads"] = 2
    return BenchReport(
        results=results,
        skipped=[SkippedBackend("onnx-cuda", "fp32", "no CUDA device (torch.cuda.is_available() is False)")],
        environment=env,
        settings={"threads": 2, "timing": "warmup 3 calls, 10 iterations", "mode": "fixed"},
        peak_gemm={"cpu": {"device": "cpu", "size": 2048, "threads": 2, "gflops": 63.0}},
        warnings=["onnx-cpu ...: CV 0.20 > 0.1"],
    )


def test_json_schema_and_round_trip(report: BenchReport, tmp_path: Path) -> None:
    path = write_json(report, tmp_path / "out" / "bench.json")
    data = json.loads(path.read_text())
    assert data["schema_version"] == REPORT_SCHEMA_VERSION
    assert set(data) == {"schema_version", "environment", "settings", "peak_gemm", "results", "skipped", "warnings"}
    for key in ("cpu", "cpu_count", "threads", "gpu", "cuda_version", "torch", "onnxruntime", "tensorrt", "platform"):
        assert key in data["environment"]
    row = data["results"][0]
    for key in ("min_ms", "mean_ms", "median_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "std_ms", "cv", "fps"):
        assert isinstance(row["stats"][key], float)
    assert data["results"][2]["stages"][1]["stage"] == "infer"
    assert data["skipped"][0]["reason"].startswith("no CUDA device")
    assert BenchReport.from_dict(data).to_dict() == report.to_dict()


def test_newer_schema_is_rejected(report: BenchReport) -> None:
    data = report.to_dict()
    data["schema_version"] = REPORT_SCHEMA_VERSION + 1
    with pytest.raises(UsageError, match="schema_version"):
        BenchReport.from_dict(data)


def test_table_lists_rows_skips_stages_and_warnings(report: BenchReport) -> None:
    table = render_table(report)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["backend", "model", "resolution"]
    assert any(line.startswith("onnx-cpu") and "2.48x" in line and "250.0" in line for line in lines)
    assert "skipped onnx-cuda (fp32): no CUDA device" in table
    assert "decode 10.0 ms (25%), infer 30.0 ms (75%)" in table
    assert "50.0% of measured peak" in table
    assert "warning: onnx-cpu" in table
    assert "3.86%" in table  # refined fraction


def test_markdown_and_plot_files(report: BenchReport, tmp_path: Path) -> None:
    markdown = write_markdown(report, tmp_path / "bench.md").read_text()
    assert markdown.startswith("| backend | model |")
    table_lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(table_lines) == 1 + len(report.results)
    assert "Machine:" in markdown and report.environment["cpu"] in markdown
    plot = write_plot(report, tmp_path / "bench.png")
    with Image.open(plot) as image:
        assert image.format == "PNG"
        assert image.height > 40 * len(report.results)
        # Both bar colours are drawn.
        colours = {colour for _, colour in image.convert("RGB").getcolors(1 << 16)}
        assert (52, 101, 164) in colours and (245, 121, 0) in colours
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.md", "bench.png"]  # no temp files left


def test_plot_without_results_is_an_error(report: BenchReport, tmp_path: Path) -> None:
    report.results = []
    with pytest.raises(UsageError, match="nothing to plot"):
        write_plot(report, tmp_path / "empty.png")


def test_write_atomic_replaces(tmp_path: Path) -> None:
    target = tmp_path / "x.txt"
    target.write_text("old")
    write_atomic(target, b"new")
    assert target.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]
