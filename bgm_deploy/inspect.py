"""``inspect_model``: what an exported file is (metadata, I/O, op histogram, size)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from exporters.metadata import TORCHSCRIPT_EXTRA_FILE, detect_format, read_metadata
from model.errors import ModelFileError

INSPECT_SCHEMA_VERSION = 1
_ONNX_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 9: "bool", 11: "float64"}


def _onnx_details(path: Path) -> dict[str, Any]:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf DecodeError and friends share no base
        raise ModelFileError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None

    def describe(values: Any) -> list[dict[str, Any]]:
        rows = []
        for value in values:
            tensor = value.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in tensor.shape.dim]
            rows.append({"name": value.name, "shape": shape, "dtype": _ONNX_DTYPES.get(tensor.elem_type, str(tensor.elem_type))})
        return rows

    initializers = {i.name for i in proto.graph.initializer}
    ops: Counter[str] = Counter(node.op_type for node in proto.graph.node)
    return {
        "inputs": describe([v for v in proto.graph.input if v.name not in initializers]),
        "outputs": describe(proto.graph.output),
        "opset": {entry.domain or "ai.onnx": entry.version for entry in proto.opset_import},
        "ops": dict(sorted(ops.items(), key=lambda item: (-item[1], item[0]))),
        "node_count": sum(ops.values()),
    }


def _torchscript_details(path: Path, export: dict[str, Any]) -> dict[str, Any]:
    import torch

    module = torch.jit.load(str(path), map_location="cpu", _extra_files={TORCHSCRIPT_EXTRA_FILE: ""})
    dtype = export.get("io_dtype", "float32")
    ops: Counter[str] = Counter()
    for name in ("forward_list", "forward"):
        if hasattr(module, name):
            graph = getattr(module, name).graph
            ops.update(node.kind() for node in graph.nodes())
            break
    settable = {
        name: getattr(module, name)
        for name in ("backbone_scale", "refine_mode", "refine_sample_pixels", "refine_threshold", "refine_prevent_oversampling")
        if hasattr(module, name)
    }
    return {
        "inputs": [{"name": n, "shape": ["batch", 3, "height", "width"], "dtype": dtype} for n in export.get("inputs", ["src", "bgr"])],
        "outputs": [{"name": n, "shape": None, "dtype": dtype} for n in export.get("outputs", [])],
        "ops": dict(sorted(ops.items(), key=lambda item: (-item[1], item[0]))),
        "node_count": sum(ops.values()),
        "settable_attributes": settable,
    }


def inspect_model(path: str | Path, config_file: str | Path | None = None) -> dict[str, Any]:
    """Describes an exported ONNX or TorchScript file.

    Args:
        path: the file.
        config_file: its metadata JSON (``--config``), for a file a tool stripped; else the
            embedded metadata, else the sidecar ``<file>.bgm.json`` (:func:`read_metadata`).

    Returns:
        ``{"schema_version", "path", "format", "size_bytes", "metadata", "inputs",
        "outputs", "ops", "node_count", ...}``; ONNX adds ``opset``; TorchScript adds the
        current values of its settable attributes. TorchScript shapes of outputs are not
        stored in the file (``None``).

    Raises:
        ModelFileError: missing, unreadable, or without bgm-deploy metadata.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt not in ("onnx", "torchscript"):
        raise ModelFileError(f"{path}: inspect supports ONNX and TorchScript files, not {fmt}")
    metadata = read_metadata(path, config_file)
    details = _onnx_details(path) if fmt == "onnx" else _torchscript_details(path, metadata.export)
    return {
        "schema_version": INSPECT_SCHEMA_VERSION,
        "path": str(path),
        "format": fmt,
        "size_bytes": path.stat().st_size,
        "metadata": {"format": metadata.format, "model_config": metadata.model_config.to_dict(), "export": metadata.export},
        **details,
    }
