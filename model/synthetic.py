"""Deterministic synthetic weights whose error map is not degenerate.

With PyTorch's default initialisation the BatchNorm running statistics (mean 0, var 1)
do not match the activations, and the mobilenetv2 error channel ends up ~all zeros:
thresholding refines nothing and a parity check never exercises the refiner. Here, from a
seed, we (1) draw the default initialisation, (2) damp residual branches (gain 0.1) and set every BatchNorm's running statistics
(variance floored at 1, so no channel is amplified)
from a seeded calibration batch (data-dependent init), and (3) rescale the decoder's error
channel so its quantiles on that batch are fixed (median 0, 80th percentile 0.2). Each
refine mode then refines some but not all patches on random and real photo pairs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import Bottleneck

from .matting import MattingBase, MattingRefine

CALIBRATION_SIZE = (128, 160)
ERR_QUANTILES = ((0.5, 0.0), (0.8, 0.2))
# Other decoder outputs, per channel: (quantile, value) pairs. Alpha spans 0..1 with both
# ends clamped on part of the image; the foreground residual and hidden channels stay O(0.1..1).
PHA_QUANTILES = ((0.1, 0.0), (0.9, 1.0))
FGR_QUANTILES = ((0.25, -0.1), (0.75, 0.1))
HID_QUANTILES = ((0.25, -0.25), (0.75, 0.25))
VAR_FLOOR = 1.0
RESIDUAL_GAIN = 0.1


def calibration_batch(seed: int, size: tuple[int, int] = CALIBRATION_SIZE) -> tuple[Tensor, Tensor]:
    """Two seeded (src, bgr) pairs: uniform noise, and a smooth field with a pasted blob."""
    generator = torch.Generator().manual_seed(seed)
    height, width = size
    noise_src = torch.rand(1, 3, height, width, generator=generator)
    noise_bgr = torch.rand(1, 3, height, width, generator=generator)
    coarse = torch.rand(1, 3, height // 16, width // 16, generator=generator)
    smooth_bgr = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    ys = torch.linspace(-1, 1, height).view(-1, 1)
    xs = torch.linspace(-1, 1, width).view(1, -1)
    blob = ((ys / 0.6) ** 2 + (xs / 0.4) ** 2 < 1).float().view(1, 1, height, width)
    colour = torch.rand(1, 3, 1, 1, generator=generator)
    smooth_src = blob * colour + (1 - blob) * smooth_bgr
    return torch.cat([noise_src, smooth_src]), torch.cat([noise_bgr, smooth_bgr])


def _round_sig(value: float, digits: int = 4) -> float:
    """Rounds to significant digits so that tiny float differences across machines vanish."""
    if value == 0 or not math.isfinite(value):
        return 0.0
    return round(value, digits - 1 - int(math.floor(math.log10(abs(value)))))


@torch.no_grad()
def init_synthetic_weights(model: MattingBase, seed: int) -> MattingBase:
    """Initialises ``model`` in place from ``seed`` (see module docstring) and returns it in eval mode."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)):
            module.reset_parameters()
    for module in model.modules():
        # Damped residual branches: BatchNorm networks at random init amplify rounding error
        # exponentially with depth; a small gain on each residual branch keeps the network
        # close to well-conditioned (as trained networks are), so that fp32 runtimes agree.
        if isinstance(module, Bottleneck):
            module.bn3.weight.fill_(RESIDUAL_GAIN)
        elif isinstance(module, InvertedResidual) and module.use_res_connect:
            module.conv[-1].weight.fill_(RESIDUAL_GAIN)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: running stats = calibration batch stats
    src, bgr = calibration_batch(seed)
    model.train()
    if isinstance(model, MattingRefine):
        saved = model.refine_mode
        model.refine_mode = "full"  # every refiner BatchNorm sees data
        model(src, bgr)
        model.refine_mode = saved
    else:
        model(src, bgr)
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1
            module.num_batches_tracked.fill_(0)
            # Near-constant channels (dead ReLUs, the ASPP pooling branch over 2 samples) would
            # otherwise be scaled by up to 1/sqrt(eps): that amplifies float rounding so much
            # that fp32 runtimes disagree at 1e-3. Real checkpoints are not like that.
            module.running_var.clamp_(min=VAR_FLOOR)

    # Error channel: affine map so that chosen quantiles land on chosen values.
    if isinstance(model, MattingRefine):
        src_sm, bgr_sm = model.downsample(src), model.downsample(bgr)
    else:
        src_sm, bgr_sm = src, bgr
    raw = model.run_network(src_sm, bgr_sm)
    targets = [PHA_QUANTILES] + [FGR_QUANTILES] * 3 + [ERR_QUANTILES] + [HID_QUANTILES] * (raw.shape[1] - 5)
    _calibrate_output(model.decoder.conv4, raw, targets)
    if isinstance(model, MattingRefine):
        # The refiner's last conv likewise, measured in "full" mode (every patch).
        saved = model.refine_mode
        model.refine_mode = "full"
        pha, fgr = model(src, bgr)[:2]
        model.refine_mode = saved
        refined = torch.cat([pha, fgr - src], dim=1)  # pre-clamp values are not exposed; close enough
        _calibrate_output(model.refiner.conv4, refined, [PHA_QUANTILES] + [FGR_QUANTILES] * 3)
    return model


def _calibrate_output(conv: nn.Conv2d, values: Tensor, targets: list[tuple[tuple[float, float], ...]]) -> None:
    """Per output channel, an affine map of ``conv`` so that quantiles of ``values`` hit targets."""
    for channel, ((q_lo, v_lo), (q_hi, v_hi)) in enumerate(targets):
        flat = values[:, channel].flatten()
        lo, hi = torch.quantile(flat, q_lo).item(), torch.quantile(flat, q_hi).item()
        scale = _round_sig((v_hi - v_lo) / max(hi - lo, 1e-3))
        shift = _round_sig(v_lo - scale * lo)
        conv.weight[channel] *= scale
        assert conv.bias is not None
        conv.bias[channel] = conv.bias[channel] * scale + shift
