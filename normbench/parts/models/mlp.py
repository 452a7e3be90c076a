"""A multilayer perceptron on flattened images: (Linear → Norm → ReLU) × depth, then a linear head.

Modules are named by their place (`layer2.norm`, `head`), so TensorBoard tags say where a layer sits.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from torch import nn


class MLP(nn.Sequential):
    layout = "vector"  # norms see (N, C) features

    def __init__(
        self,
        norm_layer: Callable[[int], nn.Module],
        in_features: int = 3 * 32 * 32,
        num_classes: int = 10,
        width: int = 512,
        depth: int = 3,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        features = in_features
        for i in range(1, depth + 1):
            layers[f"layer{i}"] = nn.Sequential(
                OrderedDict(fc=nn.Linear(features, width), norm=norm_layer(width), relu=nn.ReLU(inplace=True))
            )
            features = width
        layers["head"] = nn.Linear(features, num_classes)
        super().__init__(layers)
