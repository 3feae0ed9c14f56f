"""ONNX export: parity with PyTorch over backbone × model type × refine mode × exporter,
plus the edge cases (zero patches, k > grid, fp16, simplify fallback, pruning, metadata)."""

from __future__ import annotations

import onnx
import pytest
import torch

from exporters.config import DEFAULT_OPSET, OnnxConfig
from exporters.metadata import read_metadata
from exporters.onnx import onnx_from_torch
from model.errors import UsageError
from tests.conftest import TOLERANCES

from .conftest import CHECK_SIZES, TRACE, max_diffs, random_pair, run_onnx, small_config

VARIANTS = ("base", "sampling", "thresholding", "full")


def _matrix() -> list[object]:
    cases = []
    for backbone in ("mobilenetv2", "resnet50", "resnet101"):
        for variant in VARIANTS:
            for exporter in ("legacy", "dynamo"):
                # By default the dynamo exporter (not the default one; 15-30 s a case) runs on
                # mobilenetv2 only; the resnets with it run with --runslow (the legacy exporter
                # covers every backbone by default).
                slow = backbone != "mobilenetv2" and exporter == "dynamo"
                marks = [pytest.mark.slow] if slow else []
                cases.append(pytest.param(backbone, variant, exporter, marks=marks, id=f"{backbone}-{variant}-{exporter}"))
    return cases


def _config(backbone: str, variant: str):  # noqa: ANN202 - ModelConfig
    if variant == "base":
        return small_config("base", backbone=backbone)
    return small_config("refine", backbone=backbone, refine_mode=variant)


def _dims(value: onnx.ValueInfoProto) -> list[object]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.mark.parametrize(("backbone", "variant", "exporter"), _matrix())
def test_parity_at_untraced_sizes(onnx_export, backbone: str, variant: str, exporter: str) -> None:
    # onnxsim (and its re-check) is covered on mobilenetv2; the larger backbones skip it for time.
    simplify = backbone == "mobilenetv2"
    exported = onnx_export(_config(backbone, variant), exporter=exporter, opset=DEFAULT_OPSET[exporter], simplify=simplify)
    onnx.checker.check_model(str(exported.path), full_check=True)
    names = exported.onnx_config.output_names(exported.config.model_type)
    for seed, (width, height, batch) in enumerate(CHECK_SIZES):
        src, bgr = random_pair(width, height, batch, seed)
        got = run_onnx(exported.path, src, bgr)
        assert [g.shape[0] for g in got] == [batch] * len(names)
        diffs = max_diffs(exported.model, exported.config.model_type, names, got, src, bgr)
        assert max(diffs.values()) <= TOLERANCES["fp32"], f"{width}x{height}x{batch}: {diffs}"
        if variant in ("sampling", "thresholding"):
            refined = got[names.index("ref_sm")].sum()
            # The comparison must exercise the refiner: some but not all cells refined.
            assert 0 < refined < got[names.index("ref_sm")].size


def test_dynamic_axis_names(onnx_export) -> None:
    proto = onnx.load(str(onnx_export(small_config(), exporter="legacy").path))
    dims = {value.name: _dims(value) for value in [*proto.graph.input, *proto.graph.output]}
    assert dims["src"] == dims["bgr"] == ["batch", 3, "height", "width"]
    assert dims["pha"] == ["batch", 1, "height", "width"]
    assert dims["fgr_sm"] == ["batch", 3, "height_sm", "width_sm"]
    assert dims["ref_sm"] == ["batch", 1, "height_q", "width_q"]


@pytest.mark.parametrize(("crop", "replace"), [("gather", "scatter_nd"), ("roi_align", "scatter_nd"), ("gather", "scatter_element")])
def test_other_crop_replace_methods(onnx_export, crop: str, replace: str) -> None:
    config = small_config(refine_mode="thresholding", refine_patch_crop_method=crop, refine_patch_replace_method=replace)
    exported = onnx_export(config, exporter="legacy", simplify=False)
    src, bgr = random_pair(224, 160, 2, 7)
    diffs = max_diffs(exported.model, "refine", exported.result.outputs, run_onnx(exported.path, src, bgr), src, bgr)
    assert max(diffs.values()) <= TOLERANCES["fp32"], diffs


