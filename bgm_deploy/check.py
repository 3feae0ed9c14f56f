"""``bgm-deploy check``: deployment preflight of an exported model, without the target hardware."""

from __future__ import annotations

from pathlib import Path

from exporters.paths import check_output_file
from exporters.preflight import DEFAULT_MIN_TENSORRT, PreflightReport, preflight_onnx


def check(
    model: str | Path,
    target: str = "tensorrt",
    min_tensorrt: str = DEFAULT_MIN_TENSORRT,
    json_path: str | Path | None = None,
) -> PreflightReport:
    """Runs the preflight of ``target`` on an ONNX file.

    Args:
        model: ``.onnx`` file (export one with ``bgm-deploy export --format onnx``).
        target: deployment target; ``"tensorrt"``.
        min_tensorrt: oldest TensorRT version the model must build with.
        json_path: also write the report there as JSON (atomically).

    Returns:
        The report; ``report.ok`` is False when a finding blocks the target (the CLI then
        exits 1).

    Raises:
        UsageError: unknown target/version, or not an ONNX file.
        ModelFileError: missing or unreadable file.
    """
    if json_path is not None:  # before the work: never replace the model, never lose the report
        check_output_file(json_path, "--json", inputs=[("MODEL", model)])
    report = preflight_onnx(model, target=target, min_tensorrt=min_tensorrt)
    if json_path is not None:
        report.write_json(json_path)
    return report
