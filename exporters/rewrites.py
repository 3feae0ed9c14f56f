"""Speed rewrites for exported graphs (``fast_patches(model)``; same results as the reference).

The reference refiner (:func:`model.refiner.gather_patch_inputs` and
:meth:`model.refiner.Refiner.refine_patches`) resizes the 36-channel coarse maps and
``cat(src, bgr)`` to half resolution, concatenates and zero-pads the whole maps, crops one
8x8 window per selected 4x4 cell and runs the patch network on every window. At HD that
materialises a 42-channel 960x540 map three times, and neighbouring cells' windows overlap
(cells are 2 half-resolution pixels apart, windows 8 wide), so most of the patch network's
work is repeated. The rewrites (measured in benchmarks/README.md, "Where the time goes"):

1. **Direct sampling** (:func:`window_crops`): the windows are computed straight from the
   coarse and full-resolution maps, no resized, concatenated or padded whole map exists:

   * half-resolution pixel ``p`` of a bilinear resize (``align_corners=False``) reads the
     source at ``(p + 0.5) * s - 0.5`` with ``s = in / out``, clamped at 0 and at ``in - 1``;
     a RoiAlign box (``aligned=True``: ONNX ``half_pixel``) starting at ``p0 * s`` with bins
     of width ``s`` and one sample per bin samples exactly there, with the same clamping. For
     ``src`` and ``bgr`` (``s = 2``, each cropped on its own) that is the mean of a 2x2 block;
     full-resolution windows are 1-pixel bins on integer coordinates (exact copies);
   * with ``backbone_scale`` 0.25 (the HD preset) the coarse map is exactly half the
     half-resolution size for every valid input, so the coarse windows are one Gather of
     coarse pixels (channels-last rows) and one GEMM with fixed bilinear weights
     (:func:`_half_ratio_weights`) instead of a RoiAlign computing weights per pixel;
   * zero padding becomes a 0/1 mask from the window's integer coordinates.

2. **Quad blocks** (:func:`gather_patch_inputs_fast`): a 2x2 group of cells with at least
   two selected cells is refined as one block: its 10x10 half-resolution and 12x12
   full-resolution windows go through the same unpadded convolutions, which then produce
   the 8x8 output of all four cells at once (the reference's ``full`` mode restricted to the
   block: every output pixel sees exactly the inputs and weights it sees per cell). A block
   costs about as much as two single cells, so cells alone (or paired) in their group stay
   single 8x8 windows and a scattered selection is no slower than per cell. The refined
   4x4 patches are then picked per selected cell (non-selected cells of a block keep the
   coarse result, as in the reference).

3. **Split convolutions**: conv1 and conv3 of the patch network are applied to their
   inputs' parts with slices of their weights and summed, instead of to concatenations
   (``first_conv`` / ``third_conv`` are the seams in ``model/refiner.py``): no 42- or
   22-channel concatenation is built, and onnxruntime's convolutions are faster on the
   parts. (The same split of the decoder's conv4 was measured and did not pay: see
   benchmarks/README.md.)

Only the arithmetic order differs from the reference (float32 rounding, ~1e-6); parity is
checked by the exporter's re-check and by ``bgm-deploy verify``. The patch-input rewrites
apply to the ``roi_align`` crop with kernel size 3 (the ONNX default); anything else falls
back to the reference function.
"""

from __future__ import annotations

import functools
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


def _window_mask(row0: Tensor, col0: Tensor, size: int, height: Tensor | int, width: Tensor | int) -> Tensor:
    """``(N, 1, size, size)`` 1.0 where the window starting at ``(row0, col0)`` is inside the map."""
    return _valid(row0, size, height).view(-1, 1, size, 1) * _valid(col0, size, width).view(-1, 1, 1, size)


def _boxes(b: Tensor, row0: Tensor, col0: Tensor, scale_y: Tensor | float, scale_x: Tensor | float, size: int) -> Tensor:
    """RoiAlign boxes ``(N, 5)``: bins of ``scale`` source pixels starting at ``start * scale``."""
    y1 = row0.to(torch.float32) * scale_y
    x1 = col0.to(torch.float32) * scale_x
    return torch.stack([b.to(torch.float32), x1, y1, x1 + size * scale_x, y1 + size * scale_y], dim=1)