def test_zero_selected_patches(onnx_export) -> None:
    # Errors are clamped to [0, 1]: threshold 1 selects nothing at any size.
    exported = onnx_export(small_config(refine_mode="thresholding", refine_threshold=1.0), exporter="legacy", simplify=False)
    src, bgr = random_pair(224, 160, 2, 3)
    got = run_onnx(exported.path, src, bgr)
    assert got[5].sum() == 0
    diffs = max_diffs(exported.model, "refine", exported.result.outputs, got, src, bgr)
    assert max(diffs.values()) <= TOLERANCES["fp32"], diffs


def test_sample_pixels_exceeding_the_grid(onnx_export) -> None:
    config = small_config(refine_sample_pixels=200_000, refine_prevent_oversampling=False)
    exported = onnx_export(config, exporter="legacy", simplify=False)
    src, bgr = random_pair(224, 160, 2, 4)
    got = run_onnx(exported.path, src, bgr)
    assert got[5].min() == 1  # k = 12,500 > 3,072 cells: every cell refined
    diffs = max_diffs(exported.model, "refine", exported.result.outputs, got, src, bgr)
    assert max(diffs.values()) <= TOLERANCES["fp32"], diffs


def test_output_pruning_removes_branches(onnx_export) -> None:
    full = onnx.load(str(onnx_export(small_config(), exporter="legacy").path))
    kept = onnx_export(small_config(), exporter="legacy", outputs=("pha", "fgr"))
    coarse = onnx_export(small_config(), exporter="legacy", outputs=("pha_sm", "err_sm"))
    pruned = onnx.load(str(kept.path))
    assert [o.name for o in pruned.graph.output] == ["pha", "fgr"]
    assert len(pruned.graph.node) < len(full.graph.node)
    coarse_ops = {node.op_type for node in onnx.load(str(coarse.path)).graph.node}
    assert not coarse_ops & {"TopK", "NonZero", "RoiAlign", "ScatterElements"}  # no refiner left
    src, bgr = random_pair(224, 160, 2, 5)
    for exported in (kept, coarse):
        got = run_onnx(exported.path, src, bgr)
        diffs = max_diffs(exported.model, "refine", exported.result.outputs, got, src, bgr)
        assert max(diffs.values()) <= TOLERANCES["fp32"], diffs


def test_fp16_graph_io_and_exact_coordinates(onnx_export) -> None:
    exported = onnx_export(small_config(), exporter="legacy", precision="fp16")
    proto = onnx.load(str(exported.path))
    float16 = onnx.TensorProto.FLOAT16
    assert all(v.type.tensor_type.elem_type == float16 for v in [*proto.graph.input, *proto.graph.output])
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.input]}
    roi_nodes = [node for node in proto.graph.node if node.op_type == "RoiAlign"]
    assert roi_nodes
    for node in roi_nodes:
        # Boxes (input 1) in float32: 1919.5 is not representable in float16.
        assert types[node.input[1]] == onnx.TensorProto.FLOAT
        assert types[node.input[0]] == onnx.TensorProto.FLOAT
    assert read_metadata(exported.path).export["io_dtype"] == "float16"
    # onnxruntime's CPU provider runs the fp16 graph (accuracy: see the gpu test).
    src, bgr = random_pair(224, 160, 2, 6, torch.float16)
    got = run_onnx(exported.path, src, bgr)
    assert [g.dtype.name for g in got] == ["float16"] * 6
    assert got[0].shape == (2, 1, 160, 224)


