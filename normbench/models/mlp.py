"""A multilayer perceptron on flattened images: (Linear → Norm → ReLU) × depth, then a linear head."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn


class MLP(nn.Module):
    layout = "vector"  # norms see (N, C) features

    def __init__(
        self,
        norm_layer: Callable[[int], nn.Module],
        in_features: int = 3 * 32 * 32,
        num_classes: int = 10,
        width: int = 512,
        depth: int = 3,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Flatten()]
        features = in_features
        for _ in range(depth):
            blocks += [nn.Linear(features, width), norm_layer(width), nn.ReLU(inplace=True)]
            features = width
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
