"""Decoder of BackgroundMattingV2 (four upsample-concat-conv stages)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Decoder(nn.Module):
    """Upsamples the ASPP output through the encoder's skip features.

    Args:
        channels: output channels of the four stages, ``[128, 64, 48, 37]``.
        feature_channels: channels of ``[x4, x3, x2, x1, x0]``.

    Forward: ``(x4, x3, x2, x1, x0)`` → ``(B, channels[-1], H, W)`` at x0's size, unbounded.
    """

    def __init__(self, channels: list[int], feature_channels: list[int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(feature_channels[0] + feature_channels[1], channels[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels[0])
        self.conv2 = nn.Conv2d(channels[0] + feature_channels[2], channels[1], 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels[1])
        self.conv3 = nn.Conv2d(channels[1] + feature_channels[3], channels[2], 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels[2])
        self.conv4 = nn.Conv2d(channels[2] + feature_channels[4], channels[3], 3, padding=1, bias=True)
        self.relu = nn.ReLU(True)

    def forward(self, x4: Tensor, x3: Tensor, x2: Tensor, x1: Tensor, x0: Tensor) -> Tensor:
        x = F.interpolate(x4, size=x3.shape[2:], mode="bilinear", align_corners=False)
        x = self.relu(self.bn1(self.conv1(torch.cat([x, x3], dim=1))))
        x = F.interpolate(x, size=x2.shape[2:], mode="bilinear", align_corners=False)
        x = self.relu(self.bn2(self.conv2(torch.cat([x, x2], dim=1))))
        x = F.interpolate(x, size=x1.shape[2:], mode="bilinear", align_corners=False)
        x = self.relu(self.bn3(self.conv3(torch.cat([x, x1], dim=1))))
        x = F.interpolate(x, size=x0.shape[2:], mode="bilinear", align_corners=False)
        return self.conv4(torch.cat([x, x0], dim=1))
