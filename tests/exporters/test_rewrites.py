"""exporters.rewrites: direct patch sampling, 2x2 blocks and split convolutions equal the reference."""

from __future__ import annotations

import onnx
import pytest
import torch

from exporters.patcher import ModelPatcher
from exporters.rewrites import FAST_PATCHES, MIN_CELLS_PER_BLOCK, fast_patches
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


def _block_counts(ref: torch.Tensor) -> torch.Tensor:
    """Selected cells per 2x2 block of a (B, 1, Hq, Wq) refinement map."""
    padded = torch.nn.functional.pad(ref, (0, ref.shape[3] % 2, 0, ref.shape[2] % 2))
    return torch.nn.functional.avg_pool2d(padded, 2) * 4


@pytest.mark.parametrize("scale", [0.25, 0.125])
def test_blocks_and_single_cells_mixed(model: torch.nn.Module, scale: float) -> None:
    """A sparse selection: some 2x2 blocks are refined as one window, the other cells alone;
    both must give the reference's patches (and non-selected cells of a block stay coarse)."""
    g = torch.Generator().manual_seed(7)
    src, bgr = torch.rand(2, 3, 124, 164, generator=g), torch.rand(2, 3, 124, 164, generator=g)
    model.backbone_scale, model.refine_sample_pixels = scale, 16 * 300
    try:
        with torch.no_grad():
            expected = model(src, bgr)
            with ModelPatcher(model, fast_patches(model)):
                got = model(src, bgr)
    finally:
        model.backbone_scale, model.refine_sample_pixels = 0.25, 4_000
    counts = _block_counts(expected[5])
    assert (counts >= MIN_CELLS_PER_BLOCK).sum() > 0  # some blocks
    assert ((counts > 0) & (counts < MIN_CELLS_PER_BLOCK)).sum() > 0  # some lone cells
    assert ((counts > 0) & (counts < 4) & (counts >= MIN_CELLS_PER_BLOCK)).sum() > 0  # partly selected blocks
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_fixed_bilinear_weights_only_for_quarter_scale(model: torch.nn.Module) -> None:
    """The Gather + fixed-weight GEMM coarse windows are exact only when the coarse map is
    half the half-resolution size for every input: backbone_scale 0.25, nothing else."""
    try:
        for scale, exact in ((0.25, True), (0.125, False), (0.5, False), (0.3, False)):
            model.backbone_scale = scale
            assert fast_patches(model)[0].value.keywords == {"exact_half": exact}
    finally:
        model.backbone_scale = 0.25
    assert FAST_PATCHES[0].value.keywords == {"exact_half": False}


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


@pytest.mark.parametrize(("scale", "roi_aligns"), [(0.25, 8), (0.125, 10)])
def test_default_onnx_export_samples_windows_directly(tmp_path, scale: float, roi_aligns: int) -> None:
    from bgm_deploy.export import export
    from exporters.config import OnnxConfig

    path = tmp_path / "m.onnx"
    export(ModelConfig(backbone_scale=scale, refine_sample_pixels=2_000, refine_patch_crop_method="roi_align",
                       refine_patch_replace_method="scatter_element"), path, "onnx",
           onnx=OnnxConfig(trace_resolution=(160, 128), simplify=False))
    graph = onnx.load(str(path)).graph
    ops = [node.op_type for node in graph.node]
    assert "Pad" not in ops
    # blocks and single cells: src/bgr at half and at full resolution (8); the coarse windows
    # are a Gather + fixed-weight MatMul at scale 0.25, RoiAligns otherwise (2 more)
    assert ops.count("RoiAlign") == roi_aligns
    assert ("MatMul" in ops) == (scale == 0.25)
    refiner_convs = [n for n in graph.node if n.op_type == "Conv" and "refiner" in n.name]
    assert len(refiner_convs) == 12  # per path: conv1 and conv3 split in two, conv2, conv4
