"""Model registry. Models take a `norm_layer(channels) -> nn.Module` callable (as torchvision's do) and
never see the norm registry; `build_model` binds the configured norm to the model's layout."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from functools import partial
from typing import Any

from torch import nn

from normbench.errors import ConfigError, NormError
from normbench.models.cnn import CNN
from normbench.models.mlp import MLP
from normbench.models.resnet import ResNet20, ResNet32, ResNet56
from normbench.models.transformer import ViT
from normbench.norms import build_norm

MODELS: dict[str, tuple[type[nn.Module], str]] = {
    "mlp": (MLP, "MLP on flattened images: (Linear → Norm → ReLU) × depth; norms see (N, C) vectors"),
    "cnn": (CNN, "small VGG-style CNN: (Conv3×3 → Norm → ReLU) stages; norms see (N, C, H, W) maps"),
    "transformer": (ViT, "small Vision Transformer, pre-norm blocks; norms see (N, L, D) tokens"),
    **{
        f"resnet{cls.depth}": (
            cls,
            f"CIFAR ResNet-{cls.depth} of He et al. 2016 (16/32/64 channels, identity shortcuts)",
        )
        for cls in (ResNet20, ResNet32, ResNet56)
    },
}


NORM_SLOT = "normbench_norm"  # set on every module built as a model's norm layer, for the monitor's hooks


def split_name(cfg: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A config group node {name: ..., option: ...} as (name, options)."""
    options = dict(cfg)
    return options.pop("name"), options


class _NormSlot(nn.Identity):
    """Stands in for a norm layer to find where a model puts its norms, and with how many channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels


def build_model(model_cfg: Mapping[str, Any], norm_cfg: Mapping[str, Any], num_classes: int = 10) -> nn.Module:
    name, options = split_name(model_cfg)
    if name not in MODELS:
        raise ConfigError(f"Unknown model '{name}'. Models: {', '.join(MODELS)} (`normbench list`).")
    cls, _ = MODELS[name]
    allowed = [p for p in inspect.signature(cls).parameters if p not in ("norm_layer", "num_classes")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"model={name} has no option {', '.join(unknown)}. Its options: {', '.join(allowed)}.")
    norm_name, norm_options = split_name(norm_cfg)
    norm_layer = partial(build_norm, norm_name, layout=cls.layout, **norm_options)
    built: list[int] = []

    def counted_norm_layer(channels: int) -> nn.Module:
        built.append(channels)
        layer = norm_layer(channels)
        setattr(layer, NORM_SLOT, True)
        return layer

    try:
        return cls(norm_layer=counted_norm_layer, num_classes=num_classes, **options)
    except NormError as error:
        # Name the failing layer by its place in the model, found by building it with placeholders.
        probe = cls(norm_layer=_NormSlot, num_classes=num_classes, **options)
        slots = [(n, m.channels) for n, m in probe.named_modules() if isinstance(m, _NormSlot)]
        where, channels = slots[len(built) - 1] if built else ("?", 0)
        widths = sorted({c for _, c in slots})
        raise NormError(
            f"model={name}: the norm layer '{where}' ({channels} channels) cannot be built. {error} "
            f"This model's norm layers have {', '.join(map(str, widths))} channels."
        ) from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
