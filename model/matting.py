"""MattingBase and MattingRefine, checkpoint-compatible with the BGMv2 release."""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from .decoder import Decoder
from .mobilenet import MobileNetV2Encoder
from .refiner import Refiner
from .resnet import ResNetEncoder
from .spec import BACKBONES, refine_settings_error


def validate_inputs(src: Tensor, bgr: Tensor) -> None:
    """Raises ``ValueError`` unless src and bgr are float (B, 3, H, W) tensors of one shape."""
    for name, tensor in (("src", src), ("bgr", bgr)):
        if not isinstance(tensor, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4 or tensor.shape[1] != 3:
            raise ValueError(f"{name} must have shape (B, 3, H, W), got {tuple(tensor.shape)}")
        if not tensor.is_floating_point():
            raise ValueError(f"{name} must be a float tensor with values in 0..1, got dtype {tensor.dtype}")
    if src.shape != bgr.shape:
        raise ValueError(f"src and bgr must have the same shape, got {tuple(src.shape)} and {tuple(bgr.shape)}")
    if src.dtype != bgr.dtype:
        raise ValueError(f"src and bgr must have the same dtype, got {src.dtype} and {bgr.dtype}")


class MattingBase(nn.Module):
    """Encoder-decoder matting network, run at the input resolution.

    Args:
        backbone: ``"resnet50"``, ``"resnet101"`` or ``"mobilenetv2"``.

    Forward: ``src, bgr (B, 3, H, W), 0..1`` → ``pha (B, 1, H, W) 0..1``,
    ``fgr (B, 3, H, W) 0..1``, ``err (B, 1, H, W) 0..1``, ``hid (B, 32, H, W) >= 0``.
    """

    def __init__(self, backbone: str) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone={backbone!r} is not valid; valid: {list(BACKBONES)}")
        self.backbone_name = backbone
        if backbone in ("resnet50", "resnet101"):
            self.backbone = ResNetEncoder(in_channels=6, variant=backbone)
            self.aspp = ASPP(2048, [3, 6, 9])
            self.decoder = Decoder([128, 64, 48, 37], [256, 512, 256, 64, 6])
        else:
            self.backbone = MobileNetV2Encoder(6)
            self.aspp = ASPP(320, [3, 6, 9])
            self.decoder = Decoder([128, 64, 48, 37], [256, 32, 24, 16, 6])

    def run_network(self, src: Tensor, bgr: Tensor) -> Tensor:
        """Backbone + ASPP + decoder: ``(B, 37, H, W)`` raw channels."""
        x, *shortcuts = self.backbone(torch.cat([src, bgr], dim=1))
        x = self.aspp(x)
        return self.decoder(x, *shortcuts)

    def validate(self, src: Tensor, bgr: Tensor) -> None:
        """Input checks; an export patch replaces this with a no-op (shapes are symbolic there)."""
        validate_inputs(src, bgr)

    def forward(self, src: Tensor, bgr: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        pha, fgr, err, hid = self.forward_list(src, bgr)
        return pha, fgr, err, hid

    def forward_list(self, src: Tensor, bgr: Tensor) -> List[Tensor]:  # noqa: UP006 - TorchScript
        """The forward pass returning a list (scripted as is by the TorchScript export)."""
        self.validate(src, bgr)
        x = self.run_network(src, bgr)
        pha = x[:, 0:1].clamp(0.0, 1.0)
        fgr = (x[:, 1:4] + src).clamp(0.0, 1.0)
        err = x[:, 4:5].clamp(0.0, 1.0)
        hid = x[:, 5:].relu()
        return [pha, fgr, err, hid]


class MattingRefine(MattingBase):
    """Base network on a downsampled copy, then patch refinement at full resolution.

    Args (same names, order and defaults as the original):
        backbone: ``"resnet50"``, ``"resnet101"`` or ``"mobilenetv2"``.
        backbone_scale: downsample factor for the base network, in [0.01, 0.5].
        refine_mode: ``"sampling"``, ``"thresholding"`` or ``"full"``.
        refine_sample_pixels: pixels refined per image in sampling mode (16 per cell).
        refine_threshold: error threshold in thresholding mode.
        refine_kernel_size: 3 (released weights) or 1.
        refine_prevent_oversampling: in sampling mode, skip cells with zero error.
        refine_patch_crop_method: ``"unfold"``, ``"roi_align"`` or ``"gather"``.
        refine_patch_replace_method: ``"scatter_nd"`` or ``"scatter_element"``.

    The settings other than the kernel size may be changed after construction.

    Forward: ``src, bgr (B, 3, H, W), 0..1``, H and W divisible by 4 →
    ``pha (B, 1, H, W) 0..1``, ``fgr (B, 3, H, W) 0..1``, ``pha_sm (B, 1, Hc, Wc) 0..1``,
    ``fgr_sm (B, 3, Hc, Wc) 0..1``, ``err_sm (B, 1, Hc, Wc) 0..1``,
    ``ref_sm (B, 1, H/4, W/4) in {0, 1}``, with ``Hc = floor(H * backbone_scale)``.
    """

    def __init__(
        self,
        backbone: str,
        backbone_scale: float = 1 / 4,
        refine_mode: str = "sampling",
        refine_sample_pixels: int = 80_000,
        refine_threshold: float = 0.1,
        refine_kernel_size: int = 3,
        refine_prevent_oversampling: bool = True,
        refine_patch_crop_method: str = "unfold",
        refine_patch_replace_method: str = "scatter_nd",
    ) -> None:
        super().__init__(backbone)
        self.refiner = Refiner(refine_kernel_size)
        self.backbone_scale = float(backbone_scale)
        self.refine_mode = refine_mode
        self.refine_sample_pixels = int(refine_sample_pixels)
        self.refine_threshold = float(refine_threshold)
        self.refine_prevent_oversampling = bool(refine_prevent_oversampling)
        self.refine_patch_crop_method = refine_patch_crop_method
        self.refine_patch_replace_method = refine_patch_replace_method
        self.check_settings()

    def check_settings(self) -> None:
        """Raises ``ValueError`` naming the first setting that is not valid."""
        problem = refine_settings_error(
            self.backbone_scale, self.refine_mode, self.refine_sample_pixels, self.refine_threshold,
            self.refiner.kernel_size, self.refine_patch_crop_method, self.refine_patch_replace_method, naming="argument",
        )
        if problem:
            raise ValueError(problem)

    def validate(self, src: Tensor, bgr: Tensor) -> None:
        validate_inputs(src, bgr)
        height, width = src.shape[2], src.shape[3]
        if height % 4 != 0 or width % 4 != 0:
            raise ValueError(
                f"src/bgr height and width must be divisible by 4, got {height}x{width} (H x W); "
                "pad or resize the images (the Predictor pads automatically)"
            )
        self.check_settings()

    def downsample(self, x: Tensor) -> Tensor:
        """Bilinear resize to ``floor(H * backbone_scale) x floor(W * backbone_scale)``.

        The scale factor is recomputed from the output size, as in the original; written
        with ``scale_factor`` so that exporters keep the size symbolic.
        """
        return F.interpolate(
            x, scale_factor=self.backbone_scale, mode="bilinear", align_corners=False, recompute_scale_factor=True
        )

    def forward(self, src: Tensor, bgr: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # type: ignore[override]
        pha, fgr, pha_sm, fgr_sm, err_sm, ref_sm = self.forward_list(src, bgr)
        return [pha, fgr, pha_sm, fgr_sm, err_sm, ref_sm]

    def forward_list(self, src: Tensor, bgr: Tensor) -> List[Tensor]:  # noqa: UP006 - TorchScript
        """The forward pass returning a list: the TorchScript export scripts this method
        itself (it cannot call ``forward`` under another name), so there is one copy."""
        self.validate(src, bgr)
        src_sm = self.downsample(src)
        bgr_sm = self.downsample(bgr)
        x = self.run_network(src_sm, bgr_sm)
        pha_sm = x[:, 0:1].clamp(0.0, 1.0)
        fgr_residual_sm = x[:, 1:4]
        err_sm = x[:, 4:5].clamp(0.0, 1.0)
        hid_sm = x[:, 5:].relu()
        pha, fgr_residual, ref_sm = self.refiner(
            src,
            bgr,
            pha_sm,
            fgr_residual_sm,
            err_sm,
            hid_sm,
            self.refine_mode,
            self.refine_sample_pixels,
            self.refine_threshold,
            self.refine_prevent_oversampling,
            self.refine_patch_crop_method,
            self.refine_patch_replace_method,
        )
        pha = pha.clamp(0.0, 1.0)
        fgr = (fgr_residual + src).clamp(0.0, 1.0)
        fgr_sm = (src_sm + fgr_residual_sm).clamp(0.0, 1.0)
        return [pha, fgr, pha_sm, fgr_sm, err_sm, ref_sm]
