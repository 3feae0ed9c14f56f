"""The static-K refiner is an exact rewrite of the reference refiner (eager PyTorch)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from exporters.patcher import ModelPatcher
from exporters.static_refiner import static_candidates, static_patches
from exporters.torch_program import THRESHOLDING_REFUSAL, StaticOptions
from model.checkpoint import build_model
from model.config import ModelConfig
from model.errors import UsageError
from model.refiner import select_refinement_regions


@pytest.fixture(scope="module")
def model() -> nn.Module:
    config = ModelConfig(refine_sample_pixels=4000, refine_patch_crop_method="gather",
                         refine_patch_replace_method="scatter_element").resolved((320, 256))
    return build_model(config).eval()


def _pair(width: int, height: int, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 3, height, width, generator=generator),
            torch.rand(batch, 3, height, width, generator=generator))


def _both(model: nn.Module, src: torch.Tensor, bgr: torch.Tensor, options: StaticOptions) -> tuple[list, list]:
    with torch.no_grad():
        reference = model(src, bgr)
        with ModelPatcher(model, static_patches(options)):
            static = model(src, bgr)
    return reference, static


# (width, height, batch, sample pixels): 320x256 holds 5,120 cells; 80,000 px = 5,000 cells is
# k larger than the 160x128 (1,280) and 224x160 (2,240) grids.
CASES = [
    (320, 256, 1, 4_000),
    (224, 160, 2, 4_000),
    (160, 128, 2, 80_000),
    (256, 192, 1, 16),
]


@pytest.mark.parametrize("index_dtype", ["int64", "int32"])
@pytest.mark.parametrize("prevent", [True, False], ids=["prevent", "no-prevent"])
@pytest.mark.parametrize(("width", "height", "batch", "pixels"), CASES)
def test_sampling_equals_the_reference_exactly(model: nn.Module, width: int, height: int, batch: int, pixels: int,
                                               prevent: bool, index_dtype: str) -> None:
    model.refine_sample_pixels = pixels
    model.refine_prevent_oversampling = prevent
    src, bgr = _pair(width, height, batch, seed=width + batch)
    reference, static = _both(model, src, bgr, StaticOptions(index_dtype))
    # One patch: the patch network runs a batch of 1 where the reference runs 2 (its extra
    # cell), and the CPU convolution picks another kernel: rounding differs (~1e-6).
    atol = 1e-5 if batch * (pixels // 16) < 2 else 0.0
    for name, expected, got in zip(("pha", "fgr", "pha_sm", "fgr_sm", "err_sm", "ref_sm"), reference, static):
        assert torch.allclose(expected, got, rtol=0.0, atol=atol), name
    assert torch.equal(reference[5], static[5])
    assert reference[5].sum() > 0


@pytest.mark.parametrize(("crop", "replace"), [("unfold", "scatter_nd"), ("roi_align", "scatter_element"),
                                               ("gather", "scatter_nd")])
def test_every_crop_and_replace_method(model: nn.Module, crop: str, replace: str) -> None:
    model.refine_sample_pixels, model.refine_prevent_oversampling = 4_000, True
    model.refine_patch_crop_method, model.refine_patch_replace_method = crop, replace
    try:
        reference, static = _both(model, *_pair(224, 160, 2, seed=5), StaticOptions())
    finally:
        model.refine_patch_crop_method, model.refine_patch_replace_method = "gather", "scatter_element"
    assert all(torch.equal(a, b) for a, b in zip(reference, static))


def test_zero_error_everywhere_refines_nothing_with_prevent_oversampling() -> None:
    err = torch.zeros(2, 1, 8, 10)
    cells, accepted, ref = static_candidates(err, 4_000, prevent_oversampling=True)
    assert cells.shape == (2, 250) and accepted.sum() == 0 and ref.sum() == 0
    assert torch.equal(ref, select_refinement_regions(err, "sampling", 4_000, 0.1, True))


def test_candidates_mark_the_reference_mask() -> None:
    err = torch.rand(3, 1, 12, 16, generator=torch.Generator().manual_seed(0))
    err[0, 0, :4] = 0.0
    for prevent in (True, False):
        for pixels in (16, 800, 16 * 192, 16 * 500):
            _, accepted, ref = static_candidates(err, pixels, prevent)
            assert torch.equal(ref, select_refinement_regions(err, "sampling", pixels, 0.1, prevent))
            assert accepted.sum() == ref.sum()


def test_full_mode_is_unchanged_and_thresholding_is_refused(model: nn.Module) -> None:
    src, bgr = _pair(160, 128, 1, seed=1)
    model.refine_mode = "full"
    try:
        reference, static = _both(model, src, bgr, StaticOptions())
        assert all(torch.equal(a, b) for a, b in zip(reference, static))
        model.refine_mode = "thresholding"
        with pytest.raises(UsageError, match="thresholding") as error:
            _both(model, src, bgr, StaticOptions())
        assert str(error.value) == THRESHOLDING_REFUSAL and "--refine-mode full" in THRESHOLDING_REFUSAL
    finally:
        model.refine_mode = "sampling"


def test_the_patch_is_undone_and_options_are_checked(model: nn.Module) -> None:
    with ModelPatcher(model, static_patches()):
        assert "forward" in vars(model.refiner)
    assert "forward" not in vars(model.refiner)
    with pytest.raises(UsageError, match="index_dtype"):
        StaticOptions("int16")


# 80,000 px at 160x128: k exceeds the grid, so every cell is refined, the borders included.
@pytest.mark.parametrize(("width", "height", "batch", "scale", "pixels"),
                         [(320, 256, 1, 0.25, 4_000), (224, 160, 2, 0.25, 4_000), (224, 160, 2, 0.125, 4_000),
                          (160, 128, 2, 0.25, 80_000)])
def test_the_ported_speed_rewrites_keep_parity(width: int, height: int, batch: int, scale: float, pixels: int) -> None:
    from exporters.static_rewrites import static_fast_patches

    config = ModelConfig(refine_sample_pixels=pixels, refine_patch_crop_method="gather", backbone_scale=scale,
                         refine_patch_replace_method="scatter_element").resolved((width, height))
    model = build_model(config).eval()
    src, bgr = _pair(width, height, batch, seed=9)
    with torch.no_grad():
        reference = model(src, bgr)
        with ModelPatcher(model, (*static_patches(), *static_fast_patches(model))):
            fast = model(src, bgr)
    for name, expected, got in zip(("pha", "fgr", "pha_sm", "fgr_sm", "err_sm", "ref_sm"), reference, fast):
        assert torch.allclose(expected, got, rtol=0.0, atol=1e-5), name  # arithmetic order only
    assert torch.equal(reference[5], fast[5])


@pytest.mark.parametrize("replace", ["scatter_element", "scatter_nd"])
@pytest.mark.parametrize("batch", [1, 2])
def test_rejected_cells_inside_the_grid_keep_their_coarse_value(model: nn.Module, replace: str, batch: int) -> None:
    """k fits the grid but exceeds the cells with error > 0: with prevent-oversampling the
    rejected candidates are real cells of zero error, and must leave them as the reference
    does (the upsampled coarse value), through the whole refiner, not only the selection."""
    from exporters.static_refiner import static_refiner_forward

    width, height = 128, 96  # 32x24 = 768 cells; k = 500; error > 0 on the left third only
    generator = torch.Generator().manual_seed(3)
    src, bgr = _pair(width, height, batch, seed=11)
    coarse = (batch, 1, height // 4, width // 4)
    pha, err = torch.rand(coarse, generator=generator), torch.rand(coarse, generator=generator)
    err[..., width // 12:] = 0.0
    fgr = torch.randn((batch, 3, *coarse[2:]), generator=generator)
    hid = torch.rand((batch, 32, *coarse[2:]), generator=generator)
    settings = {"mode": "sampling", "sample_pixels": 500 * 16, "threshold": 0.1, "prevent_oversampling": True,
                "crop_method": "gather", "replace_method": replace}
    with torch.no_grad():
        reference = model.refiner(src, bgr, pha, fgr, err, hid, **settings)
        static = static_refiner_forward(model.refiner, StaticOptions(), src, bgr, pha, fgr, err, hid, **settings)
    assert 0 < reference[2].sum() < 500 * batch  # some candidates rejected, some refined
    for name, expected, got in zip(("pha", "fgr", "ref"), reference, static):
        assert torch.equal(expected, got), name
