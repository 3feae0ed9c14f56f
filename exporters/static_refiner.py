"""A static-shape refiner: the reference patch selection with a fixed patch count, no ``nonzero``.

The reference :meth:`model.refiner.Refiner.forward` turns its selection mask into patch
indices with ``torch.nonzero``, whose row count depends on the data. torch.export's
successors need static (or symbolic, never data-dependent) sizes: ExecuTorch's XNNPACK
delegate and memory planner, AOTInductor, LiteRT and Core ML all reject or fail on it
(docs/targets.md). TensorRT and the WebGPU backends lack ``NonZero`` too.

**Sampling** selects, per image, exactly the reference's cells with exactly the reference's
operation, but takes the ``k = sample_pixels // 16`` top-k *indices* as the patch list
instead of scattering them into a mask and asking ``nonzero`` for them back:

1. The quarter-resolution error row is padded with ``k`` cells of error -1 (as the
   reference does, so that a ``k`` larger than the grid stays valid) and ``topk(k)`` gives
   ``(B, k)`` values and indices: the reference's cells, in another order.
2. A candidate is *accepted* when it is a real cell (value >= 0: padding cells hold -1)
   and, with ``prevent_oversampling``, when its error is > 0: the reference's rule.
3. All ``B * k`` candidates are cropped and refined (a rejected one crops cell 0: any valid
   window). Accepted patches are written to their cell; rejected ones to a *dummy cell
   row* appended below the image (the full-resolution maps are padded by 4 rows for the
   replace, then cropped back), so no data-dependent branch or size exists anywhere.
4. ``ref_sm`` is the reference's mask: the accepted flags scattered at the indices.

Every accepted cell is unique (top-k indices are distinct), so each real cell is written
once; the dummy row may be written many times, which no output keeps. Outputs equal the
reference refiner's exactly in eager PyTorch (tests/exporters/test_static_refiner.py).

**Full** mode already has static shapes (whole-map convolutions) and is kept as it is.
**Thresholding** selects a data-dependent number of cells; a static graph would have to
budget every cell of the grid (9x the work of full mode at HD, since neighbouring windows
overlap), so it is refused with :data:`exporters.torch_program.THRESHOLDING_REFUSAL` (use sampling or full).

Per-target options (:class:`StaticOptions`): LiteRT's converter needs the top-k indices
as int32 (its ``stablehlo.concatenate`` rejects mixed index types), while ExecuTorch's
runtime failed on an int32 build (error 0x12), so the index dtype is a setting; the
Core ML converter has no ``__and__`` on booleans, so the acceptance flags are combined by
multiplying 0/1 floats everywhere.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from model import refiner as _refiner

from .patcher import EXPORT_PATCHES, Patch
from .torch_program import StaticOptions, check_static_mode

__all__ = ["StaticOptions", "check_static_mode", "static_candidates", "static_patches", "static_refiner_forward"]

def static_candidates(err_q: Tensor, sample_pixels: int, prevent_oversampling: bool,
                      index_dtype: torch.dtype = torch.int64) -> tuple[Tensor, Tensor, Tensor]:
    """The reference's sampling selection as a fixed-size candidate list.

    Args:
        err_q: error map at quarter resolution ``(B, 1, Hq, Wq)``, 0..1.
        sample_pixels: pixel budget per image (``k = sample_pixels // 16`` cells).
        prevent_oversampling: reject candidates with zero error.
        index_dtype: dtype of the returned indices.

    Returns:
        ``cells (B, k)``: flat cell indices in ``[0, Hq*Wq)`` (rejected candidates hold 0),
        ``accepted (B, k)``: float 1.0 where the candidate is refined, else 0.0, and
        ``ref (B, 1, Hq, Wq)``: the reference's selection mask.
    """
    flat = err_q.flatten(1)
    cells = flat.shape[1]
    k = sample_pixels // 16
    # The reference's padding and topk, unchanged: the same cells come out.
    padding = torch.full_like(flat[:, :1], -1.0).expand(-1, k)
    padded = torch.cat([flat, padding], dim=1)
    values, indices = padded.topk(k, dim=1, sorted=False)
    indices = indices.to(index_dtype)
    # 0/1 floats multiplied, not booleans and-ed: Core ML's converter has no __and__.
    accepted = (values >= 0).to(flat.dtype)
    if prevent_oversampling:
        accepted = accepted * (values > 0).to(flat.dtype)
    ref = torch.zeros_like(padded).scatter(1, indices.to(torch.int64), accepted)[:, :cells]
    valid = torch.where(accepted > 0, indices, torch.zeros_like(indices))
    return valid, accepted, ref.view_as(err_q)


def static_refiner_forward(
    refiner: torch.nn.Module,
    options: StaticOptions,
    src: Tensor,
    bgr: Tensor,
    pha: Tensor,
    fgr: Tensor,
    err: Tensor,
    hid: Tensor,
    mode: str = "sampling",
    sample_pixels: int = 80_000,
    threshold: float = 0.1,
    prevent_oversampling: bool = True,
    crop_method: str = "gather",
    replace_method: str = "scatter_element",
) -> tuple[Tensor, Tensor, Tensor]:
    """Drop-in :meth:`model.refiner.Refiner.forward` with static shapes (see the module docstring).

    Args and returns as :meth:`model.refiner.Refiner.forward`; ``options`` picks the index dtype.

    Raises:
        UsageError: thresholding mode (:data:`exporters.torch_program.THRESHOLDING_REFUSAL`).
    """
    if mode == "full":
        return type(refiner).forward(refiner, src, bgr, pha, fgr, err, hid, mode, sample_pixels, threshold,
                                     prevent_oversampling, crop_method, replace_method)
    check_static_mode(mode)
    batch, full_h, full_w = src.shape[0], src.shape[2], src.shape[3]
    quarter_h, quarter_w = full_h // 4, full_w // 4
    err = F.interpolate(err, size=(quarter_h, quarter_w), mode="bilinear", align_corners=False)
    index_dtype = options.torch_index_dtype
    cells, accepted, ref = static_candidates(err, sample_pixels, prevent_oversampling, index_dtype)
    k = cells.shape[1]

    # Row and column of each flat cell index read from two tables, not by division: Core ML's
    # converter types an integer floor division as float (and its stack then refuses it).
    rows = torch.arange(quarter_h, dtype=index_dtype, device=src.device).view(-1, 1).expand(-1, quarter_w)
    cols = torch.arange(quarter_w, dtype=index_dtype, device=src.device).view(1, -1).expand(quarter_h, -1)
    row, col = rows.reshape(-1)[cells], cols.reshape(-1)[cells]
    image = torch.arange(batch, dtype=index_dtype, device=src.device).view(-1, 1).expand(-1, k)
    idx = torch.stack([image, row, col], dim=2).reshape(-1, 3)

    x, y = _refiner.gather_patch_inputs(hid, pha, fgr, src, bgr, idx.to(torch.int64), refiner.kernel_size, crop_method)
    patches = refiner.refine_patches(x, y)

    # Rejected candidates write to cell (Hq, 0): a row of cells below the image, cropped away.
    keep = accepted.to(index_dtype)
    target_row = (row * keep + quarter_h * (1 - keep)).to(index_dtype)
    target = torch.stack([image, target_row, (col * keep).to(index_dtype)], dim=2).reshape(-1, 3)
    target = target.to(torch.int64)
    pha_full = F.interpolate(pha, size=(full_h, full_w), mode="bilinear", align_corners=False)
    fgr_full = F.interpolate(fgr, size=(full_h, full_w), mode="bilinear", align_corners=False)
    pha_full = _replace_below(pha_full, patches[:, :1], target, replace_method)
    fgr_full = _replace_below(fgr_full, patches[:, 1:], target, replace_method)
    return pha_full, fgr_full, ref


def _replace_below(x: Tensor, patches: Tensor, target: Tensor, method: str) -> Tensor:
    """:func:`model.refiner.replace_patches` on ``x`` with 4 zero rows appended (the dummy
    cell row), then those rows cut off again."""
    height = x.shape[2]
    padded = F.pad(x, (0, 0, 0, 4))
    return _refiner.replace_patches(padded, patches, target, method)[:, :, :height]


def _static_forward(options: StaticOptions) -> Callable[[Callable[..., tuple[Tensor, Tensor, Tensor]]], Callable[..., tuple[Tensor, Tensor, Tensor]]]:
    def factory(original: Callable[..., tuple[Tensor, Tensor, Tensor]]) -> Callable[..., tuple[Tensor, Tensor, Tensor]]:
        refiner = original.__self__  # type: ignore[attr-defined]
        return functools.partial(static_refiner_forward, refiner, options)

    return factory


def static_patches(options: StaticOptions | None = None) -> tuple[Patch, ...]:
    """The patches that make a MattingRefine exportable with static shapes (after
    :data:`exporters.patcher.EXPORT_PATCHES`): the refiner's ``forward`` replaced by
    :func:`static_refiner_forward`. A MattingBase has no refiner and is unchanged."""
    options = options or StaticOptions()
    return (
        *EXPORT_PATCHES,
        Patch("refiner", "forward", _static_forward(options), wrap=True, optional=True,
              reason="nonzero has a data-dependent size; the top-k indices are the patch list (fixed count)"),
    )