@pytest.mark.gpu
def test_fp16_parity_on_cuda(onnx_export) -> None:
    import numpy as np
    import onnxruntime

    exported = onnx_export(small_config(refine_mode="full"), exporter="legacy", precision="fp16")
    session = onnxruntime.InferenceSession(str(exported.path), providers=["CUDAExecutionProvider"])
    src, bgr = random_pair(224, 160, 2, 6, torch.float16)
    got = session.run(None, {"src": src.numpy(), "bgr": bgr.numpy()})
    model = exported.model.half().cuda()
    with torch.no_grad():
        reference = model(src.cuda(), bgr.cuda())
    exported.model.float().cpu()
    for value, ref in zip(got, reference):
        assert float(np.abs(value.astype(np.float32) - ref.float().cpu().numpy()).max()) <= TOLERANCES["fp16"]


def test_simplify_failure_falls_back(tmp_path, monkeypatch, onnx_export) -> None:
    import onnxsim

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated onnxsim crash")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    base = onnx_export(small_config("base"), exporter="legacy", simplify=False)
    config = OnnxConfig(exporter="legacy", trace_resolution=TRACE)
    result = onnx_from_torch(base.model, base.config, config, tmp_path / "m.onnx")
    assert not result.simplified
    assert any("simulated onnxsim crash" in w for w in result.warnings)
    assert read_metadata(result.path).export["simplified"] is False
    src, bgr = random_pair(224, 160, 2, 8)
    diffs = max_diffs(base.model, "base", result.outputs, run_onnx(result.path, src, bgr), src, bgr)
    assert max(diffs.values()) <= TOLERANCES["fp32"]


def test_metadata_round_trip(onnx_export) -> None:
    exported = onnx_export(small_config(), exporter="legacy", outputs=("pha", "fgr"))
    metadata = read_metadata(exported.path)
    assert metadata.format == "onnx"
    # Settings the config left unset are recorded as the model ran them (HD preset scale).
    assert metadata.model_config == exported.config.resolved()
    assert metadata.model_config.is_resolved and metadata.model_config.backbone_scale == 0.25
    export = metadata.export
    for key in ("exporter", "opset", "precision", "io_dtype", "outputs", "simplified", "target", "trace_resolution",
                "trace_batch", "torch_version", "onnx_version", "bgm_deploy_version"):
        assert key in export, key
    assert export["outputs"] == ["pha", "fgr"]
    assert export["trace_resolution"] == list(TRACE)
    assert export["exporter"] == "legacy" and export["simplified"] is True


def test_export_leaves_model_unpatched(onnx_export) -> None:
    exported = onnx_export(small_config(), exporter="legacy")
    assert "validate" not in vars(exported.model)
    with pytest.raises(ValueError, match="divisible by 4"):
        exported.model(torch.rand(1, 3, 130, 160), torch.rand(1, 3, 130, 160))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"exporter": "legacy", "opset": 15}, "too old for RoiAlign"),
        ({"exporter": "dynamo", "opset": 17}, "not valid for exporter=dynamo"),
        ({"exporter": "legacy", "outputs": ("pha", "alpha")}, "unknown alpha"),
    ],
)
def test_bad_configs_are_refused_before_writing(tmp_path, fields: dict, match: str) -> None:
    from model import MattingRefine

    with pytest.raises(UsageError, match=match):
        onnx_from_torch(MattingRefine("mobilenetv2"), small_config(), OnnxConfig(**fields), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_tensorrt_target_applies_its_patches(onnx_export) -> None:
    import model.refiner

    original = model.refiner.select_refinement_regions
    exported = onnx_export(small_config(), exporter="legacy", simplify=False, target="tensorrt")
    assert model.refiner.select_refinement_regions is original  # restored
    ops = {node.op_type for node in onnx.load(str(exported.path)).graph.node}
    assert "TopK" not in ops and "NonZero" in ops
    assert read_metadata(exported.path).export["target"] == "tensorrt"
    src, bgr = random_pair(224, 160, 2, 9)
    got = run_onnx(exported.path, src, bgr)
    assert got[0].shape == (2, 1, 160, 224)
    # Same cells as the reference's topk except among ties at the k-th error (none in random data).
    diffs = max_diffs(exported.model, "refine", exported.result.outputs, got, src, bgr)
    assert max(diffs.values()) <= TOLERANCES["fp32"], diffs
