"""Refiner of BackgroundMattingV2: re-estimates alpha/foreground on selected 4x4 patches.

The patch selection is written without any Python branch on the number of selected
patches (``nonzero`` on a (B, H/4, W/4) mask, then index columns), so traced and
exported graphs handle zero selected patches and any image size at run time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from .spec import KERNEL_SIZES


def select_refinement_regions(
    err: Tensor, mode: str, sample_pixels: int, threshold: float, prevent_oversampling: bool
) -> Tensor:
    """Marks the quarter-resolution cells to refine.

    Args:
        err: error map resized to quarter resolution, ``(B, 1, Hq, Wq)``, 0..1.
        mode: ``"sampling"`` (top ``sample_pixels // 16`` cells per image) or
            ``"thresholding"`` (cells with error > ``threshold``).

    Returns:
        ``(B, 1, Hq, Wq)`` float mask, 1 where a cell is refined.
    """
    if mode == "sampling":
        flat = err.flatten(1)
        k = sample_pixels // 16
        # Pad with k cells of error -1 (below any clamped error) so that topk(k) is valid
        # whatever the grid size: a k larger than the grid no longer crashes, and no
        # shape-dependent Python value is baked into exported graphs.
        padding = torch.full_like(flat[:, :1], -1.0).expand(-1, k)
        padded = torch.cat([flat, padding], dim=1)
        indices = padded.topk(k, dim=1, sorted=False).indices
        ref = torch.zeros_like(padded).scatter(1, indices, 1.0)
        ref = ref[:, : flat.shape[1]]
        if prevent_oversampling:
            ref = ref * (flat > 0).to(ref.dtype)
        return ref.view_as(err)
    return (err > threshold).to(err.dtype)


def crop_patches(x: Tensor, idx: Tensor, size: int, padding: int, method: str) -> Tensor:
    """Crops one window per selected cell.

    Args:
        x: ``(B, C, H, W)`` map.
        idx: ``(N, 3)`` int64 rows ``(b, i, j)`` of selected cells.
        size: stride of the cell grid on ``x`` (window start is ``(i*size, j*size)``).
        padding: zero padding added around ``x`` before cropping.
        method: ``"unfold"``, ``"roi_align"`` or ``"gather"`` .

    Returns:
        ``(N, C, size + 2*padding, size + 2*padding)``.
    """
    if padding != 0:
        x = F.pad(x, (padding, padding, padding, padding))
    window = size + 2 * padding
    if method == "unfold":
        return crop_unfold(x, idx, size, window)
    if method == "roi_align":
        return crop_roi_align(x, idx, size, window)
    if method == "gather":
        return crop_gather(x, idx, size, window)
    raise ValueError(f"patch_crop_method='{method}' is not valid; valid: unfold, roi_align, gather")


# One function per crop method (on the padded map), so that an exporter can compile a
# dispatcher that leaves one out: the scripted TorchScript file references torchvision's
# roi_align op only when that crop is chosen (exporters/torchscript.py).
def crop_unfold(x: Tensor, idx: Tensor, size: int, window: int) -> Tensor:
    """``(N, C, window, window)`` windows at ``(i*size, j*size)`` of the padded ``x``, via unfold."""
    b, i, j = idx[:, 0], idx[:, 1], idx[:, 2]
    windows = x.permute(0, 2, 3, 1).unfold(1, window, size).unfold(2, window, size)
    return windows[b, i, j]


def crop_roi_align(x: Tensor, idx: Tensor, size: int, window: int) -> Tensor:
    """The same windows via ``torchvision.ops.roi_align`` (one ONNX RoiAlign node)."""
    b, i, j = idx[:, 0], idx[:, 1], idx[:, 2]
    # Boxes stay in float32 whatever x's dtype: coordinates such as 1919.5 are not
    # representable in float16. Each 1-pixel bin centred on an integer coordinate
    # samples exactly one pixel, so the crop is an exact copy.
    start_y = (i * size).to(torch.float32) - 0.5
    start_x = (j * size).to(torch.float32) - 0.5
    boxes = torch.stack([b.to(torch.float32), start_x, start_y, start_x + window, start_y + window], dim=1)
    crops = torchvision.ops.roi_align(x.float(), boxes, window, 1.0, 1, False)
    return crops.to(x.dtype)


def crop_gather(x: Tensor, idx: Tensor, size: int, window: int) -> Tensor:
    """The same windows via one gather of per-pixel flat indices."""
    b, i, j = idx[:, 0], idx[:, 1], idx[:, 2]
    height, width = x.shape[2], x.shape[3]
    offsets = torch.arange(window, device=x.device, dtype=idx.dtype)
    rows = (i * size).view(-1, 1) + offsets.view(1, -1)  # (N, window)
    cols = (j * size).view(-1, 1) + offsets.view(1, -1)
    # Per-pixel flat indices into the channels-last (B*H*W, C) view: batch stride H*W.
    pixel = (b.view(-1, 1, 1) * height + rows.view(-1, window, 1)) * width + cols.view(-1, 1, window)
    pixels = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
    return pixels[pixel.flatten()].view(-1, window, window, x.shape[1]).permute(0, 3, 1, 2).contiguous()


def replace_patches(x: Tensor, patches: Tensor, idx: Tensor, method: str) -> Tensor:
    """Overwrites the 4x4 block of each selected cell with its refined patch.

    Args:
        x: ``(B, C, H, W)`` full-resolution map, H and W divisible by 4.
        patches: ``(N, C, 4, 4)``.
        idx: ``(N, 3)`` int64 rows ``(b, i, j)``.

    Returns:
        A new ``(B, C, H, W)`` tensor (``x`` is not modified).
    """
    batch, channels, height, width = x.shape
    b, i, j = idx[:, 0], idx[:, 1], idx[:, 2]
    if method == "scatter_nd":
        blocks = x.view(batch, channels, height // 4, 4, width // 4, 4).permute(0, 2, 4, 1, 3, 5)
        blocks = blocks.index_put((b, i, j), patches)
        return blocks.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, height, width)
    if method == "scatter_element":
        offsets = torch.arange(4, device=x.device, dtype=idx.dtype)
        channel = torch.arange(channels, device=x.device, dtype=idx.dtype)
        rows = (i * 4).view(-1, 1, 1, 1) + offsets.view(1, 1, 4, 1)
        cols = (j * 4).view(-1, 1, 1, 1) + offsets.view(1, 1, 1, 4)
        # Batch stride is C*H*W (the original used H*W, wrong for batch >= 2).
        flat = ((b.view(-1, 1, 1, 1) * channels + channel.view(1, -1, 1, 1)) * height + rows) * width + cols
        out = x.reshape(-1).scatter(0, flat.reshape(-1), patches.reshape(-1))
        return out.view(batch, channels, height, width)
    raise ValueError(f"patch_replace_method='{method}' is not valid; valid: scatter_nd, scatter_element")


def gather_patch_inputs(
    hid: Tensor, pha: Tensor, fgr: Tensor, src: Tensor, bgr: Tensor, idx: Tensor, kernel_size: int, crop_method: str
) -> tuple[Tensor, Tensor]:
    """The two inputs of the patch network for each selected cell.

    Args:
        hid, pha, fgr: coarse maps ``(B, 32|1|3, Hc, Wc)``.
        src, bgr: ``(B, 3, H, W)`` full resolution.
        idx: ``(N, 3)`` rows ``(b, i, j)`` (cells of the H/4 x W/4 grid).

    Returns:
        ``(N, 42, S, S)`` crops of ``cat(hid, pha, fgr, src, bgr)`` resized to half
        resolution and zero-padded (S = 8 for kernel 3, 2 for kernel 1), and
        ``(N, 6, S', S')`` crops of the zero-padded full-resolution ``src_bgr`` (S' = 8 or 4).

    This is the reference algorithm (whole maps resized, then cropped). Exporters may swap
    this module-level function for an equivalent that samples only the patches
    (``exporters/rewrites.py``).
    """
    src_bgr = torch.cat([src, bgr], dim=1)
    half_h, half_w = src_bgr.shape[2] // 2, src_bgr.shape[3] // 2
    x = torch.cat([hid, pha, fgr], dim=1)
    x = F.interpolate(x, size=(half_h, half_w), mode="bilinear", align_corners=False)
    y = F.interpolate(src_bgr, size=(half_h, half_w), mode="bilinear", align_corners=False)
    half_padding = 3 if kernel_size == 3 else 0
    full_padding = 2 if kernel_size == 3 else 0
    x = crop_patches(torch.cat([x, y], dim=1), idx, 2, half_padding, crop_method)
    y = crop_patches(src_bgr, idx, 4, full_padding, crop_method)
    return x, y


class Refiner(nn.Module):
    """Refinement network: four unpadded convs applied to selected patches.

    Args:
        kernel_size: 3 (the released weights) or 1.

    The selection and patch settings are arguments of :meth:`forward` so that the
    owning :class:`~model.MattingRefine` (and its scripted TorchScript export) can change
    them after construction.
    """

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size not in KERNEL_SIZES:
            raise ValueError(f"refine_kernel_size={kernel_size!r} is not valid; valid: {list(KERNEL_SIZES)}")
        self.kernel_size = kernel_size
        channels = [32, 24, 16, 12, 4]
        self.conv1 = nn.Conv2d(channels[0] + 6 + 4, channels[1], kernel_size, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[1])
        self.conv2 = nn.Conv2d(channels[1], channels[2], kernel_size, bias=False)
        self.bn2 = nn.BatchNorm2d(channels[2])
        self.conv3 = nn.Conv2d(channels[2] + 6, channels[3], kernel_size, bias=False)
        self.bn3 = nn.BatchNorm2d(channels[3])
        self.conv4 = nn.Conv2d(channels[3], channels[4], kernel_size, bias=True)
        self.relu = nn.ReLU(True)

    def refine_patches(self, x: Tensor, y: Tensor) -> Tensor:
        """Runs the patch network.

        Args:
            x: ``(N, 42, S, S)`` half-resolution crops (hid, pha, fgr residual, src, bgr),
                S = 8 (kernel 3) or 2 (kernel 1).
            y: ``(N, 6, S', S')`` full-resolution crops of (src, bgr), S' = 8 or 4.

        Returns:
            ``(N, 4, 4, 4)`` refined (alpha, fgr residual) patches.
        """
        x = self.relu(self.bn1(self.first_conv(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = F.interpolate(x, size=(y.shape[2], y.shape[3]), mode="nearest")
        x = self.relu(self.bn3(self.third_conv(x, y)))
        return self.conv4(x)

    def first_conv(self, x: Tensor) -> Tensor:
        """``conv1`` on the half-resolution crops (a seam for export rewrites)."""
        return self.conv1(x)

    def third_conv(self, x: Tensor, y: Tensor) -> Tensor:
        """``conv3`` on ``cat(x, y)`` (a seam for export rewrites)."""
        return self.conv3(torch.cat([x, y], dim=1))

    def forward(
        self,
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
        crop_method: str = "unfold",
        replace_method: str = "scatter_nd",
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Refines the coarse result to full resolution.

        Args:
            src, bgr: ``(B, 3, H, W)``, 0..1, H and W divisible by 4.
            pha: coarse alpha ``(B, 1, Hc, Wc)``, 0..1.
            fgr: coarse foreground residual ``(B, 3, Hc, Wc)``, unbounded.
            err: coarse error ``(B, 1, Hc, Wc)``, 0..1.
            hid: coarse hidden features ``(B, 32, Hc, Wc)``, >= 0.

        Returns:
            ``pha (B, 1, H, W)`` and ``fgr`` residual ``(B, 3, H, W)``, both unclamped, and
            ``ref (B, 1, H/4, W/4)``, 1 where a patch was refined.
        """
        full_h, full_w = src.shape[2], src.shape[3]
        half_h, half_w = full_h // 2, full_w // 2
        quarter_h, quarter_w = full_h // 4, full_w // 4

        if mode == "full":
            src_bgr = torch.cat([src, bgr], dim=1)
            x = torch.cat([hid, pha, fgr], dim=1)
            x = F.interpolate(x, size=(half_h, half_w), mode="bilinear", align_corners=False)
            y = F.interpolate(src_bgr, size=(half_h, half_w), mode="bilinear", align_corners=False)
            x = torch.cat([x, y], dim=1)
            if self.kernel_size == 3:
                x = F.pad(x, (3, 3, 3, 3))
                y = F.pad(src_bgr, (2, 2, 2, 2))
            else:
                y = src_bgr
            x = self.refine_patches(x, y)
            ref = torch.ones_like(src[:, :1, :quarter_h, :quarter_w])
            return x[:, :1], x[:, 1:], ref

        err = F.interpolate(err, size=(quarter_h, quarter_w), mode="bilinear", align_corners=False)
        ref = select_refinement_regions(err, mode, sample_pixels, threshold, prevent_oversampling)
        idx = torch.nonzero(ref.squeeze(1) > 0)

        # pha and fgr stay separate tensors: no full-resolution concat and slices.
        pha_full = F.interpolate(pha, size=(full_h, full_w), mode="bilinear", align_corners=False)
        fgr_full = F.interpolate(fgr, size=(full_h, full_w), mode="bilinear", align_corners=False)

        # No branch on idx.shape[0]: with zero selected cells the replace is a no-op, so
        # exported graphs stay correct. One extra (discarded) cell keeps the patch batch
        # non-empty: convolutions on an empty batch are a data-dependent branch torch.export
        # cannot capture, and some runtimes reject zero-sized tensors.
        padded_idx = torch.cat([idx, idx.new_zeros((1, 3))], dim=0)
        x, y = gather_patch_inputs(hid, pha, fgr, src, bgr, padded_idx, self.kernel_size, crop_method)
        patches = self.refine_patches(x, y)[:-1]
        pha_full = replace_patches(pha_full, patches[:, :1], idx, replace_method)
        fgr_full = replace_patches(fgr_full, patches[:, 1:], idx, replace_method)
        return pha_full, fgr_full, ref
