"""``export``: build the reference model from a :class:`ModelConfig`, export it, re-check it."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from exporters.config import OnnxConfig, TorchScriptConfig

from .checkpoint import build_model, config_for_checkpoint
from .config import ModelConfig, check_backbone_scale_for
from .errors import ExportError, UsageError
from .paths import check_output_file

FORMATS = ("onnx", "torchscript")
REPORT_SCHEMA_VERSION = 1
# Re-check at the trace size against eager PyTorch (fp32 only; onnxruntime's CPU fp16
# kernels are not accurate enough for a parity check, see docs/export.md). Looser than the
# test tolerance: this catches a broken graph, `bgm-deploy verify` does the parity claim.
RECHECK_TOLERANCE = 1e-3

Progress = Callable[[str], None]


@dataclass
class ExportReport:
    """What :func:`export` did, serialisable to JSON."""

    path: str
    format: str
    size_bytes: int
    model_config: dict[str, Any]
    export: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    recheck_max_abs_diff: dict[str, float] | None = None
    schema_version: int = REPORT_SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "path": self.path,
            "format": self.format,
            "size_bytes": self.size_bytes,
            "model_config": self.model_config,
            "export": self.export,
            "seconds": self.seconds,
            "warnings": self.warnings,
            "recheck_max_abs_diff": self.recheck_max_abs_diff,
        }


def _recheck_onnx(path: Path, model: torch.nn.Module, config: OnnxConfig, names: tuple[str, ...]) -> dict[str, float]:
    import numpy as np
    import onnxruntime

    from exporters.config import output_names
    from exporters.onnx import example_inputs

    src, bgr = example_inputs(config, torch.float32, seed=3)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {"src": src.numpy(), "bgr": bgr.numpy()})
    with torch.no_grad():
        every = model(src, bgr)
    kind = "refine" if len(every) == 6 else "base"
    reference = dict(zip(output_names(kind), every))
    return {name: float(np.abs(value - reference[name].numpy()).max()) for name, value in zip(names, got)}


def export(
    model_config: ModelConfig,
    output: str | Path,
    format: str = "onnx",  # noqa: A002 - the CLI option's name
    onnx: OnnxConfig | None = None,
    torchscript: TorchScriptConfig | None = None,
    checkpoint: str | Path | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> ExportReport:
    """Builds the model, exports it to ``output`` and re-checks the file.

    Args:
        model_config: the model to build; with ``checkpoint`` its sha256 is recorded.
        output: destination file, written atomically.
        format: ``"onnx"`` or ``"torchscript"``.
        onnx: ONNX settings (default :class:`OnnxConfig`).
        torchscript: TorchScript settings (default :class:`TorchScriptConfig`).
        checkpoint: official/compatible checkpoint; None uses synthetic weights from
            ``model_config.seed``.
        progress: called with one line per stage.
        overwrite: replace an existing ``output`` (default: refuse, nothing is lost).

    Returns:
        :class:`ExportReport`.

    Raises:
        UsageError, CheckpointError, ExportError: see the message.
    """
    from exporters.onnx import onnx_from_torch
    from exporters.torchscript import torchscript_from_torch

    say = progress or (lambda _message: None)
    if format not in FORMATS:
        raise UsageError(f"format={format!r} is not valid; valid: {', '.join(FORMATS)}")
    output = Path(output)
    # Paths first: the output may never be the checkpoint, nor an existing file unasked.
    check_output_file(output, "output", inputs=[("--checkpoint", checkpoint)], overwrite=overwrite)
    if checkpoint is not None:
        model_config = config_for_checkpoint(model_config, checkpoint)
    # Check the export settings before the (slow) model build.
    onnx_config = onnx or OnnxConfig()
    script_config = torchscript or TorchScriptConfig()
    if format == "onnx":
        onnx_config.check_for(model_config.model_type, model_config.refine_patch_crop_method)
        check_backbone_scale_for(model_config.backbone_scale, *onnx_config.trace_resolution)
    else:
        script_config.output_names(model_config.model_type)

    start = time.perf_counter()
    model = build_model(model_config, checkpoint)
    build_seconds = time.perf_counter() - start
    say(f"build: {model_config.backbone} {model_config.model_type}, weights {model_config.weights_label} ({build_seconds:.1f} s)")

    if format == "onnx":
        result = onnx_from_torch(model, model_config, onnx_config, output, progress)
        recheck: dict[str, float] | None = None
        if onnx_config.precision == "fp32":
            recheck = _recheck_onnx(result.path, model, onnx_config, result.outputs)
            worst = max(recheck.values())
            say(f"re-check: onnxruntime vs PyTorch at the trace size, max abs diff {worst:.2g}")
            if worst > RECHECK_TOLERANCE:
                result.path.unlink()
                raise ExportError(
                    f"the exported model differs from PyTorch by {worst:.3g} (> {RECHECK_TOLERANCE}); file removed; "
                    "re-run with --debug and report it"
                )
        else:
            result.warnings.append("fp16 model: parity re-check skipped on CPU (run `bgm-deploy verify` on a GPU)")
    else:
        result = torchscript_from_torch(model, model_config, script_config, output, progress)
        recheck = None
    assert result.metadata is not None  # set by both exporters on success
    seconds = {"build": build_seconds, **result.seconds}
    return ExportReport(
        path=str(result.path),
        format=format,
        size_bytes=result.size_bytes,
        model_config=model_config.to_dict(),
        export=result.metadata.export,
        seconds=seconds,
        warnings=list(result.warnings),
        recheck_max_abs_diff=recheck,
    )


def export_engine(
    output: str | Path,
    engine: Any = None,
    model_config: ModelConfig | None = None,
    onnx: OnnxConfig | None = None,
    checkpoint: str | Path | None = None,
    from_onnx: str | Path | None = None,
    progress: Progress | None = None,
) -> Any:
    """Builds a TensorRT engine (UNVERIFIED on hardware: no GPU was available in development).

    Either from an existing bgm-deploy ONNX file (``from_onnx``), or by first exporting
    ``model_config`` to a TensorRT-safe ONNX (``target="tensorrt"``) in a temporary folder.
    TensorRT and a GPU are checked first, so a machine without them fails at once.

    Args:
        engine: an :class:`exporters.tensorrt.EngineConfig` (default: fp32, preset from the model).

    Returns:
        The :class:`exporters.tensorrt.EngineInfo` of the written engine.

    Raises:
        RuntimeUnavailableError: no TensorRT or no GPU here.
    """
    import tempfile

    from exporters.tensorrt import EngineConfig, engine_from_onnx, import_tensorrt, require_gpu

    engine = engine or EngineConfig()
    import_tensorrt()
    require_gpu(engine.device_id)
    if from_onnx is not None:
        return engine_from_onnx(from_onnx, engine, output, progress)
    if model_config is None:
        raise UsageError("export_engine needs model_config= or from_onnx=")
    onnx_config = dataclasses.replace(onnx or OnnxConfig(), target="tensorrt", precision="fp32")
    with tempfile.TemporaryDirectory(prefix="bgm-engine-") as folder:
        source = Path(folder) / "model.onnx"
        export(model_config, source, "onnx", onnx=onnx_config, checkpoint=checkpoint, progress=progress, overwrite=True)
        return engine_from_onnx(source, engine, output, progress)


def tensorrt_preflight(path: str | Path) -> Any:
    """The TensorRT preflight report of an exported ONNX file (``exporters.preflight``)."""
    from exporters.preflight import preflight_onnx

    return preflight_onnx(path, target="tensorrt")