def _at_most(index: Tensor, limit: Tensor | int) -> Tensor:
    """``min(index, limit)`` with ``limit`` kept symbolic in traced graphs (no int Relu/Clip:
    onnxruntime implements neither for int64)."""
    return torch.minimum(index, index * 0 + limit)


def _half_ratio_weights(size: int) -> Tensor:
    """``(R*R, size*size)``, ``R = size // 2 + 1``: a half-resolution ``size`` x ``size``
    window as a linear map of the ``R`` x ``R`` coarse window it reads.

    When the coarse map is exactly half the half-resolution size, half-resolution pixel
    ``p`` reads coarse position ``p / 2 - 0.25``. A window starting at ``2c - 3`` therefore
    reads coarse rows ``c - 2 .. c - 2 + R - 1``, row ``k`` at ``k / 2 + 0.25`` in window
    coordinates, with the fixed bilinear weights 0.75/0.25; clamping at the map's edges is
    reproduced by gathering with clamped indices.
    """
    count = size // 2 + 1
    rows = torch.zeros(size, count, dtype=torch.float64)
    for k in range(size):
        position = k / 2 + 0.25
        first = int(position)
        rows[k, first] += first + 1 - position
        rows[k, first + 1] += position - first
    weights = rows.view(size, 1, count, 1) * rows.view(1, size, 1, count)
    return weights.reshape(size * size, count * count).t().contiguous().float()


# One per window size: 8 (a cell), 10 (a 2x2 block).
_HALF_RATIO_WEIGHTS = {size: _half_ratio_weights(size) for size in (8, 10)}


def _coarse_windows(coarse: Tensor, b: Tensor, cell_i: Tensor, cell_j: Tensor, size: int, half_h: Tensor | int,
                    half_w: Tensor | int, exact_half: bool) -> Tensor:
    """``(N, C, size, size)`` half-resolution windows of the coarse maps starting at
    ``(2 * cell_i - 3, 2 * cell_j - 3)``, before masking."""
    channels, coarse_h, coarse_w = coarse.shape[1], coarse.shape[2], coarse.shape[3]
    if exact_half:
        count = size // 2 + 1
        offsets = torch.arange(count, device=b.device, dtype=b.dtype) - 2
        rows = _at_most((cell_i.view(-1, 1) + offsets).clamp(min=0), coarse_h - 1)
        cols = _at_most((cell_j.view(-1, 1) + offsets).clamp(min=0), coarse_w - 1)
        pixel = (b.view(-1, 1, 1) * coarse_h + rows.view(-1, count, 1)) * coarse_w + cols.view(-1, 1, count)
        pixels = coarse.permute(0, 2, 3, 1).reshape(-1, channels)  # channels-last rows
        windows = pixels[pixel.reshape(-1)].view(-1, count * count, channels).transpose(1, 2)
        return (windows @ _HALF_RATIO_WEIGHTS[size].to(windows.device)).view(-1, channels, size, size)
    # in/out ratios of the two half-resolution resizes, as float32 tensors (symbolic in exports)
    scale_y = torch.ones((), dtype=torch.float32) * coarse_h / half_h
    scale_x = torch.ones((), dtype=torch.float32) * coarse_w / half_w
    boxes = _boxes(b, cell_i * 2 - 3, cell_j * 2 - 3, scale_y, scale_x, size)
    return torchvision.ops.roi_align(coarse, boxes, size, 1.0, 1, True)


