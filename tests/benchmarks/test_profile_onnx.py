"""Aggregation of onnxruntime profile traces by op type and by node."""

from __future__ import annotations

import pytest

from benchmarks.profile_onnx import aggregate


def _kernel(node: str, op: str, dur_us: float) -> dict[str, object]:
    return {"cat": "Node", "name": f"{node}_kernel_time", "dur": dur_us, "args": {"op_name": op}}


EVENTS = [
    _kernel("/refiner/conv1/Conv", "Conv", 3000),
    _kernel("/decoder/conv4/Conv", "Conv", 1000),
    _kernel("/refiner/RoiAlign", "RoiAlign", 2000),
    _kernel("/refiner/conv1/Conv", "Conv", 3000),
    _kernel("/refiner/RoiAlign", "RoiAlign", 1000),
    {"cat": "Node", "name": "/refiner/RoiAlign_fence_before", "dur": 999, "args": {"op_name": "RoiAlign"}},
    {"cat": "Session", "name": "model_run", "dur": 50_000},
]


def test_by_op_type_per_run() -> None:
    rows = aggregate(EVENTS, runs=2, by="op")
    assert [r.name for r in rows] == ["Conv", "RoiAlign"]
    conv, roi = rows
    assert conv.ms_per_run == pytest.approx(3.5) and conv.calls_per_run == pytest.approx(1.5)
    assert roi.ms_per_run == pytest.approx(1.5)
    assert conv.share + roi.share == pytest.approx(1.0) and conv.share == pytest.approx(7 / 10)


def test_by_node() -> None:
    rows = aggregate(EVENTS, runs=2, by="node")
    assert rows[0].name == "/refiner/conv1/Conv" and rows[0].ms_per_run == pytest.approx(3.0)
    assert {r.name for r in rows} == {"/refiner/conv1/Conv", "/decoder/conv4/Conv", "/refiner/RoiAlign"}
