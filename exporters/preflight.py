"""TensorRT preflight: finds, in an ONNX graph and without a GPU, what breaks TensorRT.

:func:`preflight_onnx` walks the graph once and returns a :class:`PreflightReport` of
:class:`Finding` s, each with a severity (``blocking`` / ``warning`` / ``info``), the op
and node concerned, what is wrong and a concrete fix. The rules encode the documented
limits of TensorRT's ONNX parser (onnx-tensorrt's operator support matrix, TensorRT
8.2-10.x):

* ``TopK``: ``K`` must be a constant (an initializer) and ``K <= 3840``. BGMv2's sampling
  mode has ``K = sample_pixels // 16``: 5,000 with the HD preset, 20,000 with the 4K one.
* ``RoiAlign`` and ``NonZero`` need TensorRT >= 8.5; ``ScatterND`` / ``ScatterElements``
  >= 8.2.
* TensorRT 8.x narrows INT64 tensors to INT32 (clamping); TensorRT >= 9 supports INT64.
* TensorRT 10.0's parser accepts opsets 9-20 (8.5: up to 17).
* A handful of ops have no TensorRT importer at all, and some inputs (Slice/Squeeze/
  Unsqueeze axes, CumSum axis) must be constants.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from exporters.atomic import atomic_write_text
from model.errors import ModelFileError, UsageError

PREFLIGHT_SCHEMA_VERSION = 1
SEVERITIES = ("blocking", "warning", "info")
TARGETS = ("tensorrt",)
DEFAULT_MIN_TENSORRT = "10.0"

# TensorRT's TopK limit; the TensorRT-safe selection (exporters.tensorrt_safe) exists because of it.
TOPK_MAX_K = 3840
OPSET_MIN = 9
OPSET_RECOMMENDED_MIN = 13
OPSET_MAX_TRT10 = 20
# TensorRT version that first imports each op (onnx-tensorrt support matrices).
OP_MIN_TENSORRT = {"RoiAlign": (8, 5), "NonZero": (8, 5), "ScatterND": (8, 2), "ScatterElements": (8, 2)}
# Ops without any TensorRT importer (onnx-tensorrt support matrix, TensorRT 8.5-10).
UNSUPPORTED_OPS = frozenset(
    {
        "BitShift", "BlackmanWindow", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det",
        "DynamicQuantizeLinear", "HammingWindow", "HannWindow", "Hardmax", "MatMulInteger", "MaxRoiPool",
        "MaxUnpool", "MelWeightMatrix", "Multinomial", "NegativeLogLikelihoodLoss", "Optional",
        "OptionalGetElement", "OptionalHasElement", "QLinearConv", "QLinearMatMul", "STFT", "SequenceAt",
        "SequenceConstruct", "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength",
        "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringNormalizer", "TfIdfVectorizer",
        "Unique",
    }
)  # fmt: skip
# (op, input index) pairs that TensorRT's parser requires to be constants.
CONSTANT_INPUTS = {("Slice", 3): "axes", ("Squeeze", 1): "axes", ("Unsqueeze", 1): "axes", ("CumSum", 1): "axis"}
RESIZE_MODES = frozenset({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"})
_INT64 = 7  # onnx.TensorProto.INT64
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class Finding:
    """One problem (or notable fact) in a graph for a deployment target.

    Attributes:
        severity: ``"blocking"`` (the engine will not build or will be wrong),
            ``"warning"`` (builds, but check the noted behaviour) or ``"info"``.
        code: stable identifier of the rule, e.g. ``"topk-k-too-large"``.
        op: ONNX op type concerned (``""`` for graph-level findings).
        node: node name (or tensor name for type findings; ``""`` for graph-level).
        message: what is wrong, with the values found.
        fix: a concrete change that removes the finding.
    """

    severity: str
    code: str
    op: str
    node: str
    message: str
    fix: str

    def describe(self) -> str:
        where = f"{self.op} {self.node!r}: " if self.op else ""
        return f"[{self.severity}] {where}{self.message} Fix: {self.fix}"


@dataclass
class PreflightReport:
    """The findings of one preflight run; serialises to JSON with ``schema_version``."""

    model: str
    target: str
    min_tensorrt: str
    opset: int | None
    op_counts: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    @property
    def blocking(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "blocking"]

    @property
    def ok(self) -> bool:
        """True when nothing blocks the target."""
        return not self.blocking

    def codes(self) -> set[str]:
        return {f.code for f in self.findings}

    def summary(self) -> str:
        counts = Counter(f.severity for f in self.findings)
        verdict = "OK" if self.ok else "BLOCKED"
        return (
            f"{verdict}: {self.model} for {self.target} >= {self.min_tensorrt}: "
            + ", ".join(f"{counts.get(s, 0)} {s}" for s in SEVERITIES)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": PREFLIGHT_SCHEMA_VERSION,
            "model": self.model,
            "target": self.target,
            "min_tensorrt": self.min_tensorrt,
            "opset": self.opset,
            "ok": self.ok,
            "op_counts": dict(sorted(self.op_counts.items())),
            "findings": [asdict(f) for f in self.findings],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def write_json(self, path: str | Path) -> Path:
        """Writes the report atomically (temp file in the same directory, then rename)."""

        return atomic_write_text(path, self.to_json() + "\n")


def parse_version(text: str) -> tuple[int, int]:
    """``"10.0"`` / ``"8.5.3"`` → ``(10, 0)`` / ``(8, 5)``."""
    parts = str(text).split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise UsageError(f"min_tensorrt={text!r} is not valid; give a version such as 8.5 or 10.0") from None


def _load(model: Any) -> tuple[Any, str]:
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model, getattr(model.graph, "name", "") or "<model>"
    path = Path(model)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist")
    if path.suffix.lower() != ".onnx":
        raise UsageError(f"preflight reads ONNX graphs; {path} is not a .onnx file (export it with --format onnx first)")
    try:
        return onnx.load(str(path), load_external_data=False), str(path)
    except Exception as exc:  # onnx raises DecodeError and friends without a common base
        raise ModelFileError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from None


def _constants(graph: Any) -> dict[str, Any]:
    """Tensor name → numpy value for initializers and Constant-node outputs."""
    from onnx import numpy_helper

    values: dict[str, Any] = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
                elif attr.name in ("value_int", "value_ints"):
                    import numpy as np

                    values[node.output[0]] = np.array(attr.i if attr.name == "value_int" else list(attr.ints))
    return values


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for attr in node.attribute:
        if attr.name == name:
            value = onnx.helper.get_attribute_value(attr)
            return value.decode() if isinstance(value, bytes) else value
    return default


def preflight_onnx(model: Any, target: str = "tensorrt", min_tensorrt: str = DEFAULT_MIN_TENSORRT) -> PreflightReport:
    """Checks an ONNX graph for constructs TensorRT rejects or changes.

    Args:
        model: path to a ``.onnx`` file, or an ``onnx.ModelProto``.
        target: deployment target; only ``"tensorrt"``.
        min_tensorrt: oldest TensorRT version the graph must build with (``"8.5"``, ``"10.0"``).

    Returns:
        The report; ``report.ok`` is False when a finding is blocking.

    Raises:
        UsageError: unknown target or version string, or a file that is not ONNX.
        ModelFileError: missing or unreadable file.
    """
    if target not in TARGETS:
        raise UsageError(f"target={target!r} is not valid; valid: {', '.join(TARGETS)}")
    trt_version = parse_version(min_tensorrt)
    proto, name = _load(model)
    graph = proto.graph
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    report = PreflightReport(name, target, min_tensorrt, opset, dict(Counter(n.op_type for n in graph.node)))
    add = report.findings.append
    constants = _constants(graph)

    _check_opset(opset, trt_version, add)
    for node in graph.node:
        label = node.name or (node.output[0] if node.output else "")
        if node.domain not in ("", "ai.onnx"):
            add(Finding("blocking", "custom-domain-op", node.op_type, label,
                        f"op of domain {node.domain!r} has no TensorRT importer.",
                        "register a TensorRT plugin for it, or re-export without the custom op."))  # fmt: skip
            continue
        op = node.op_type
        if op == "TopK":
            _check_topk(node, label, constants, add)
        if op in UNSUPPORTED_OPS:
            add(Finding("blocking", "unsupported-op", op, label, f"TensorRT's ONNX parser has no importer for {op}.",
                        f"rewrite the model without {op} (an export patch), or implement a TensorRT plugin."))  # fmt: skip
        if op in OP_MIN_TENSORRT:
            _check_op_version(op, label, trt_version, add)
        if op == "Resize":
            mode = _attr(node, "coordinate_transformation_mode", "half_pixel")
            if mode not in RESIZE_MODES:
                add(Finding("blocking", "resize-mode", op, label,
                            f"Resize coordinate_transformation_mode={mode!r} is not supported by TensorRT "
                            f"(supported: {', '.join(sorted(RESIZE_MODES))}).",
                            "use align_corners=False/True bilinear or nearest resizing in the model."))  # fmt: skip
        for (const_op, index), what in CONSTANT_INPUTS.items():
            if op == const_op and len(node.input) > index and node.input[index] and node.input[index] not in constants:
                add(Finding("blocking", "non-constant-input", op, label,
                            f"{op}'s {what} input {node.input[index]!r} is computed at run time; TensorRT needs a constant.",
                            "simplify the graph (onnxsim / constant folding) so that it becomes an initializer."))  # fmt: skip
    _check_int64(proto, trt_version, constants, add)
    _check_dynamic_inputs(graph, add)
    return report


def _check_opset(opset: int | None, trt_version: tuple[int, int], add: Any) -> None:
    if opset is None:
        add(Finding("blocking", "opset-missing", "", "", "the model declares no default-domain opset.",
                    "re-export the model with torch.onnx.export(..., opset_version=17)."))  # fmt: skip
        return
    top = OPSET_MAX_TRT10 if trt_version >= (10, 0) else 17
    if opset < OPSET_MIN:
        add(Finding("blocking", "opset-too-old", "", "", f"opset {opset} is older than TensorRT's parser accepts ({OPSET_MIN}+).",
                    "re-export with --opset 17."))  # fmt: skip
    elif opset < OPSET_RECOMMENDED_MIN:
        add(Finding("warning", "opset-old", "", "",
                    f"opset {opset} predates opset 13 (attribute-form axes for Squeeze/Unsqueeze/ReduceSum/Split, "
                    "old Resize); TensorRT imports it, but the exporter's modern lowering and RoiAlign's "
                    "coordinate_transformation_mode (opset 16) are not available.",
                    "re-export with --opset 17."))  # fmt: skip
    elif opset > top:
        add(Finding("warning", "opset-new", "", "",
                    f"opset {opset} is newer than TensorRT {trt_version[0]}.{trt_version[1]}'s parser documents "
                    f"(up to {top}); parsing may fail with 'No importer registered' for ops changed since.",
                    f"re-export with --opset {min(17, top)}, or use a newer TensorRT."))  # fmt: skip


def _check_topk(node: Any, label: str, constants: dict[str, Any], add: Any) -> None:
    k_name = node.input[1] if len(node.input) > 1 else ""
    if k_name not in constants:
        add(Finding("blocking", "topk-k-not-constant", "TopK", label,
                    f"TopK's K ({k_name!r}) is computed at run time; TensorRT's parser requires K to be an initializer.",
                    "export with --target tensorrt (the TopK-free TensorRT-safe selection), or make K a constant."))  # fmt: skip
    else:
        k = int(constants[k_name].reshape(-1)[0])
        if k > TOPK_MAX_K:
            add(Finding("blocking", "topk-k-too-large", "TopK", label,
                        f"TopK with K={k:,} exceeds TensorRT's limit of K <= {TOPK_MAX_K} (BGMv2's sampling mode has "
                        f"K = sample_pixels // 16; this is sample_pixels ~ {k * 16:,}).",
                        f"export with --target tensorrt (the TopK-free TensorRT-safe selection, same cells), or lower "
                        f"refine_sample_pixels to <= {TOPK_MAX_K * 16:,}."))  # fmt: skip
    if _attr(node, "sorted", 1) == 0:
        add(Finding("info", "topk-unsorted", "TopK", label,
                    "TopK asks for unsorted results; TensorRT always returns them sorted and may choose other "
                    "elements among ties than onnxruntime or PyTorch.",
                    "nothing to do for a set selection; compare selected sets, not orders, when verifying."))  # fmt: skip


def _check_op_version(op: str, label: str, trt_version: tuple[int, int], add: Any) -> None:
    need = OP_MIN_TENSORRT[op]
    need_text = f"{need[0]}.{need[1]}"
    if trt_version < need:
        add(Finding("blocking", "op-needs-newer-tensorrt", op, label,
                    f"{op} is imported by TensorRT >= {need_text} only; the target is "
                    f"TensorRT {trt_version[0]}.{trt_version[1]}.",
                    f"use TensorRT >= {need_text}" + (", or export with refine_patch_crop_method='gather'" if op == "RoiAlign" else "")
                    + "."))  # fmt: skip
    else:
        add(Finding("info", "op-version", op, label, f"{op} needs TensorRT >= {need_text} (satisfied by the target).",
                    "none needed."))  # fmt: skip


def _check_int64(proto: Any, trt_version: tuple[int, int], constants: dict[str, Any], add: Any) -> None:
    import onnx

    graph = proto.graph
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False).graph
        typed = list(inferred.value_info) + list(inferred.output)
    except Exception:  # shape inference is best effort: a model it rejects is still checked below
        typed = list(graph.value_info) + list(graph.output)
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == _INT64 and trt_version < (9, 0):
            add(Finding("warning", "int64-io", "", value.name,
                        f"graph input/output {value.name!r} is INT64; TensorRT {trt_version[0]}.x exposes it as INT32.",
                        "feed/read int32 buffers in the runner, or make the tensor int32/float in the model."))  # fmt: skip
    int64_tensors = {v.name for v in typed if v.type.tensor_type.elem_type == _INT64}
    int64_tensors |= {name for name, value in constants.items() if str(value.dtype) == "int64"}
    if not int64_tensors:
        return
    out_of_range = sorted(
        name for name, value in constants.items()
        if str(value.dtype) == "int64" and value.size and int(abs(value).max()) > _INT32_MAX
    )  # fmt: skip
    producers = Counter(n.op_type for n in graph.node if any(o in int64_tensors for o in n.output))
    ops = ", ".join(f"{op} x{count}" for op, count in producers.most_common(6)) or "initializers"
    if trt_version < (9, 0):
        add(Finding("warning", "int64-narrowed", "", "",
                    f"{len(int64_tensors)} INT64 tensors (from {ops}); TensorRT {trt_version[0]}.x narrows INT64 to "
                    f"INT32, clamping values beyond +-{_INT32_MAX:,}"
                    + (f" ({len(out_of_range)} constants are out of range, e.g. {out_of_range[0]!r})" if out_of_range else "")
                    + ". Indices and shapes of this model stay far below that.",
                    "nothing needed for image sizes below 2**31 elements per tensor; use TensorRT >= 9 for native INT64."))  # fmt: skip
    else:
        add(Finding("info", "int64-tensors", "", "",
                    f"{len(int64_tensors)} INT64 tensors (from {ops}); TensorRT >= 9 keeps INT64"
                    + (f"; {len(out_of_range)} constants exceed INT32 (e.g. Slice ends), harmless" if out_of_range else "")
                    + ".",
                    "none needed."))  # fmt: skip


def _check_dynamic_inputs(graph: Any, add: Any) -> None:
    initializers = {init.name for init in graph.initializer}
    for value in graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        dynamic = [d.dim_param or "?" for d in dims if not d.HasField("dim_value")]
        if dynamic:
            add(Finding("info", "dynamic-input", "", value.name,
                        f"input {value.name!r} has dynamic dims ({', '.join(dynamic)}); the engine covers only the "
                        "shapes of its optimisation profiles.",
                        "build with --min-shape/--opt-shape/--max-shape (defaults: the HD/4K presets)."))  # fmt: skip