def window_crops(coarse: Tensor, src: Tensor, bgr: Tensor, windows: Tensor, cells: int,
                 exact_half: bool) -> tuple[SplitCrops, Tensor]:
    """The patch network's inputs for square groups of ``cells`` x ``cells`` cells.

    Args:
        coarse: ``cat(hid, pha, fgr)`` of the coarse maps, float32.
        windows: ``(N, 3)`` rows ``(b, i, j)``: the group's first cell.
        cells: 1 (a cell: 8x8 half- and full-resolution windows, as the reference) or 2 (a
            2x2 block: 10x10 and 12x12).

    Returns:
        ``SplitCrops`` of the half-resolution windows (coarse part, src/bgr part) and the
        ``(N, 6, S', S')`` full-resolution src/bgr windows, all zero outside the maps.
    """
    dtype = src.dtype
    full_h, full_w = src.shape[2], src.shape[3]
    half_h, half_w = full_h // 2, full_w // 2
    half_size, full_size = 2 * cells + 6, 4 * cells + 4
    b, i, j = windows[:, 0], windows[:, 1], windows[:, 2]
    row0, col0 = i * 2 - 3, j * 2 - 3
    mask = _window_mask(row0, col0, half_size, half_h, half_w)
    x = _coarse_windows(coarse, b, i, j, half_size, half_h, half_w, exact_half) * mask
    # src and bgr are cropped separately: no full-resolution cat(src, bgr) is ever built.
    src32, bgr32 = src.float(), bgr.float()  # RoiAlign boxes and maps in float32 (no-ops at fp32)
    boxes = _boxes(b, row0, col0, 2.0, 2.0, half_size)
    images = torch.cat([torchvision.ops.roi_align(src32, boxes, half_size, 1.0, 1, True),
                        torchvision.ops.roi_align(bgr32, boxes, half_size, 1.0, 1, True)], dim=1) * mask
    row0, col0 = i * 4 - 2, j * 4 - 2
    boxes = _boxes(b, row0, col0, 1.0, 1.0, full_size)
    full = torch.cat([torchvision.ops.roi_align(src32, boxes, full_size, 1.0, 1, True),
                      torchvision.ops.roi_align(bgr32, boxes, full_size, 1.0, 1, True)], dim=1)
    full = full * _window_mask(row0, col0, full_size, full_h, full_w)
    # Kept as two parts: conv1 is applied to each with its slice of the weights (see
    # ``_split_first_conv``), so the 42-channel crop tensor is never concatenated.
    return SplitCrops(x.to(dtype), images.to(dtype)), full.to(dtype)


# A 2x2 block is refined as one window when at least this many of its cells are selected:
# it costs about as much as two single cells (1.94 vs 2 x 0.95 MFLOP), so fewer would be slower.
MIN_CELLS_PER_BLOCK = 2


class QuadCrops(tuple):
    """Patch-network inputs of the hybrid path: ``(blocks, singles, rows)``.

    ``blocks`` / ``singles`` are ``(half SplitCrops, full)`` pairs for the 2x2 blocks and the
    single cells; ``rows`` (N,) picks each selected cell's refined patch from
    ``cat(block patches, single patches)``.
    """

    __slots__ = ()

    def __new__(cls, blocks: tuple[Tensor, Tensor], singles: tuple[Tensor, Tensor], rows: Tensor) -> QuadCrops:
        return super().__new__(cls, (blocks, singles, rows))


