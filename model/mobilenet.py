"""MobileNetV2 encoder of BackgroundMattingV2."""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.mobilenetv2 import MobileNetV2


class MobileNetV2Encoder(MobileNetV2):
    """torchvision MobileNetV2 with a 6-channel first conv and a dilated last stage.

    Block 18 and the classifier are removed; block 14's depthwise conv gets stride 1 and
    blocks 15-17's depthwise convs dilation 2 (padding 2), for output stride 16.

    Forward: ``x (B, in_channels, H, W)`` → ``(x4, x3, x2, x1, x0)``: block 17
    (B, 320, H/16, W/16), block 6 (B, 32, H/8, W/8), block 3 (B, 24, H/4, W/4),
    block 1 (B, 16, H/2, W/2) and the input itself.
    """

    def __init__(self, in_channels: int = 6) -> None:
        super().__init__()
        if in_channels != 3:
            self.features[0][0] = nn.Conv2d(in_channels, 32, 3, 2, 1, bias=False)
        self.features = self.features[:-1]
        self.features[14].conv[1][0].stride = (1, 1)
        for block in self.features[15:]:
            block.conv[1][0].dilation = (2, 2)
            block.conv[1][0].padding = (2, 2)
        del self.classifier

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # type: ignore[override]
        x0 = x
        x = self.features[1](self.features[0](x))
        x1 = x
        x = self.features[3](self.features[2](x))
        x2 = x
        for i in range(4, 7):
            x = self.features[i](x)
        x3 = x
        for i in range(7, 18):
            x = self.features[i](x)
        return x, x3, x2, x1, x0
