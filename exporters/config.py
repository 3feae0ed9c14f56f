"""Frozen export configs: one per format, with input/output names and dynamic axes as data.

Input and output names, their layouts and the names of their symbolic dimensions depend
on the model type only, so they live here as tables (like optimum's ``OnnxConfig``) and
not in the exporter code. Symbolic dimensions:

* ``batch`` — every tensor.
* ``height`` / ``width`` — full-resolution tensors (``src``, ``bgr``, ``pha``, ``fgr``,
  and every MattingBase output).
* ``height_sm`` / ``width_sm`` — the coarse outputs of MattingRefine (``pha_sm``,
  ``fgr_sm``, ``err_sm``): ``floor(H * backbone_scale)``.
* ``height_q`` / ``width_q`` — the quarter-resolution refinement map ``ref_sm``: ``H / 4``.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.errors import UsageError
from model.spec import MAX_SIDE, OUTPUT_NAMES

# Channels of every tensor; the other three dimensions are symbolic (see SPATIAL_AXES).
CHANNELS: dict[str, int] = {
    "src": 3, "bgr": 3, "pha": 1, "fgr": 3, "err": 1, "hid": 32,
    "pha_sm": 1, "fgr_sm": 3, "err_sm": 1, "ref_sm": 1,
}  # fmt: skip
FULL_AXES = ("height", "width")
SPATIAL_AXES: dict[str, tuple[str, str]] = {
    "pha_sm": ("height_sm", "width_sm"),
    "fgr_sm": ("height_sm", "width_sm"),
    "err_sm": ("height_sm", "width_sm"),
    "ref_sm": ("height_q", "width_q"),
}
BATCH_AXIS = "batch"

EXPORTERS = ("legacy", "dynamo")
PRECISIONS = ("fp32", "fp16")
TARGETS = ("generic", "tensorrt")
# The dynamo exporter implements opset 18+ only: asked for 17 it exports 18 and tries onnx's
# version converter, which fails on this model and silently leaves opset 18 in the file, so
# lower opsets are refused instead. The legacy exporter goes from 13 (ScatterElements,
# TopK with a tensor K) to 20.
OPSET_RANGE: dict[str, tuple[int, int]] = {"legacy": (13, 20), "dynamo": (18, 23)}
# The opset used when none is given (the CLI's --opset default), per exporter.
DEFAULT_OPSET: dict[str, int] = {"legacy": 17, "dynamo": 18}
# RoiAlign's coordinate_transformation_mode (needed for aligned=False crops) is opset 16.
MIN_OPSET_ROI_ALIGN = 16
DEFAULT_EXPORTER = "legacy"
# Patch crop/replace methods per format when the model config leaves them unset. ONNX:
# RoiAlign + ScatterElements (batch-correct, unlike the original's ONNX path; the fast
# rewrites build on RoiAlign); TorchScript keeps the reference model's own unfold + scatter_nd.
PATCH_METHODS: dict[str, tuple[str, str]] = {
    "onnx": ("roi_align", "scatter_element"),
    "torchscript": ("unfold", "scatter_nd"),
}
# Trace size of an ONNX export when neither the config nor a target resolution gives one.
DEFAULT_TRACE_RESOLUTION = (320, 256)


def output_names(model_type: str) -> tuple[str, ...]:
    """All output names of a model type, in the order the model returns them."""
    if model_type not in OUTPUT_NAMES:
        raise UsageError(f"model_type={model_type!r} is not valid; valid: {', '.join(OUTPUT_NAMES)}")
    return OUTPUT_NAMES[model_type]


def tensor_axes(name: str) -> tuple[str | int, ...]:
    """``(batch, channels, height-name, width-name)`` of an input or output tensor."""
    height, width = SPATIAL_AXES.get(name, FULL_AXES)
    return (BATCH_AXIS, CHANNELS[name], height, width)


def dynamic_axes(names: tuple[str, ...]) -> dict[str, dict[int, str]]:
    """``{tensor: {axis: symbolic name}}`` for the legacy exporter and for renaming graphs."""
    return {name: {axis: dim for axis, dim in enumerate(tensor_axes(name)) if isinstance(dim, str)} for name in names}


def _check_outputs(outputs: tuple[str, ...] | None) -> None:
    if outputs is None:
        return
    if not outputs:
        raise UsageError("outputs=() is not valid; name at least one output (e.g. pha,fgr) or leave it unset")
    if len(set(outputs)) != len(outputs):
        raise UsageError(f"outputs={','.join(outputs)} is not valid; each output may be named once")


@dataclass(frozen=True)
class OnnxConfig:
    """How to export an ONNX file.

    Attributes:
        opset: ONNX opset (legacy 13..20, dynamo 18..23; roi_align crops need 16+); None:
            the exporter's default (``DEFAULT_OPSET``: legacy 17, dynamo 18).
        exporter: ``"legacy"`` (TorchScript-based) or ``"dynamo"`` (torch.export-based).
        precision: ``"fp32"`` or ``"fp16"`` (fp16 weights, activations *and* inputs/outputs;
            RoiAlign boxes stay float32).
        simplify: run onnxsim (falls back to the unsimplified graph with a warning).
        outputs: output names to keep (the rest is pruned from the graph); None keeps all.
        trace_batch: batch size of the example inputs used for tracing.
        trace_resolution: ``(width, height)`` of the example inputs, divisible by 4; None:
            the export's target resolution if one is given, else ``DEFAULT_TRACE_RESOLUTION``.
        target: ``"generic"`` or ``"tensorrt"`` (applies the TensorRT-safe patches).
    """

    opset: int | None = None
    exporter: str = DEFAULT_EXPORTER
    precision: str = "fp32"
    simplify: bool = True
    outputs: tuple[str, ...] | None = None
    trace_batch: int = 1
    trace_resolution: tuple[int, int] | None = None
    target: str = "generic"

    def __post_init__(self) -> None:
        if self.exporter not in EXPORTERS:
            raise UsageError(f"exporter={self.exporter!r} is not valid; valid: {', '.join(EXPORTERS)}")
        if self.opset is None:  # each exporter has its own default (dynamo cannot write < 18)
            object.__setattr__(self, "opset", DEFAULT_OPSET[self.exporter])
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision={self.precision!r} is not valid; valid: {', '.join(PRECISIONS)}")
        if self.target not in TARGETS:
            raise UsageError(f"target={self.target!r} is not valid; valid: {', '.join(TARGETS)}")
        if self.trace_batch < 1:
            raise UsageError(f"trace_batch={self.trace_batch} is not valid; it must be >= 1")
        if self.trace_resolution is None:
            return _check_outputs(self.outputs)
        width, height = self.trace_resolution
        # Named as the CLI option, which sets it.
        if not (64 <= width <= MAX_SIDE and 64 <= height <= MAX_SIDE) or width % 4 or height % 4:
            raise UsageError(
                f"--resolution (trace size) {width}x{height} is not valid; width and height must be in 64..{MAX_SIDE} "
                "and divisible by 4"
            )
        _check_outputs(self.outputs)

    def check_for(self, model_type: str, crop_method: str) -> None:
        """Raises :class:`UsageError` if this config cannot export that model."""
        low, high = OPSET_RANGE[self.exporter]
        opset = self.opset
        if not low <= opset <= high:
            raise UsageError(
                f"opset={opset} is not valid for exporter={self.exporter}; valid: {low}..{high} "
                f"(e.g. --opset {DEFAULT_OPSET[self.exporter]})"
            )
        if model_type == "refine" and crop_method == "roi_align" and opset < MIN_OPSET_ROI_ALIGN:
            raise UsageError(
                f"opset={opset} is too old for RoiAlign with output_half_pixel coordinates (crop method roi_align); "
                f"use --opset {MIN_OPSET_ROI_ALIGN} or newer"
            )
        self.output_names(model_type)

    def output_names(self, model_type: str) -> tuple[str, ...]:
        """The outputs the exported graph will have, in order."""
        every = output_names(model_type)
        if self.outputs is None:
            return every
        unknown = [name for name in self.outputs if name not in every]
        if unknown:
            raise UsageError(
                f"outputs={','.join(self.outputs)} is not valid for a {model_type} model: unknown {', '.join(unknown)}; "
                f"valid: {', '.join(every)}"
            )
        return self.outputs

    @property
    def io_dtype(self) -> str:
        return "float16" if self.precision == "fp16" else "float32"


@dataclass(frozen=True)
class TorchScriptConfig:
    """How to export a scripted TorchScript file.

    Attributes:
        precision: ``"fp32"`` or ``"fp16"`` (fp16 weights and fp16 inputs/outputs).
        outputs: output names the scripted ``forward`` returns, in order; None keeps all.
    """

    precision: str = "fp32"
    outputs: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision={self.precision!r} is not valid; valid: {', '.join(PRECISIONS)}")
        _check_outputs(self.outputs)

    def output_names(self, model_type: str) -> tuple[str, ...]:
        return OnnxConfig(outputs=self.outputs).output_names(model_type)

    @property
    def io_dtype(self) -> str:
        return "float16" if self.precision == "fp16" else "float32"
