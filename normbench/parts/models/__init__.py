"""Model registry. Models take a `norm_layer(channels) -> nn.Module` callable (as torchvision's do) and
never see the norm registry; `build_model` binds the configured norm to the model's layout."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
from torch import nn

from normbench.base.errors import ConfigError, NormError
from normbench.parts.models.cnn import CNN
from normbench.parts.models.mlp import MLP
from normbench.parts.models.resnet import ResNet20, ResNet32, ResNet56
from normbench.parts.models.transformer import ViT
from normbench.parts.norms import NORMS, build_norm, get_norm
from normbench.parts.norms.registry import shape_of

MODELS: dict[str, tuple[type[nn.Module], str]] = {
    "mlp": (MLP, "MLP on flattened images: (Linear → Norm → ReLU) × depth; norms see (N, C) vectors"),
    "cnn": (CNN, "small VGG-style CNN: (Conv3×3 → Norm → ReLU) stages; norms see (N, C, H, W) maps"),
    "transformer": (ViT, "small Vision Transformer, pre-norm blocks, class token; norms see (N, L, D) tokens"),
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
        slots = [(n, m.channels) for n, m in _placeholder_model(model_cfg, num_classes).named_modules()
                 if isinstance(m, _NormSlot)]  # fmt: skip
        where, channels = slots[len(built) - 1] if built else ("?", 0)
        widths = sorted({c for _, c in slots})
        raise NormError(
            f"model={name}: the norm layer '{where}' ({channels} channels) cannot be built. {error} "
            f"This model's norm layers have {', '.join(map(str, widths))} channels."
        ) from None


def check_norm_shapes(
    model_cfg: Mapping[str, Any], norm_cfg: Mapping[str, Any], batch_size: int, image: tuple[int, ...] = (3, 32, 32)
) -> None:
    """Refuse a (model, norm, batch size) whose norm layers would get inputs the norm cannot normalize in
    training, e.g. bn on (1, C) at batch 1. Each norm layer's input shape is found by one forward of a single image
    through the model with identities in the norms' places, the batch size put in dim 0 (every layout's N), and
    goes through the norm's own `check`. On the CPU: a few milliseconds, where a forward on the meta device
    imported torch's Python decompositions (dynamo, sympy: 1.5 s and more at every process start)."""
    model_name, _ = split_name(model_cfg)
    norm_name, norm_options = split_name(norm_cfg)
    spec = get_norm(norm_name)
    build_model(model_cfg, norm_cfg)  # construction errors first (e.g. groups that do not divide the channels)
    layout = MODELS[model_name][0].layout

    def check(layer: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            shape = (batch_size, *args[0].shape[1:])
            problem = spec.shape_problem(shape, True, **norm_options)
            if problem is None:
                return
            if spec.batch_statistics:
                per_sample = [n for n, s in NORMS.items() if not s.batch_statistics and s.normalizes(shape, True)]
                advice = f"Use batch_size >= 2, or a norm that works per sample ({', '.join(per_sample)})."
            else:
                works = [n for n, s in NORMS.items() if s.normalizes(shape, True, **norm_options)]
                advice = (
                    f"Use a norm whose statistics average more values here ({', '.join(works)}), "
                    "or a model config that gives this layer larger inputs."
                )
            raise NormError(
                f"batch_size={batch_size} with norm={norm_name} on model={model_name}: this model's norms see "
                f"{shape_of(layout)} {layout}s, and its norm layer '{layer}' gets {shape}. {problem} {advice}"
            )

        return pre_hook

    probe = _placeholder_model(model_cfg).eval()
    for name, module in probe.named_modules():
        if isinstance(module, _NormSlot):
            module.register_forward_pre_hook(check(name))
    with torch.no_grad():
        probe(torch.zeros(1, *image))


def _placeholder_model(model_cfg: Mapping[str, Any], num_classes: int = 10) -> nn.Module:
    """The model with `_NormSlot` identities where its norm layers go: where they are, and with how many channels."""
    name, options = split_name(model_cfg)
    return MODELS[name][0](norm_layer=_NormSlot, num_classes=num_classes, **options)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
