"""The CIFAR ResNets of He et al. 2016 (§4.2, "Deep Residual Learning for Image Recognition").

A 3×3 stem conv to 16 channels, then three stages of n basic blocks at 16, 32 and 64 channels on 32×32,
16×16 and 8×8 maps for CIFAR's images (the first block of stages 2 and 3 halves the map with stride 2; other image
sizes scale alike), global average pooling and a linear classifier: 6n + 2 weighted layers, 2·3n + 1 norm layers.
Depth 20 has about 0.27M parameters.

Shortcuts are the paper's option A for its CIFAR nets: identity, and where a block halves the map and doubles
the channels, the input subsampled by 2 and zero-padded with the new channels. Option A adds no parameters,
so the parameter count and the norm layers (every one of them is in the residual branch) are the paper's;
a 1×1 projection (option B) would add a conv and a norm per downsampling block that the published CIFAR
figures do not have.

Convs have no bias (as in the paper and torchvision): the norm that follows has its own shift β. Every conv is a
`conv_layer` (nn.Conv2d, or a conv option's class: `model.ws=true`).
Modules are named by their place (`stage2.block1.norm1`): TensorBoard tags are built from module names.

A norm-activation layer (FRN + TLU, EvoNorm) takes the place of a norm and the ReLU after it; the second norm of a
block has no activation after it (the block's ReLU comes after the shortcut's sum), so it is built without one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

WIDTHS = (16, 32, 64)


class BasicBlock(nn.Module):
    """conv3×3 → norm → activation → conv3×3 → norm, plus the shortcut, then ReLU."""

    def __init__(
        self,
        norm_layer: Callable[..., nn.Module],
        act_layer: Callable[[], nn.Module],
        in_channels: int,
        channels: int,
        stride: int,
        conv: Callable[..., nn.Conv2d] = nn.Conv2d,
    ) -> None:
        super().__init__()
        self.conv1 = conv(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = norm_layer(channels)
        self.act1 = act_layer()
        self.conv2 = conv(channels, channels, 3, padding=1, bias=False)
        self.norm2 = norm_layer(channels, act=False)
        self.stride, self.extra_channels = stride, channels - in_channels

    def shortcut(self, x: Tensor) -> Tensor:
        """Option A: identity; subsampled and zero-padded with the new channels where the shape changes."""
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra_channels:
            half = self.extra_channels // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))  # pads dim 1 (channels) on both sides
        return x

    def forward(self, x: Tensor) -> Tensor:
        y = self.act1(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) (for CIFAR's 3×32×32 images; any size and channel count); subclasses fix the depth (`depth` is
    a class attribute so that the model's name, which results and reports group by, always says the depth)."""

    depth = 20

    def __init__(
        self,
        norm_layer: Callable[..., nn.Module],
        act_layer: Callable[[], nn.Module],
        conv_layer: Callable[..., nn.Conv2d],
        in_channels: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        blocks = (self.depth - 2) // 6
        conv = conv_layer
        self.conv = conv(in_channels, WIDTHS[0], 3, padding=1, bias=False)
        self.norm = norm_layer(WIDTHS[0])
        self.act = act_layer()
        channels = WIDTHS[0]
        for s, width in enumerate(WIDTHS, start=1):
            stage = nn.Sequential()
            for b in range(1, blocks + 1):
                stride = 2 if s > 1 and b == 1 else 1
                stage.add_module(f"block{b}", BasicBlock(norm_layer, act_layer, channels, width, stride, conv))
                channels = width
            self.add_module(f"stage{s}", stage)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # He initialization, as in the paper
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.norm(self.conv(x)))
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.fc(x.mean(dim=(2, 3)))


class ResNet20(CifarResNet):
    depth = 20


class ResNet32(CifarResNet):
    depth = 32


class ResNet56(CifarResNet):
    depth = 56
