"""Preflight on real exports (default: TopK blocks; TensorRT-safe: clean) and on crafted graphs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporters.preflight import PREFLIGHT_SCHEMA_VERSION, preflight_onnx
from model.errors import ModelFileError, UsageError


def test_default_export_is_blocked_by_topk(generic_onnx: Path) -> None:
    report = preflight_onnx(generic_onnx)
    assert not report.ok
    (blocking,) = report.blocking
    assert blocking.code == "topk-k-too-large" and blocking.op == "TopK"
    assert "K=5,000" in blocking.message and "--target tensorrt" in blocking.fix
    assert "topk-unsorted" in report.codes()


def test_tensorrt_safe_export_is_clean(tensorrt_onnx: Path) -> None:
    report = preflight_onnx(tensorrt_onnx)
    assert report.ok, [f.describe() for f in report.blocking]
    assert "TopK" not in report.op_counts
    assert not [f for f in report.findings if f.severity == "warning"]


def test_old_tensorrt_blocks_nonzero_and_roialign(tensorrt_onnx: Path) -> None:
    report = preflight_onnx(tensorrt_onnx, min_tensorrt="8.2")
    blocked_ops = {f.op for f in report.blocking}
    assert blocked_ops == {"NonZero", "RoiAlign"}
    assert "int64-narrowed" in report.codes()
    assert {f.op for f in preflight_onnx(tensorrt_onnx, min_tensorrt="8.0").blocking} >= {"ScatterElements"}


def test_report_json_roundtrip(generic_onnx: Path, tmp_path: Path) -> None:
    report = preflight_onnx(generic_onnx)
    path = report.write_json(tmp_path / "out" / "preflight.json")
    data = json.loads(path.read_text())
    assert data["schema_version"] == PREFLIGHT_SCHEMA_VERSION
    assert data["ok"] is False and data["op_counts"]["TopK"] == 1
    assert {f["code"] for f in data["findings"]} == report.codes()
    assert not list(path.parent.glob(".preflight.json.*"))  # no temp file left behind


def _graph_model(nodes: list, inputs: list, outputs: list, initializers: list, opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "crafted", inputs, outputs, initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_crafted_graph_rules() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    k = helper.make_tensor_value_info("k", TensorProto.INT64, [1])
    vals = helper.make_tensor_value_info("vals", TensorProto.FLOAT, None)
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, None)
    cum = helper.make_tensor_value_info("cum", TensorProto.FLOAT, None)
    axis_in = helper.make_tensor_value_info("axis", TensorProto.INT64, [])
    nodes = [
        helper.make_node("TopK", ["x", "k"], ["vals", "idx"], name="dynamic_topk", sorted=1),
        helper.make_node("CumSum", ["x", "axis"], ["cum"], name="cumsum"),
        helper.make_node("Unique", ["x"], ["u"], name="unique"),
    ]
    model = _graph_model(nodes, [x, k, axis_in], [vals, idx, cum], [], opset=11)
    report = preflight_onnx(model)
    codes = {f.code: f for f in report.findings}
    assert codes["topk-k-not-constant"].severity == "blocking"
    assert codes["non-constant-input"].op == "CumSum"
    assert codes["unsupported-op"].op == "Unique"
    assert codes["opset-old"].severity == "warning"
    assert "topk-unsorted" not in codes


def test_constant_small_topk_passes_and_opset_too_old() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5000])
    vals = helper.make_tensor_value_info("vals", TensorProto.FLOAT, None)
    k = numpy_helper.from_array(np.array([3840], dtype=np.int64), "k")
    node = helper.make_node("TopK", ["x", "k"], ["vals", "idx"], name="topk")
    report = preflight_onnx(_graph_model([node], [x], [vals], [k], opset=17))
    assert report.ok and "topk-k-too-large" not in report.codes()
    report = preflight_onnx(_graph_model([node], [x], [vals], [k], opset=8))
    assert "opset-too-old" in {f.code for f in report.blocking}


def test_usage_errors(tmp_path: Path, generic_onnx: Path) -> None:
    with pytest.raises(ModelFileError, match="does not exist"):
        preflight_onnx(tmp_path / "missing.onnx")
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(UsageError, match="ONNX"):
        preflight_onnx(tmp_path / "model.pt")
    with pytest.raises(UsageError, match="target"):
        preflight_onnx(generic_onnx, target="coreml")
    with pytest.raises(UsageError, match="min_tensorrt"):
        preflight_onnx(generic_onnx, min_tensorrt="ten")
