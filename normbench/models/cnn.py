"""A small VGG-style CNN for 3×32×32 images: stages of (Conv3×3 → Norm → ReLU) × convs, then 2×2 max-pool."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor, nn


class CNN(nn.Module):
    layout = "image"  # norms see (N, C, H, W) feature maps

    def __init__(
        self,
        norm_layer: Callable[[int], nn.Module],
        in_channels: int = 3,
        num_classes: int = 10,
        widths: Sequence[int] = (32, 64, 128),
        convs_per_stage: int = 1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            for _ in range(convs_per_stage):
                # The norm's β makes a conv bias redundant; keep it anyway so norm=none stays a fair baseline.
                layers += [nn.Conv2d(channels, width, 3, padding=1), norm_layer(width), nn.ReLU(inplace=True)]
                channels = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
