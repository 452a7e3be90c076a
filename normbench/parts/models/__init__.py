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
from normbench.parts.norms.layers import set_workers, takes_workers
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


def build_model(
    model_cfg: Mapping[str, Any], norm_cfg: Mapping[str, Any], num_classes: int = 10, workers: int = 1
) -> nn.Module:
    """The model with the configured norm in each norm slot. `workers` > 1: its BN-family layers take their
    training statistics per worker share (`set_workers`, docs/workers.md); a norm with batch statistics whose
    class cannot is refused."""
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
        model = cls(norm_layer=counted_norm_layer, num_classes=num_classes, **options)
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
    if workers > 1:
        _refuse_without_shares(model, norm_name, workers)
        set_workers(model, workers)
    return model


def _refuse_without_shares(model: nn.Module, norm: str, workers: int) -> None:
    """Refuse a norm with batch statistics whose layers cannot take them per worker share."""
    spec = get_norm(norm)
    if not spec.batch_statistics or spec.synced:
        return  # per-sample statistics, or statistics over all the shares: nothing per worker
    for where, layer in model.named_modules():
        if getattr(layer, NORM_SLOT, False) and not takes_workers(layer):
            synced = [n for n, s in NORMS.items() if s.synced]
            per_sample = [n for n, s in NORMS.items() if not s.batch_statistics and n != "none"]
            raise NormError(
                f"workers={workers} with norm={norm}: its layer '{where}' ({type(layer).__name__}) takes batch "
                "statistics but cannot take them per worker share (its class has no `workers` attribute). Use "
                f"workers=1, a norm whose statistics span all workers ({', '.join(synced)}), a per-sample norm "
                f"({', '.join(per_sample)}), or derive the class from normbench.parts.norms.layers.BatchNorm1d/2d "
                "or reference.ReferenceBatchNorm, which take per-share statistics (docs/workers.md)."
            )


def check_norm_shapes(
    model_cfg: Mapping[str, Any],
    norm_cfg: Mapping[str, Any],
    batch_size: int,
    image: tuple[int, ...] = (3, 32, 32),
    workers: int = 1,
) -> None:
    """Refuse a (model, norm, batch size) whose norm layers would get inputs the norm cannot normalize in
    training, e.g. bn on (1, C) at batch 1. Each norm layer's input shape is found by one forward of a single image
    through the model with identities in the norms' places, the batch size put in dim 0 (every layout's N), and
    goes through the norm's own `check`. On the CPU: a few milliseconds, where a forward on the meta device
    imported torch's Python decompositions (dynamo, sympy: 1.5 s and more at every process start).
    With `workers` > 1 a norm with per-worker batch statistics sees batch_size / workers images per statistic."""
    model_name, _ = split_name(model_cfg)
    norm_name, norm_options = split_name(norm_cfg)
    spec = get_norm(norm_name)
    build_model(model_cfg, norm_cfg, workers=workers)  # construction errors first (e.g. groups, plugin classes)
    layout = MODELS[model_name][0].layout
    per_worker = workers > 1 and spec.batch_statistics and not spec.synced
    images = batch_size // workers if per_worker else batch_size
    setting = (
        f"batch_size={batch_size} with workers={workers} ({images} image{'s' * (images != 1)} per worker)"
        if per_worker
        else (f"batch_size={batch_size}")
    )

    def check(layer: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            shape = (images, *args[0].shape[1:])
            problem = spec.shape_problem(shape, True, **norm_options)
            if problem is None:
                return
            if spec.batch_statistics and per_worker:
                per_sample = [n for n, s in NORMS.items() if not s.batch_statistics and s.normalizes(shape, True)]
                advice = (
                    f"Each worker's BatchNorm needs >= 2 images: use batch_size >= {2 * workers}, fewer workers, "
                    f"a norm whose statistics span all workers (syncbn), or one that works per sample "
                    f"({', '.join(per_sample)})."
                )
            elif spec.batch_statistics:
                per_sample = [n for n, s in NORMS.items() if not s.batch_statistics and s.normalizes(shape, True)]
                advice = f"Use batch_size >= 2, or a norm that works per sample ({', '.join(per_sample)})."
            else:
                works = [n for n, s in NORMS.items() if s.normalizes(shape, True, **norm_options)]
                advice = (
                    f"Use a norm whose statistics average more values here ({', '.join(works)}), "
                    "or a model config that gives this layer larger inputs."
                )
            raise NormError(
                f"{setting} with norm={norm_name} on model={model_name}: this model's norms see "
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
