"""A small VGG-style CNN: stages of (Conv3×3 → Norm → activation) × convs, then 2×2 max-pool; any image size (the
head pools globally). Every conv is a `conv_layer` (nn.Conv2d, or a conv option's class: `model.ws=true`).

Modules are named by their place (`stage2.norm`, `head.fc`), so TensorBoard tags and state_dict keys say
where a layer sits rather than its index in a flat list.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from torch import nn


class CNN(nn.Sequential):
    def __init__(
        self,
        norm_layer: Callable[[int], nn.Module],
        act_layer: Callable[[], nn.Module],
        conv_layer: Callable[..., nn.Conv2d],
        in_channels: int,
        num_classes: int,
        widths: Sequence[int] = (32, 64, 128),
        convs_per_stage: int = 1,
    ) -> None:
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        for s, width in enumerate(widths, start=1):
            stage: OrderedDict[str, nn.Module] = OrderedDict()
            for c in range(1, convs_per_stage + 1):
                suffix = str(c) if convs_per_stage > 1 else ""  # `norm` for one conv per stage, else norm1, norm2
                # The norm's β makes a conv bias redundant; keep it anyway so norm=none stays a fair baseline.
                stage[f"conv{suffix}"] = conv_layer(channels, width, 3, padding=1)
                stage[f"norm{suffix}"] = norm_layer(width)
                stage[f"act{suffix}"] = act_layer()
                channels = width
            stage["pool"] = nn.MaxPool2d(2)
            stages[f"stage{s}"] = nn.Sequential(stage)
        head = OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(channels, num_classes))
        super().__init__(OrderedDict(**stages, head=nn.Sequential(head)))