def gather_patch_inputs_fast(
    hid: Tensor, pha: Tensor, fgr: Tensor, src: Tensor, bgr: Tensor, idx: Tensor, kernel_size: int, crop_method: str,
    *, exact_half: bool = False,
) -> tuple[Tensor, Tensor]:
    """Drop-in replacement of :func:`model.refiner.gather_patch_inputs` (same patches out of
    :meth:`~model.refiner.Refiner.refine_patches` once ``_quad_refine_patches`` is patched in).

    ``exact_half``: the coarse map is exactly half the half-resolution size for every input
    (``backbone_scale`` 0.25); decided from the model by :func:`fast_patches`.
    """
    if crop_method != "roi_align" or kernel_size != 3:
        return _reference_gather_patch_inputs(hid, pha, fgr, src, bgr, idx, kernel_size, crop_method)
    batch, full_h, full_w = src.shape[0], src.shape[2], src.shape[3]
    grid_h, grid_w = (full_h // 4 + 1) // 2, (full_w // 4 + 1) // 2
    b, i, j = idx[:, 0], idx[:, 1], idx[:, 2]
    bi, bj = torch.div(i, 2, rounding_mode="floor"), torch.div(j, 2, rounding_mode="floor")
    # Selected cells per 2x2 block: a dense 0/1 cell map summed over each block.
    selected = torch.zeros(batch, grid_h * 2, grid_w * 2, dtype=torch.float32, device=idx.device)
    selected = selected.index_put((b, i, j), torch.ones_like(b, dtype=torch.float32))
    counts = selected.view(batch, grid_h, 2, grid_w, 2).sum(dim=(2, 4))
    dense = counts >= MIN_CELLS_PER_BLOCK
    # One extra block (0, 0, 0) and one extra single cell (0, 0, 0) keep both batches
    # non-empty (as the reference's extra cell does); their patches are never picked. When
    # block (0, 0, 0) is also a real block, ``number`` gets two writes there: either wins, as
    # both windows are the same block with the same patches.
    zero = idx.new_zeros((1, 3))
    blocks = torch.cat([torch.nonzero(dense), zero], dim=0)
    number = torch.zeros(batch, grid_h, grid_w, dtype=idx.dtype, device=idx.device)
    number = number.index_put((blocks[:, 0], blocks[:, 1], blocks[:, 2]),
                              torch.arange(blocks.shape[0], dtype=idx.dtype, device=idx.device))
    in_block = dense[b, bi, bj]
    single_rows = torch.nonzero(~in_block).view(-1)
    singles = torch.cat([idx[single_rows], zero], dim=0)
    single_number = torch.zeros_like(b).index_put((single_rows,), torch.arange(single_rows.shape[0], dtype=idx.dtype,
                                                                               device=idx.device))
    block_row = (number[b, bi, bj] * 2 + (i - bi * 2)) * 2 + (j - bj * 2)
    rows = torch.where(in_block, block_row, blocks.shape[0] * 4 + single_number)
    coarse = torch.cat([hid, pha, fgr], dim=1).float()
    first_cells = blocks * torch.tensor([1, 2, 2], dtype=idx.dtype, device=idx.device)
    block_crops = window_crops(coarse, src, bgr, first_cells, 2, exact_half)
    single_crops = window_crops(coarse, src, bgr, singles, 1, exact_half)
    crops = QuadCrops(block_crops, single_crops, rows)
    return crops, crops  # type: ignore[return-value]  # refine_patches(x, y) receives both halves here


def _quad_refine_patches(original: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    def refine_patches(x: Tensor, y: Tensor) -> Tensor:
        if not isinstance(x, QuadCrops):
            return original(x, y)
        (block_half, block_full), (single_half, single_full), rows = x
        blocks = original(block_half, block_full)  # (Nb, 4, 8, 8): the four cells' 4x4 patches
        blocks = blocks.view(-1, 4, 2, 4, 2, 4).permute(0, 2, 4, 1, 3, 5).reshape(-1, 4, 4, 4)
        return torch.cat([blocks, original(single_half, single_full)], dim=0)[rows]

    return refine_patches


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
    return F.conv2d(first, conv.weight[:, :channels], conv.bias) + F.conv2d(second, conv.weight[:, channels:])


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


# Patches after the patch-input one (optional: a MattingBase has no refiner).
_NETWORK_PATCHES: tuple[Patch, ...] = (
    Patch("refiner", "refine_patches", _quad_refine_patches, wrap=True, optional=True,
          reason="2x2 blocks of cells refined as one window; each selected cell's patch picked from the block"),
    Patch("refiner", "first_conv", _split_first_conv, wrap=True, optional=True,
          reason="conv1 on the two crop parts instead of their 42-channel concatenation"),
    Patch("refiner", "third_conv", _split_third_conv, wrap=True, optional=True,
          reason="conv3 on its two inputs instead of their 22-channel concatenation"),
)

# backbone_scale 0.25 (the HD preset): the coarse map is exactly half the half-resolution
# size for every valid input, so the coarse windows need no per-pixel weights.
HALF_RATIO_SCALE = 0.25


def _patch_inputs(exact_half: bool) -> Patch:
    return Patch(
        "module:model.refiner",
        "gather_patch_inputs",
        functools.partial(gather_patch_inputs_fast, exact_half=exact_half),
        reason="patch inputs sampled directly (no resized, concatenated or padded whole map); 2x2 blocks of cells "
        "with 2+ selected cells as one window" + ("; coarse windows by one Gather and a fixed-weight GEMM" if exact_half else ""),
    )


# Any backbone scale (what tests patch a model with when they vary backbone_scale).
FAST_PATCHES: tuple[Patch, ...] = (_patch_inputs(exact_half=False), *_NETWORK_PATCHES)


def fast_patches(model: torch.nn.Module) -> tuple[Patch, ...]:
    """The speed rewrites for ``model``: with ``backbone_scale`` 0.25 the coarse windows use
    fixed bilinear weights (decided here, from the model, because an exported graph must be
    right for every input size, not just the traced one)."""
    exact_half = getattr(model, "backbone_scale", None) == HALF_RATIO_SCALE
    return (_patch_inputs(exact_half), *_NETWORK_PATCHES)
