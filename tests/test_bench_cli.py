"""``bgm-deploy bench`` on a tiny resolution: one default run shared by the tests.

Timings are never asserted; what is checked is what the run must produce whatever the
machine: rows for the usable backends, skipped backends with a reason, exactly
``sample_pixels`` refined in fixed mode, per-stage end-to-end results and report files.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from bgm_deploy.bench import BenchConfig, bench, parse_resolution, parse_warmup, split_list
from bgm_deploy.bench.harness import TimingConfig
from bgm_deploy.cli import cli
from model.errors import UsageError
from runtimes.targets import targets

WIDTH, HEIGHT = 160, 128
SAMPLE_PIXELS = 320  # 20 cells of the 40x32 quarter-resolution grid
# The legacy exporter takes ~1 s where the dynamo one takes ~35 s; the graphs are checked elsewhere.
TINY = ["--resolution", f"{WIDTH}x{HEIGHT}", "--sample-pixels", str(SAMPLE_PIXELS), "--warmup", "0", "--iterations", "2",
        "--onnx-exporter", "legacy"]


@pytest.fixture(scope="session")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``bgm-deploy bench`` without MODEL or --backend: every usable backend, one run."""
    out = tmp_path_factory.mktemp("bench")
    args = ["bench", *TINY, "--end-to-end", "--workdir", str(out / "work"),
            "--json", str(out / "r.json"), "--markdown", str(out / "r.md"), "--plot", str(out / "r.png")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return {"out": out, "output": result.output, "report": json.loads((out / "r.json").read_text())}


def _rows(report: dict[str, Any], scope: str) -> dict[str, dict[str, Any]]:
    return {r["backend"]: r for r in report["results"] if r["scope"] == scope}


def test_default_run_compares_the_usable_backends(default_run: dict[str, Any]) -> None:
    report = default_run["report"]
    compute = _rows(report, "compute")
    assert {"eager", "torchscript", "onnx-cpu", "onnx-original"} <= set(compute)
    assert compute["eager"]["speedup_vs_eager"] == pytest.approx(1.0)
    # the original project's ONNX recipe is the baseline of every row's "vs original"
    assert compute["onnx-original"]["speedup_vs_original"] == pytest.approx(1.0)
    assert compute["onnx-original"]["provider"] == "CPUExecutionProvider"
    ratio = compute["onnx-original"]["stats"]["median_ms"] / compute["onnx-cpu"]["stats"]["median_ms"]
    assert compute["onnx-cpu"]["speedup_vs_original"] == pytest.approx(ratio)
    assert f"onnx-cpu mobilenetv2 {WIDTH}x{HEIGHT}: latency {1 / ratio:.3f}x the original" in default_run["output"]
    assert "x the floor)" in default_run["output"]
    assert compute["onnx-cpu"]["provider"] == "CPUExecutionProvider"
    for row in compute.values():
        assert (row["width"], row["height"], row["mode"], row["precision"]) == (WIDTH, HEIGHT, "fixed", "fp32")
        assert row["stats"]["iterations"] == 2 and row["speedup_vs_eager"] > 0
        assert row["flops"] > 0 and 0 < row["peak_fraction"]
    if not torch.cuda.is_available():
        skipped = {s["backend"]: s["reason"] for s in report["skipped"]}
        assert set(skipped) >= {"onnx-cuda", "onnx-tensorrt", "tensorrt"}
        assert all(len(reason) > 10 for reason in skipped.values())  # each says why
        assert "skipped onnx-cuda (fp32): CUDAExecutionProvider compiled in, not usable: no GPU" in default_run["output"]
    # Every target of the registry with a bench row is either timed or skipped with its reason.
    listed = set(compute) | {s["backend"] for s in report["skipped"]}
    assert listed >= {t.bench for t in targets() if t.bench is not None}


def test_fixed_mode_refines_exactly_the_sample_budget(default_run: dict[str, Any]) -> None:
    cells = (WIDTH // 4) * (HEIGHT // 4)
    for row in default_run["report"]["results"]:
        assert row["refined_fraction"] == pytest.approx((SAMPLE_PIXELS // 16) / cells)


def test_end_to_end_reports_every_stage(default_run: dict[str, Any]) -> None:
    rows = _rows(default_run["report"], "end-to-end")
    assert {"eager", "onnx-cpu"} <= set(rows)
    for row in rows.values():
        assert [s["stage"] for s in row["stages"]] == ["decode", "preprocess", "infer", "postprocess", "encode"]
        assert sum(s["share"] for s in row["stages"]) == pytest.approx(1.0)


def test_report_files_and_environment(default_run: dict[str, Any]) -> None:
    report, out = default_run["report"], default_run["out"]
    assert report["schema_version"] == 1
    assert report["environment"]["threads"] == report["settings"]["threads"] >= 1
    assert report["environment"]["cpu"] and report["peak_gemm"]["cpu"]["gflops"] > 0
    assert (out / "r.md").read_text().startswith("| backend |")
    assert (out / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "median ms" in default_run["output"].splitlines()[0] or "median ms" in default_run["output"]


def test_bench_an_exported_file(default_run: dict[str, Any]) -> None:
    onnx_files = sorted((default_run["out"] / "work").glob("*.onnx"))
    assert onnx_files, "the default run keeps its exports in --workdir"
    result = CliRunner().invoke(cli, ["-q", "bench", str(onnx_files[0]), *TINY, "--backend", "onnx-cpu", "--no-flops"])
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.output.splitlines()[2:4]] == ["eager", "onnx-cpu"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_explicit_unusable_backend_exits_2_with_one_line() -> None:
    result = CliRunner().invoke(cli, ["bench", *TINY, "--backend", "eager,onnx-cuda"])
    assert result.exit_code == 2
    assert result.output.strip().startswith(
        "Error: backend 'onnx-cuda' (fp32) cannot run on this machine: CUDAExecutionProvider compiled in, not usable: "
        "no GPU: torch.cuda.is_available() is False"
    ) and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("option", "fragment"),
    [(["--resolution", "161x128"], "divisible by 4"), (["--backend", "onnx-gpu"], "valid: onnx-cpu"),
     (["--warmup", "three"], "warmup='three'"), (["--backbone", "vgg"], "backbone='vgg'")],
)
def test_invalid_options_exit_2(option: list[str], fragment: str) -> None:
    result = CliRunner().invoke(cli, ["bench", *TINY, *option])
    assert result.exit_code == 2 and fragment in result.output and "Traceback" not in result.output


def test_adaptive_mode_through_the_api() -> None:
    config = BenchConfig(backends=("eager",), resolutions=((WIDTH, HEIGHT),), mode="adaptive",
                         timing=TimingConfig(0, 3), count_flops=False, sample_pixels=SAMPLE_PIXELS)
    report = bench(config)
    (row,) = report.results
    assert row.mode == "adaptive" and row.stats.iterations == 3
    # Adaptive keeps prevent_oversampling: never more than the budget, content decides.
    assert 0 <= row.refined_fraction <= (SAMPLE_PIXELS // 16) / ((WIDTH // 4) * (HEIGHT // 4))


def test_parsers() -> None:
    assert parse_resolution("HD") == (1920, 1080) and parse_resolution("4k") == (3840, 2160)
    assert parse_resolution("1280x720") == (1280, 720)
    assert parse_warmup("3") == 3 and parse_warmup("2.5s") == 2.5 and parse_warmup("1.0") == 1.0
    assert split_list(("eager,onnx-cpu", "torchscript", "")) == ("eager", "onnx-cpu", "torchscript")
    with pytest.raises(UsageError, match="WIDTHxHEIGHT"):
        parse_resolution("big")
