"""Speed rewrites for the static-shape targets (ExecuTorch, LiteRT, AOTInductor, Core ML).

The default ONNX export's rewrites (:mod:`exporters.rewrites`) are ported where a static
graph allows them:

* **Direct coarse windows** (backbone scale 0.25, the HD preset): the 36 coarse channels of
  each 8x8 half-resolution window are one gather of the 5x5 coarse pixels it reads and one
  GEMM with fixed bilinear weights (:func:`exporters.rewrites._coarse_windows`), zero outside
  the map by a 0/1 mask, instead of resizing the 36-channel coarse maps to half resolution,
  concatenating, padding and cropping the whole map. The 6 image channels keep the
  reference's half-resolution resize (cheap: 6 channels) and are cropped by gather.
Not ported: the split convolutions (weight slices in the graph are not constant weights, and
XNNPACK delegates convolutions with constant weights only: a split conv1 ran on ExecuTorch's
portable kernel, 20x slower).

Nor the 2x2 blocks of cells refined as one window, which need a data-dependent count of blocks
(``nonzero``). Only the arithmetic order differs from the reference (float32
rounding, ~1e-6); parity is checked by the export re-check and ``bgm-deploy verify``. Other
backbone scales, crop methods or kernel sizes fall back to the reference function.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from model import refiner as _refiner

from .patcher import Patch
from .rewrites import HALF_RATIO_SCALE, _coarse_windows
from .static_refiner import static_patches
from .torch_program import StaticOptions

_reference_gather_patch_inputs = _refiner.gather_patch_inputs


def _inside(start: Tensor, size: int, limit: int) -> Tensor:
    """``(N, size)`` 1.0 where ``start + k`` lies in ``[0, limit)``: 0/1 floats multiplied, not
    booleans and-ed (Core ML's converter has no ``__and__``)."""
    positions = start.view(-1, 1) + torch.arange(size, device=start.device, dtype=start.dtype).view(1, -1)
    return (positions >= 0).to(torch.float32) * (positions < limit).to(torch.float32)


def gather_patch_inputs_static(hid: Tensor, pha: Tensor, fgr: Tensor, src: Tensor, bgr: Tensor, idx: Tensor,
                               kernel_size: int, crop_method: str, *, exact_half: bool = False) -> tuple[Tensor, Tensor]:
    """Drop-in :func:`model.refiner.gather_patch_inputs` for a fixed patch list: the coarse
    part of the half-resolution windows sampled directly (see the module docstring).

    Returns ``(N, 42, 8, 8)`` half-resolution and ``(N, 6, 8, 8)`` full-resolution windows.
    """
    if not exact_half or kernel_size != 3 or crop_method != "gather":
        return _reference_gather_patch_inputs(hid, pha, fgr, src, bgr, idx, kernel_size, crop_method)
    b, i, j = idx[:, 0], idx[:, 1], idx[:, 2]
    half_h, half_w = src.shape[2] // 2, src.shape[3] // 2
    coarse = torch.cat([hid, pha, fgr], dim=1)
    mask = _inside(i * 2 - 3, 8, half_h).view(-1, 1, 8, 1) * _inside(j * 2 - 3, 8, half_w).view(-1, 1, 1, 8)
    x = _coarse_windows(coarse, b, i, j, 8, half_h, half_w, exact_half=True) * mask
    src_bgr = torch.cat([src, bgr], dim=1)
    half = F.interpolate(src_bgr, size=(half_h, half_w), mode="bilinear", align_corners=False)
    images = _refiner.crop_patches(half, idx, 2, 3, "gather")
    full = _refiner.crop_patches(src_bgr, idx, 4, 2, "gather")
    # One conv1 on the concatenation: split convolutions slice their weights in the graph, and
    # XNNPACK delegates convolutions with constant weights only (a sliced one ran on
    # ExecuTorch's portable kernel, 20x slower).
    return torch.cat([x, images], dim=1), full


def static_fast_patches(model: torch.nn.Module) -> tuple[Patch, ...]:
    """The rewrites for a static export of ``model`` (after :func:`exporters.static_refiner.static_patches`)."""
    exact_half = getattr(model, "backbone_scale", None) == HALF_RATIO_SCALE
    return (
        Patch("module:model.refiner", "gather_patch_inputs",
              functools.partial(gather_patch_inputs_static, exact_half=exact_half),
              reason="coarse windows by one gather and a fixed-weight GEMM; no half-resolution 36-channel map"),
    )


def target_patches(model: torch.nn.Module, options: StaticOptions | None, rewrites: bool = False) -> tuple[Patch, ...]:
    """The patches of a static-shape export: the static-K refiner
    (:func:`exporters.static_refiner.static_patches`) and, with ``rewrites``, the speed rewrites
    ported to it (:func:`static_fast_patches`)."""
    return (*static_patches(options), *(static_fast_patches(model) if rewrites else ()))
