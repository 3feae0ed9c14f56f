"""ResNet-50/101 encoders of BackgroundMattingV2."""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.resnet import Bottleneck, ResNet

RESNET_LAYERS = {"resnet50": [3, 4, 6, 3], "resnet101": [3, 4, 23, 3]}


class ResNetEncoder(ResNet):
    """torchvision ResNet with a 6-channel stem, dilated last stage (output stride 16).

    Args:
        in_channels: input channels (6 for ``cat(src, bgr)``).
        variant: ``"resnet50"`` or ``"resnet101"``.

    Forward: ``x (B, in_channels, H, W)`` → ``(x4, x3, x2, x1, x0)``, deepest first:
    layer4 (B, 2048, H/16, W/16), layer2 (B, 512, H/8, W/8), layer1 (B, 256, H/4, W/4),
    stem (B, 64, H/2, W/2, after ReLU, before max-pool) and the input itself.
    """

    def __init__(self, in_channels: int = 6, variant: str = "resnet101") -> None:
        if variant not in RESNET_LAYERS:
            raise ValueError(f"variant={variant!r} is not a ResNet encoder; valid: {sorted(RESNET_LAYERS)}")
        super().__init__(
            block=Bottleneck,
            layers=RESNET_LAYERS[variant],
            replace_stride_with_dilation=[False, False, True],
        )
        if in_channels != 3:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        del self.avgpool
        del self.fc

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # type: ignore[override]
        x0 = x
        x = self.relu(self.bn1(self.conv1(x)))
        x1 = x
        x = self.layer1(self.maxpool(x))
        x2 = x
        x = self.layer2(x)
        x3 = x
        x4 = self.layer4(self.layer3(x))
        return x4, x3, x2, x1, x0


