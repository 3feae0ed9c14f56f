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
    results = [_row("eager", "mobilenetv2", hd, 650.0), _row("onnx-cpu", "mobilenetv2", hd, onnx_ms),
               _row("onnx-cpu", "resnet50", hd, 100.0)]
    env = {"cpu": "Test CPU", "cpu_count": 2, "gpu": None, "platform": "linux", "python": "3", "torch": "t", "onnxruntime": "o"}
    return BenchReport(results, [SkippedBackend("tensorrt", "fp32", "no CUDA device")], env, {"threads": 2})


@pytest.mark.parametrize(("onnx_ms", "verdict"), [(300.0, "which meets"), (330.0, "which does NOT meet")])
def test_headline_ratio_and_verdict(onnx_ms: float, verdict: str) -> None:
    text = run_published.headline(_report(onnx_ms))
    assert f"ratio {onnx_ms / 650.0:.3f}" in text and verdict in text


def test_noisy_rows_invalidate_the_headline() -> None:
    report = _report(300.0)
    report.results[1] = _row("onnx-cpu", "mobilenetv2", (1920, 1080), 300.0)
    report.results[1] = type(report.results[1])(**{**report.results[1].__dict__, "stats": summarize([0.2, 0.3, 0.4])})
    assert "not a valid measurement" in run_published.headline(report)
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
