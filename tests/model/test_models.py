"""Reference models: checkpoint layout, patch methods, refine modes, edge cases."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model import MattingBase, MattingRefine, crop_patches, replace_patches
from model.checkpoint import build_model
from model.config import ModelConfig

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference"
if not REFERENCE.is_dir():  # CI clones the repo beside shared/
    REFERENCE = Path(__file__).resolve().parents[2].parent / "shared" / "reference"

BACKBONES = ["mobilenetv2", "resnet50", "resnet101"]
CROPS = ["unfold", "roi_align", "gather"]
REPLACES = ["scatter_nd", "scatter_element"]


def _tsv(backbone: str) -> dict[str, tuple[tuple[int, ...], str]]:
    table = {}
    for line in (REFERENCE / f"state_dict_{backbone}.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        dims = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
        table[key] = (dims, dtype)
    return table


@pytest.mark.parametrize("backbone", BACKBONES)
def test_state_dict_matches_reference_table_and_loads_strictly(backbone: str) -> None:
    if not REFERENCE.is_dir():
        pytest.skip(f"shared/reference not found next to the repo ({REFERENCE})")
    table = _tsv(backbone)
    # A state_dict built from the table alone (as an official checkpoint would be).
    state = {
        k: (torch.zeros(shape, dtype=torch.int64) if dtype == "int64" else torch.randn(shape))
        for k, (shape, dtype) in table.items()
    }
    refine = MattingRefine(backbone)
    assert refine.load_state_dict(state, strict=True)
    base = MattingBase(backbone)
    assert base.load_state_dict({k: v for k, v in state.items() if not k.startswith("refiner.")}, strict=True)
    mine = {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in refine.state_dict().items()}
    assert mine == table


def _pair(batch: int, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, height, width, generator=g), torch.rand(batch, 3, height, width, generator=g)


@pytest.fixture(scope="module")
def synthetic_refine() -> MattingRefine:
    return build_model(ModelConfig(refine_sample_pixels=8_000))  # type: ignore[return-value]


@pytest.mark.parametrize("mode", ["sampling", "thresholding", "full"])
@pytest.mark.parametrize("crop,replace", list(itertools.product(CROPS, REPLACES)))
def test_patch_methods_identical_at_batch_2(synthetic_refine: MattingRefine, mode: str, crop: str, replace: str) -> None:
    model = synthetic_refine
    src, bgr = _pair(2, 128, 160)
    model.refine_mode = mode
    with torch.no_grad():
        model.refine_patch_crop_method, model.refine_patch_replace_method = "unfold", "scatter_nd"
        expected = model(src, bgr)
        model.refine_patch_crop_method, model.refine_patch_replace_method = crop, replace
        got = model(src, bgr)
        # Batch >= 2 must equal each image run alone (the original's index helpers broke this).
        single = [model(src[i : i + 1], bgr[i : i + 1]) for i in range(2)]
    model.refine_mode = "sampling"
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    for i in range(2):
        for a, b in zip(got, single[i]):
            torch.testing.assert_close(a[i : i + 1], b, atol=1e-4, rtol=0)
    if mode != "full":
        refined = expected[5].mean().item()
        assert 0 < refined < 1, f"{mode} refined fraction {refined}: the test would not exercise the refiner"


def _naive_refine(model: MattingRefine, src, bgr, pha, fgr, err, hid):
    """Literal per-cell loop of the refiner algorithm in BGMV2_FACTS.md (kernel size 3)."""
    refiner = model.refiner
    height, width = src.shape[2:]
    err_q = F.interpolate(err, (height // 4, width // 4), mode="bilinear", align_corners=False)
    from model import select_refinement_regions

    ref = select_refinement_regions(
        err_q, model.refine_mode, model.refine_sample_pixels, model.refine_threshold, model.refine_prevent_oversampling
    )
    out = F.interpolate(torch.cat([pha, fgr], 1), (height, width), mode="bilinear", align_corners=False)
    x = F.interpolate(torch.cat([hid, pha, fgr], 1), (height // 2, width // 2), mode="bilinear", align_corners=False)
    src_bgr = torch.cat([src, bgr], 1)
    y = F.interpolate(src_bgr, (height // 2, width // 2), mode="bilinear", align_corners=False)
    half = F.pad(torch.cat([x, y], 1), (3, 3, 3, 3))
    full = F.pad(src_bgr, (2, 2, 2, 2))
    for b, i, j in torch.nonzero(ref[:, 0] > 0).tolist():
        patch = refiner.refine_patches(
            half[b : b + 1, :, 2 * i : 2 * i + 8, 2 * j : 2 * j + 8], full[b : b + 1, :, 4 * i : 4 * i + 8, 4 * j : 4 * j + 8]
        )
        out[b, :, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4] = patch[0]
    return out[:, :1], out[:, 1:], ref


@pytest.mark.parametrize("mode", ["sampling", "thresholding"])
def test_vectorised_refiner_matches_per_cell_loop(synthetic_refine: MattingRefine, mode: str) -> None:
    model = synthetic_refine
    model.refine_mode = mode
    src, bgr = _pair(2, 96, 128, seed=3)
    with torch.no_grad():
        x = model.run_network(model.downsample(src), model.downsample(bgr))
        args = (src, bgr, x[:, :1].clamp(0, 1), x[:, 1:4], x[:, 4:5].clamp(0, 1), x[:, 5:].relu())
        expected = _naive_refine(model, *args)
        got = model.refiner(*args, mode, model.refine_sample_pixels, model.refine_threshold, True, "gather", "scatter_element")
    model.refine_mode = "sampling"
    # Per-cell convolutions (batch 1) round differently from batched ones: ~1e-6.
    for a, b in zip(expected, got):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kernel_size", [1, 3])
@pytest.mark.parametrize("mode", ["sampling", "thresholding", "full"])
def test_kernel_sizes_all_methods_agree(kernel_size: int, mode: str) -> None:
    torch.manual_seed(0)
    model = MattingRefine("mobilenetv2", refine_mode=mode, refine_kernel_size=kernel_size, refine_sample_pixels=4000,
                          refine_threshold=0.0, refine_prevent_oversampling=False).eval()
    src, bgr = _pair(2, 64, 96, seed=5)
    results = []
    with torch.no_grad():
        for crop, replace in itertools.product(CROPS, REPLACES):
            model.refine_patch_crop_method, model.refine_patch_replace_method = crop, replace
            results.append(model(src, bgr))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert results[0][0].shape == (2, 1, 64, 96) and results[0][5].shape == (2, 1, 16, 24)


def test_output_shapes_and_ranges(synthetic_refine: MattingRefine) -> None:
    src, bgr = _pair(1, 128, 160)
    synthetic_refine.backbone_scale = 0.25
    with torch.no_grad():
        pha, fgr, pha_sm, fgr_sm, err_sm, ref_sm = synthetic_refine(src, bgr)
    assert pha.shape == (1, 1, 128, 160) and fgr.shape == (1, 3, 128, 160)
    assert pha_sm.shape == (1, 1, 32, 40) and fgr_sm.shape == (1, 3, 32, 40) and err_sm.shape == (1, 1, 32, 40)
    assert ref_sm.shape == (1, 1, 32, 40)
    for t in (pha, fgr, pha_sm, fgr_sm, err_sm):
        assert 0 <= t.min() and t.max() <= 1
    assert set(ref_sm.unique().tolist()) <= {0.0, 1.0}
    base = build_model(ModelConfig(model_type="base"))
    with torch.no_grad():
        outs = base(src, bgr)
    assert [tuple(o.shape) for o in outs] == [(1, 1, 128, 160), (1, 3, 128, 160), (1, 1, 128, 160), (1, 32, 128, 160)]
    assert outs[3].min() >= 0


def test_sample_pixels_larger_than_grid_is_clamped() -> None:
    model = build_model(ModelConfig(refine_sample_pixels=10_000_000, refine_prevent_oversampling=False))
    src, bgr = _pair(2, 64, 64)
    with torch.no_grad():
        ref = model(src, bgr)[5]
    assert ref.sum().item() == 2 * 16 * 16  # every cell, no crash


def test_zero_selected_patches_gives_upsampled_coarse_result() -> None:
    model = build_model(ModelConfig(refine_mode="thresholding", refine_threshold=1.0))
    src, bgr = _pair(1, 64, 96)
    with torch.no_grad():
        pha, fgr, pha_sm, fgr_sm, err_sm, ref_sm = model(src, bgr)
        raw = model.run_network(model.downsample(src), model.downsample(bgr))
    assert ref_sm.sum() == 0
    coarse = F.interpolate(torch.cat([raw[:, :1].clamp(0, 1), raw[:, 1:4]], 1), (64, 96), mode="bilinear", align_corners=False)
    torch.testing.assert_close(pha, coarse[:, :1].clamp(0, 1))
    torch.testing.assert_close(fgr, (coarse[:, 1:] + src).clamp(0, 1))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"backbone_scale": 0.75}, "backbone_scale=0.75"),
        ({"backbone_scale": 0.0}, "backbone_scale=0.0"),
        ({"refine_mode": "magic"}, "refine_mode='magic'"),
        ({"refine_patch_crop_method": "x"}, "refine_patch_crop_method='x'"),
        ({"refine_patch_replace_method": "x"}, "refine_patch_replace_method='x'"),
        ({"refine_kernel_size": 5}, "refine_kernel_size=5"),
    ],
)
def test_bad_settings_raise_value_error_naming_argument(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        MattingRefine("mobilenetv2", **kwargs)


def test_bad_backbone() -> None:
    with pytest.raises(ValueError, match="backbone='vgg'"):
        MattingBase("vgg")


@pytest.mark.parametrize(
    "src,bgr,message",
    [
        (torch.rand(1, 3, 66, 64), torch.rand(1, 3, 66, 64), "divisible by 4, got 66x64"),
        (torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 68), "same shape"),
        (torch.rand(1, 4, 64, 64), torch.rand(1, 4, 64, 64), r"shape \(B, 3, H, W\)"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "float tensor"),
    ],
)
def test_bad_inputs_raise_value_error(synthetic_refine: MattingRefine, src, bgr, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        synthetic_refine(src, bgr)


def test_settings_can_change_after_construction(synthetic_refine: MattingRefine) -> None:
    synthetic_refine.backbone_scale = 0.6
    try:
        with pytest.raises(ValueError, match="backbone_scale=0.6"):
            synthetic_refine(*_pair(1, 64, 64))
    finally:
        synthetic_refine.backbone_scale = 0.25


def test_crop_and_replace_helpers_roundtrip() -> None:
    x = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).view(2, 3, 8, 12)
    idx = torch.tensor([[1, 0, 2], [0, 1, 0]])
    for method in CROPS:
        crops = crop_patches(x, idx, 4, 0, method)
        torch.testing.assert_close(crops[0], x[1, :, 0:4, 8:12])
        torch.testing.assert_close(crops[1], x[0, :, 4:8, 0:4])
    patches = -torch.ones(2, 3, 4, 4)
    for method in REPLACES:
        out = replace_patches(x, patches, idx, method)
        assert (out[1, :, 0:4, 8:12] == -1).all() and (out[0, :, 4:8, 0:4] == -1).all()
        assert (out >= 0).sum() == x.numel() - 2 * 3 * 16
        assert (x >= 0).all()  # input untouched
