"""`bgm-deploy export --format tensorrt` / `--target tensorrt` wiring (CPU-side behaviour)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from bgm_deploy.cli import cli


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_format_tensorrt_without_gpu_is_one_clear_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["export", "--format", "tensorrt", "-o", str(tmp_path / "m.engine")])
    assert result.exit_code == 2, result.output
    assert "Error:" in result.output and ("TensorRT" in result.output or "GPU" in result.output)
    assert "Traceback" not in result.output
    assert not list(tmp_path.iterdir())


def test_from_onnx_needs_format_tensorrt(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["export", "--format", "onnx", "-o", str(tmp_path / "m.onnx"),
                                      "--from-onnx", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2 and "--from-onnx" in result.output


def test_target_tensorrt_runs_the_preflight(tmp_path: Path) -> None:
    out = tmp_path / "trt.onnx"
    result = CliRunner().invoke(cli, ["-q", "export", "--format", "onnx", "-o", str(out), "--target", "tensorrt",
                                      "--resolution", "320x256", "--refine-sample-pixels", "80000"])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output and out.is_file()
