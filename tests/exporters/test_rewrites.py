"""exporters.rewrites.FAST_PATCHES: direct patch sampling equals the reference algorithm."""

from __future__ import annotations

import onnx
import pytest
import torch

from exporters.patcher import ModelPatcher
from exporters.rewrites import FAST_PATCHES
from model.checkpoint import build_model
from model.config import ModelConfig


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_model(ModelConfig(refine_sample_pixels=4_000, refine_patch_crop_method="roi_align",
                                   refine_patch_replace_method="scatter_element"))


@pytest.mark.parametrize("shape", [(2, 3, 128, 160), (1, 3, 100, 124), (1, 3, 64, 64)])
@pytest.mark.parametrize("scale", [0.25, 0.125, 0.5])
def test_direct_sampling_matches_reference(model: torch.nn.Module, shape: tuple[int, ...], scale: float) -> None:
    g = torch.Generator().manual_seed(sum(shape))
    src, bgr = torch.rand(*shape, generator=g), torch.rand(*shape, generator=g)
    model.backbone_scale = scale
    try:
        with torch.no_grad():
            expected = model(src, bgr)
            with ModelPatcher(model, FAST_PATCHES):
                got = model(src, bgr)
    finally:
        model.backbone_scale = 0.25
    assert expected[5].sum() > 0
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_zero_patches_and_restore(model: torch.nn.Module) -> None:
    import model as model_package

    original = model_package.refiner.gather_patch_inputs
    src = torch.rand(1, 3, 64, 96)
    model.refine_mode, model.refine_threshold = "thresholding", 1.0
    try:
        with torch.no_grad():
            expected = model(src, src)
            with ModelPatcher(model, FAST_PATCHES):
                got = model(src, src)
    finally:
        model.refine_mode, model.refine_threshold = "sampling", 0.1
    assert got[5].sum() == 0
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert model_package.refiner.gather_patch_inputs is original


def test_other_crop_methods_fall_back(model: torch.nn.Module) -> None:
    src, bgr = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    model.refine_patch_crop_method = "gather"
    try:
        with torch.no_grad():
            expected = model(src, bgr)
            with ModelPatcher(model, FAST_PATCHES):
                got = model(src, bgr)
    finally:
        model.refine_patch_crop_method = "roi_align"
    # Reference crops; only the split conv3 differs in rounding.
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_default_onnx_export_has_no_padded_half_resolution_map(tmp_path) -> None:
    from bgm_deploy.export import export
    from exporters.config import OnnxConfig

    path = tmp_path / "m.onnx"
    export(ModelConfig(refine_sample_pixels=2_000, refine_patch_crop_method="roi_align",
                       refine_patch_replace_method="scatter_element"), path, "onnx",
           onnx=OnnxConfig(trace_resolution=(160, 128), simplify=False))
    graph = onnx.load(str(path)).graph
    ops = [node.op_type for node in graph.node]
    assert "Pad" not in ops
    assert ops.count("RoiAlign") == 5  # coarse, src/bgr at half resolution, src/bgr at full resolution
    refiner_convs = [n for n in graph.node if n.op_type == "Conv" and "refiner" in n.name]
    assert len(refiner_convs) == 6  # conv1 and conv3 split in two, conv2, conv4
