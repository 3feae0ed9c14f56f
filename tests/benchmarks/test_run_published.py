"""The published-results script: headline ratio and README section (no benchmark is run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import run_published
from bgm_deploy.bench.report import BenchReport, BenchResult, SkippedBackend
from bgm_deploy.bench.stats import summarize


def _row(backend: str, backbone: str, size: tuple[int, int], ms: float) -> BenchResult:
    return BenchResult(
        backend=backend, provider="p", backbone=backbone, backbone_scale=0.25, sample_pixels=80_000,
        width=size[0], height=size[1], batch=1, precision="fp32", mode="fixed", scope="compute",
        stats=summarize([ms / 1e3] * 3),
    )


def _report(onnx_ms: float) -> BenchReport:
    hd = (1920, 1080)
    onnx = _row("onnx-cpu", "mobilenetv2", hd, onnx_ms)
    # 20 GFLOP/frame at a 200 GFLOP/s peak: a 100 ms floor
    onnx = type(onnx)(**{**onnx.__dict__, "flops": 20 * 10**9, "achieved_gflops": 20 / (onnx_ms / 1e3),
                         "peak_fraction": 100.0 / onnx_ms})
    results = [_row("eager", "mobilenetv2", hd, 650.0), onnx, _row("onnx-original", "mobilenetv2", hd, 400.0),
               _row("onnx-cpu", "resnet50", hd, 100.0)]
    env = {"cpu": "Test CPU", "cpu_count": 2, "gpu": None, "platform": "linux", "python": "3", "torch": "t", "onnxruntime": "o"}
    return BenchReport(results, [SkippedBackend("tensorrt", "fp32", "no CUDA device")], env, {"threads": 2})


@pytest.mark.parametrize(("onnx_ms", "original", "floor"), [
    (150.0, "meets the ≤ 0.5x original", "meets the ≤ 1.5x floor"),
    (190.0, "meets the ≤ 0.5x original", "does NOT meet the ≤ 1.5x floor"),
    (240.0, "does NOT meet the ≤ 0.5x original", "does NOT meet the ≤ 1.5x floor"),
])
def test_headline_ratios_and_verdicts(onnx_ms: float, original: str, floor: str) -> None:
    text = run_published.headline(_report(onnx_ms))
    assert f"{onnx_ms / 400.0:.3f}x the original project's ONNX recipe (400.0 ms)" in text
    assert f"{onnx_ms / 100.0:.2f}x the FLOP floor (100.0 ms)" in text and f"{onnx_ms / 650.0:.3f}x eager" in text
    assert original in text and floor in text


def test_noisy_rows_invalidate_the_headline() -> None:
    report = _report(300.0)
    report.results[2] = type(report.results[2])(**{**report.results[2].__dict__, "stats": summarize([0.3, 0.4, 0.5])})
    assert "not a valid measurement" in run_published.headline(report)  # the original's row is noisy
    assert "not a valid measurement" not in run_published.headline(_report(300.0))


def test_section_says_when_no_gpu_was_available(tmp_path: Path) -> None:
    text = run_published.section(_report(300.0), 330.0)
    assert text.startswith(run_published.START) and text.endswith(run_published.END)
    assert "No GPU was available" in text and "skipped tensorrt (fp32): no CUDA device" in text
    assert "5.5 min" in text and "| onnx-cpu | mobilenetv2 0.25/80k |" in text


def test_quick_suites_are_small() -> None:
    (suite,) = run_published.suites(quick=True)
    assert suite.resolution == (320, 256) and suite.timing.iterations == 1
    full = run_published.suites(quick=False)
    assert {(s.backbone, s.resolution) for s in full} == {
        ("mobilenetv2", (1920, 1080)), ("resnet50", (1920, 1080)), ("mobilenetv2", (3840, 2160)), ("resnet50", (3840, 2160))
    }
