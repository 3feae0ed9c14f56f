"""Speed rewrites for exported graphs: sample patch inputs directly (``FAST_PATCHES``).

The reference refiner (:func:`model.refiner.gather_patch_inputs`) builds the full-resolution
``cat(src, bgr)``, resizes it and the 36-channel coarse maps to half resolution,
concatenates and zero-pads the whole map, then crops 8x8 windows; it also zero-pads the
full-resolution ``cat(src, bgr)``.
At HD that materialises a 42-channel 960x540 map three times, yet only the selected
patches are ever read (see benchmarks/README.md, "Where the time goes").

:func:`gather_patch_inputs_direct` computes the same crops straight from the coarse and
full-resolution maps with ``roi_align`` (``aligned=True``: ONNX RoiAlign
``coordinate_transformation_mode=half_pixel``):

* half-resolution pixel ``p`` of a bilinear resize (``align_corners=False``) reads the
  source at ``(p + 0.5) * s - 0.5`` with ``s = in / out``, clamped at 0 and at ``in - 1``;
  a RoiAlign box starting at ``p0 * s`` with bins of width ``s`` and one sample per bin
  samples exactly there, with the same clamping. For ``src`` and ``bgr`` (``s = 2``, each
  cropped on its own so no concatenated full-resolution map exists) that is the mean of a
  2x2 block;
* the full-resolution 8x8 windows are 1-pixel bins on integer coordinates (exact copies);
* zero padding becomes a 0/1 mask from the window's integer coordinates, so no padded
  map exists.

The patch network's first and third convolutions are then applied to their inputs' parts
with slices of their weights and summed, instead of to concatenations (``first_conv`` /
``third_conv`` of :class:`model.refiner.Refiner` are the seams).

Only the arithmetic order differs from the reference (float32 rounding, ~1e-7); parity is
checked by the exporter's re-check and by ``bgm-deploy verify``. The rewrite applies to
the ``roi_align`` crop with kernel size 3 (the ONNX default); anything else falls back
to the reference function.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor

from model import refiner as _refiner

from .patcher import Patch

_reference_gather_patch_inputs = _refiner.gather_patch_inputs


def _valid(start: Tensor, size: int, limit: Tensor | int) -> Tensor:
    """``(N, size)`` 1.0 where ``start + k`` lies in ``[0, limit)``, else 0.0."""
    positions = start.view(-1, 1) + torch.arange(size, device=start.device, dtype=start.dtype).view(1, -1)
    return ((positions >= 0) & (positions < limit)).to(torch.float32)


def _boxes(b: Tensor, row0: Tensor, col0: Tensor, scale_y: Tensor | float, scale_x: Tensor | float, size: int) -> Tensor:
    """RoiAlign boxes ``(N, 5)``: bins of ``scale`` source pixels starting at ``start * scale``."""
    y1 = row0.to(torch.float32) * scale_y
    x1 = col0.to(torch.float32) * scale_x
    return torch.stack([b.to(torch.float32), x1, y1, x1 + size * scale_x, y1 + size * scale_y], dim=1)


def gather_patch_inputs_direct(
    hid: Tensor, pha: Tensor, fgr: Tensor, src: Tensor, bgr: Tensor, idx: Tensor, kernel_size: int, crop_method: str
) -> tuple[Tensor, Tensor]:
    """Drop-in replacement of :func:`model.refiner.gather_patch_inputs` (same outputs)."""
    if crop_method != "roi_align" or kernel_size != 3:
        return _reference_gather_patch_inputs(hid, pha, fgr, src, bgr, idx, kernel_size, crop_method)
    dtype = src.dtype
    full_h, full_w = src.shape[2], src.shape[3]
    half_h, half_w = full_h // 2, full_w // 2
    coarse = torch.cat([hid, pha, fgr], dim=1).float()
    # in/out ratios of the two half-resolution resizes, as float32 tensors (symbolic in exports)
    scale_y = torch.ones((), dtype=torch.float32) * coarse.shape[2] / half_h
    scale_x = torch.ones((), dtype=torch.float32) * coarse.shape[3] / half_w
    b, i, j = idx[:, 0], idx[:, 1], idx[:, 2]

    # Half resolution: 8x8 windows starting at (2i - 3, 2j - 3), zero outside the map.
    row0, col0 = i * 2 - 3, j * 2 - 3
    mask = _valid(row0, 8, half_h).view(-1, 1, 8, 1) * _valid(col0, 8, half_w).view(-1, 1, 1, 8)
    x = torchvision.ops.roi_align(coarse, _boxes(b, row0, col0, scale_y, scale_x, 8), 8, 1.0, 1, True)
    # src and bgr are cropped separately: no full-resolution cat(src, bgr) is ever built.
    boxes = _boxes(b, row0, col0, 2.0, 2.0, 8)
    y_src = torchvision.ops.roi_align(src.float(), boxes, 8, 1.0, 1, True)
    y_bgr = torchvision.ops.roi_align(bgr.float(), boxes, 8, 1.0, 1, True)
    # Kept as two parts: conv1 is applied to each with its slice of the weights (see
    # ``_split_first_conv``), so the 42-channel crop tensor is never concatenated.
    half = SplitCrops(x * mask, torch.cat([y_src, y_bgr], dim=1) * mask)

    # Full resolution: 8x8 windows starting at (4i - 2, 4j - 2), zero outside the image.
    row0, col0 = i * 4 - 2, j * 4 - 2
    mask = _valid(row0, 8, full_h).view(-1, 1, 8, 1) * _valid(col0, 8, full_w).view(-1, 1, 1, 8)
    boxes = _boxes(b, row0, col0, 1.0, 1.0, 8)
    full = torch.cat(
        [torchvision.ops.roi_align(src.float(), boxes, 8, 1.0, 1, True), torchvision.ops.roi_align(bgr.float(), boxes, 8, 1.0, 1, True)],
        dim=1,
    ) * mask
    return SplitCrops(half.coarse.to(dtype), half.images.to(dtype)), full.to(dtype)  # type: ignore[return-value]


class SplitCrops(tuple):
    """Half-resolution crops as ``(coarse part (N, 36, 8, 8), src/bgr part (N, 6, 8, 8))``."""

    __slots__ = ()

    def __new__(cls, coarse: Tensor, images: Tensor) -> SplitCrops:
        return super().__new__(cls, (coarse, images))

    @property
    def coarse(self) -> Tensor:
        return self[0]

    @property
    def images(self) -> Tensor:
        return self[1]


def _split_conv(conv: torch.nn.Conv2d, first: Tensor, second: Tensor) -> Tensor:
    """``conv(cat(first, second))`` as the sum of two convolutions over weight slices.

    onnxruntime's CPU convolution on thousands of 8x8 patches is markedly faster on the
    two parts than on their concatenation (measured: 44 ms vs 80 ms for conv1 at HD), and
    the concatenation itself is skipped.
    """
    channels = first.shape[1]
    out = F.conv2d(first, conv.weight[:, :channels]) + F.conv2d(second, conv.weight[:, channels:])
    if conv.bias is not None:
        out = out + conv.bias.view(1, -1, 1, 1)
    return out


def _split_first_conv(original: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    refiner = original.__self__  # type: ignore[attr-defined]

    def first_conv(x: Tensor) -> Tensor:
        if isinstance(x, SplitCrops):
            return _split_conv(refiner.conv1, x.coarse, x.images)
        return original(x)

    return first_conv


def _split_third_conv(original: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    refiner = original.__self__  # type: ignore[attr-defined]

    def third_conv(x: Tensor, y: Tensor) -> Tensor:
        return _split_conv(refiner.conv3, x, y)

    return third_conv


FAST_PATCHES: tuple[Patch, ...] = (
    Patch(
        "module:model.refiner",
        "gather_patch_inputs",
        gather_patch_inputs_direct,
        reason="sample the refiner's patch inputs directly instead of resizing, concatenating and padding whole maps",
    ),
    Patch("refiner", "first_conv", _split_first_conv, wrap=True, optional=True,
          reason="conv1 on the two crop parts instead of their 42-channel concatenation"),
    Patch("refiner", "third_conv", _split_third_conv, wrap=True, optional=True,
          reason="conv3 on its two inputs instead of their 22-channel concatenation"),
)
