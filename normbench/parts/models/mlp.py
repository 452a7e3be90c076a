"""A multilayer perceptron on flattened images: (Linear → Norm → activation) × depth, then a linear head.

Modules are named by their place (`layer2.norm`, `head`), so TensorBoard tags say where a layer sits.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

from torch import nn


class MLP(nn.Sequential):
    def __init__(
        self,
        norm_layer: Callable[[int], nn.Module],
        act_layer: Callable[[], nn.Module],
        in_channels: int,
        image_size: tuple[int, int],
        num_classes: int,
        width: int = 512,
        depth: int = 3,
    ) -> None:
        layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
        features = in_channels * math.prod(image_size)
        for i in range(1, depth + 1):
            layers[f"layer{i}"] = nn.Sequential(
                OrderedDict(fc=nn.Linear(features, width), norm=norm_layer(width), act=act_layer())
            )
            features = width
        layers["head"] = nn.Linear(features, num_classes)
        super().__init__(layers)
