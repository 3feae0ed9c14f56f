"""exporters.web: the exact web rewrites (channel padding, the refine budget as an input)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporters.metadata import read_metadata
from exporters.web import REFINE_K_INPUT, expose_refine_budget, pad_conv_channels, web_from_onnx, web_from_onnx_file
from model.checkpoint import build_model
from model.errors import ExportError

from .conftest import SAMPLE_PIXELS, Exported, max_diffs, random_pair, small_config

# The rewrites add zero terms only: float32 summation order is all that may differ.
EXACT = 1e-6


def _session(proto: onnx.ModelProto) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _conv_graph() -> onnx.ModelProto:
    """Convs as BGMv2 has them: 6 channels (two convs sharing input and weight), 54, grouped, 1x1."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> TensorProto:
        # fan-in scaled, as trained weights are: activations stay O(1), so 1e-6 is float32 rounding
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w6"], ["a"], name="first", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "w6"], ["a2"], name="first_again", pads=[1, 1, 1, 1]),
        helper.make_node("Concat", ["a", "a2", "x"], ["cat"], axis=1),  # 24 + 24 + 6 = 54 channels
        helper.make_node("Conv", ["cat", "w54", "b54"], ["c"], name="decoder", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c", "wg"], ["d"], name="depthwise", group=6, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["d", "w1"], ["y"], name="pointwise"),
    ]
    graph = helper.make_graph(
        nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 12, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 12, 10])],
        [weight("w6", 24, 6, 3, 3), weight("w54", 6, 54, 3, 3), weight("b54", 6), weight("wg", 6, 1, 3, 3),
         weight("w1", 5, 6, 1, 1)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _conv_input_channels(proto: onnx.ModelProto) -> dict[str, int]:
    weights = {tensor.name: list(tensor.dims) for tensor in proto.graph.initializer}
    return {node.name: weights[node.input[1]][1] for node in proto.graph.node if node.op_type == "Conv"}


def test_pad_conv_channels_is_exact_and_pads_to_the_multiple() -> None:
    proto = _conv_graph()
    x = np.random.default_rng(1).random((1, 6, 12, 10), dtype=np.float32)
    before = _session(proto).run(None, {"x": x})[0]
    padded = pad_conv_channels(proto, 4)
    onnx.checker.check_model(proto, full_check=True)
    assert [(conv.node, conv.channels, conv.padded_to) for conv in padded] == [
        ("first", 6, 8), ("first_again", 6, 8), ("decoder", 54, 56), ("pointwise", 6, 8)]
    # grouped convs keep their channels (a depthwise kernel reads one channel per group)
    assert _conv_input_channels(proto) == {"first": 8, "first_again": 8, "decoder": 56, "depthwise": 1, "pointwise": 8}
    pads = [node for node in proto.graph.node if node.op_type == "Pad"]
    assert len(pads) == 3  # x padded once for both convs that read it (and the shared weight padded once)
    assert {tensor.name for tensor in proto.graph.initializer} >= {"w6__bgm_web_pad4", "b54"}
    assert "w6" not in {tensor.name for tensor in proto.graph.initializer}  # no longer read
    after = _session(proto).run(None, {"x": x})[0]
    assert np.abs(after - before).max() <= EXACT
    assert pad_conv_channels(proto, 4) == []  # idempotent


def test_pad_conv_channels_refuses_bad_multiple() -> None:
    with pytest.raises(ExportError, match="multiple=0"):
        pad_conv_channels(_conv_graph(), 0)


@pytest.fixture(scope="module")
def small_export(onnx_export: Callable[..., Exported]) -> Exported:
    return onnx_export(small_config())


def test_web_model_of_the_default_export_is_exact(small_export: Exported, tmp_path: Path) -> None:
    web_path = tmp_path / "web.onnx"
    report, metadata = web_from_onnx_file(small_export.path, web_path)
    assert report.refine_k == SAMPLE_PIXELS // 16
    # the 6-channel convs of cat(src, bgr) (backbone + the refiner's split convs) and the decoder's 54
    assert sorted({(conv.channels, conv.padded_to) for conv in report.padded_convs}) == [(6, 8), (54, 56)]
    assert all(channels % 4 == 0 for name, channels in _conv_input_channels(onnx.load(str(web_path))).items()
               if "depthwise" not in name and channels != 1)
    assert read_metadata(web_path).export["web"] == report.to_dict() == metadata.export["web"]
    assert read_metadata(web_path).export["inputs"] == ["src", "bgr", REFINE_K_INPUT]
    src, bgr = random_pair(192, 160, 2, seed=5)
    plain = onnxruntime.InferenceSession(str(small_export.path), providers=["CPUExecutionProvider"])
    web = onnxruntime.InferenceSession(str(web_path), providers=["CPUExecutionProvider"])
    expected = plain.run(None, {"src": src.numpy(), "bgr": bgr.numpy()})
    got = web.run(None, {"src": src.numpy(), "bgr": bgr.numpy(), REFINE_K_INPUT: np.array([report.refine_k], np.int64)})
    for name, a, b in zip([o.name for o in plain.get_outputs()], expected, got):
        assert np.abs(a - b).max() <= EXACT, name


def test_refine_k_input_computes_what_an_export_with_that_budget_computes(small_export: Exported,
                                                                          tmp_path: Path) -> None:
    web_path = tmp_path / "web.onnx"
    web_from_onnx_file(small_export.path, web_path)
    session = onnxruntime.InferenceSession(str(web_path), providers=["CPUExecutionProvider"])
    src, bgr = random_pair(160, 128, 1, seed=6)
    names = tuple(o.name for o in session.get_outputs())
    for k in (1, 40, 1000, 5000):  # 5000 > the 1280 cells of the grid: every cell (the reference's padding)
        model = build_model(small_config(refine_sample_pixels=16 * k))
        got = session.run(None, {"src": src.numpy(), "bgr": bgr.numpy(), REFINE_K_INPUT: np.array([k], np.int64)})
        assert 0 < int(got[names.index("ref_sm")].sum()) <= min(k, 1280)
        diffs = max_diffs(model, "refine", names, got, src, bgr)
        assert max(diffs.values()) <= 1e-4, (k, diffs)


def test_expose_refine_budget_leaves_graphs_without_sampling_alone(onnx_export: Callable[..., Exported]) -> None:
    for config in (small_config(refine_mode="thresholding"), small_config("base")):
        proto = onnx.load(str(onnx_export(config).path))
        count = len(proto.graph.node)
        assert expose_refine_budget(proto) is None
        assert len(proto.graph.node) == count and [i.name for i in proto.graph.input] == ["src", "bgr"]


def test_web_from_onnx_refuses_a_second_budget_input(small_export: Exported) -> None:
    proto = onnx.load(str(small_export.path))
    web_from_onnx(proto)
    with pytest.raises(ExportError, match="already has an input named 'refine_k'"):
        expose_refine_budget(proto)


def test_web_from_onnx_file_refuses_fp16(onnx_export: Callable[..., Exported], tmp_path: Path) -> None:
    fp16 = onnx_export(small_config(), precision="fp16")
    with pytest.raises(ExportError, match="float32"):
        web_from_onnx_file(fp16.path, tmp_path / "web.onnx")
    assert not (tmp_path / "web.onnx").exists()
