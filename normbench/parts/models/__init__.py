"""The model registry, and a model built with the configured norm in each of its norm slots.

Models take a `norm_layer(channels, act=True)` callable and an `act_layer()` callable (as torchvision's take a
`norm_layer`) and never see the norm registry; `build_model` binds the configured norm to the model's layout:

* `norm_layer(c)`: the norm for c channels; where the model puts no activation after it, `norm_layer(c, act=False)`;
* `act_layer()`: the activation after a norm: ReLU, or an identity when the norm is a norm-activation layer (FRN +
  TLU, EvoNorm), which then includes its own (timm's norm-act slot, `create_norm_act`);
* `conv_layer(in, out, kernel, ...)`, for the convolutional models: nn.Conv2d, or the class of the conv option set
  true (`model.ws=true`: Weight Standardization). A model that takes `conv_layer` has every registered conv option
  as a setting (convs.py), stated nowhere else.

The data's shape and classes come in as `in_channels`, `image_size` (height, width) and `num_classes`, of which each
model takes those its signature names. Its other keyword parameters are its options: their defaults and type hints
are the config schema of `model=NAME` (plan/schema.py), stated nowhere else.

A model is registered by its import path, so that this module, `normbench list` and `--help` import no torch:

    register_model("cnn", "normbench.parts.models.cnn.CNN", layout="image", summary="...")
"""

from __future__ import annotations

import copy
import importlib
import inspect
import typing
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from normbench.base.errors import ConfigError, NormError
from normbench.base.options import Options
from normbench.parts.models.convs import CONVS, conv_layer
from normbench.parts.norms import NORMS, build_norm, get_norm
from normbench.parts.norms.registry import Layout, shape_of

if TYPE_CHECKING:
    from torch import nn

# Constructor arguments a model does not take from its config: the norm, activation and conv slots (from the norm and
# conv option registries) and the data's shape and classes (from the data).
FIXED_ARGS = ("norm_layer", "act_layer", "conv_layer", "in_channels", "image_size", "num_classes")
NORM_SLOT = "normbench_norm"  # set on every module built as a model's norm layer, for the monitor's hooks


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its class (by import path), the layout its norms see and one line about it."""

    name: str
    factory: str
    layout: Layout
    summary: str

    @cached_property
    def cls(self) -> type[nn.Module]:
        module, _, attr = self.factory.rpartition(".")
        return getattr(importlib.import_module(module), attr)

    def options(self) -> dict[str, tuple[Any, Any]]:
        """Option name -> (type hint, default): the class's keyword parameters other than the fixed ones, then, for a
        model that takes a `conv_layer`, each conv option (false by default)."""
        hints = typing.get_type_hints(self.cls.__init__)
        params = inspect.signature(self.cls).parameters.values()
        own = {p.name: (hints[p.name], p.default) for p in params if p.name not in FIXED_ARGS}
        convs = {name: (bool, False) for name in CONVS} if "conv_layer" in self.fixed_args() else {}
        return {**own, **convs}

    def fixed_args(self) -> list[str]:
        """The fixed arguments its class takes (FIXED_ARGS it names)."""
        return [p for p in inspect.signature(self.cls).parameters if p in FIXED_ARGS]


MODELS: Options[ModelSpec] = Options("model")
HERE = __name__


def register_model(name: str, factory: str, *, layout: Layout, summary: str, replace: bool = False) -> ModelSpec:
    return MODELS.register(name, ModelSpec(name, factory, layout, summary), origin=factory, replace=replace)


register_model(
    "mlp",
    f"{HERE}.mlp.MLP",
    layout="vector",
    summary="MLP on flattened images: (Linear → Norm → ReLU) × depth; norms see (N, C) vectors",
)
register_model(
    "cnn",
    f"{HERE}.cnn.CNN",
    layout="image",
    summary="small VGG-style CNN: (Conv3×3 → Norm → ReLU) stages; norms see (N, C, H, W) maps",
)
register_model(
    "transformer",
    f"{HERE}.transformer.ViT",
    layout="sequence",
    summary="small Vision Transformer, pre-norm blocks, class token; norms see (N, L, D) tokens",
)
for _depth in (20, 32, 56):
    register_model(
        f"resnet{_depth}",
        f"{HERE}.resnet.ResNet{_depth}",
        layout="image",
        summary=f"CIFAR ResNet-{_depth} of He et al. 2016 (16/32/64 channels, identity shortcuts)",
    )


def split_name(cfg: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A config group node {name: ..., option: ...} as (name, options)."""
    options = dict(cfg)
    return options.pop("name"), options


def build_model(
    model_cfg: Mapping[str, Any],
    norm_cfg: Mapping[str, Any],
    in_channels: int,
    image_size: tuple[int, int],
    num_classes: int,
    per_share: bool = False,
) -> nn.Module:
    """The model with the configured norm in each norm slot, for images of `in_channels` × `image_size` and
    `num_classes` classes. `per_share`: its norms' training statistics will be taken per worker share
    (docs/workers.md), so a batch-statistics norm whose class cannot take them is refused."""
    from torch import nn

    name, options = split_name(model_cfg)
    spec = MODELS[name]
    unknown = sorted(set(options) - set(spec.options()))
    if unknown:
        raise ConfigError(f"model={name} has no option {', '.join(unknown)}. Its options: {', '.join(spec.options())}.")
    norm_name, norm_options = split_name(norm_cfg)
    norm = get_norm(norm_name)
    built: list[int] = []

    def norm_layer(channels: int, act: bool = True) -> nn.Module:
        built.append(channels)
        layer = build_norm(norm_name, channels, spec.layout, act=act, **norm_options)
        setattr(layer, NORM_SLOT, True)
        return layer

    def act_layer() -> nn.Module:
        return nn.Identity() if norm.activation else nn.ReLU(inplace=True)

    given = {"norm_layer": norm_layer, "act_layer": act_layer, "in_channels": in_channels,
             "image_size": tuple(image_size), "num_classes": num_classes}  # fmt: skip
    if "conv_layer" in spec.fixed_args():
        given["conv_layer"] = conv_layer(options)
        options = {k: v for k, v in options.items() if k not in CONVS}
    fixed = {k: given[k] for k in spec.fixed_args()}
    try:
        model = spec.cls(**fixed, **options)
    except NormError as error:
        # Name the failing layer by its place in the model, found by building it with placeholders.
        slots = [(n, m.slot_channels) for n, m in _placeholder_model(spec, fixed, options).named_modules()
                 if hasattr(m, "slot_channels")]  # fmt: skip
        where, channels = slots[len(built) - 1] if built else ("?", 0)
        widths = sorted({c for _, c in slots})
        raise NormError(
            f"model={name}: the norm layer '{where}' ({channels} channels) cannot be built. {error} "
            f"This model's norm layers have {', '.join(map(str, widths))} channels."
        ) from None
    if per_share and norm.per_share:
        _refuse_without_shares(model, norm_name)
    return model


def _refuse_without_shares(model: nn.Module, norm: str) -> None:
    """Refuse a norm with batch statistics whose layers cannot take them per worker share."""
    from normbench.parts.norms.shares import PerShare

    for where, layer in model.named_modules():
        if getattr(layer, NORM_SLOT, False) and not isinstance(layer, PerShare):
            synced = [n for n, s in NORMS.items() if s.synced]
            per_sample = [n for n, s in NORMS.items() if not s.batch_statistics and n != "none"]
            raise NormError(
                f"workers > 1 with norm={norm}: its layer '{where}' ({type(layer).__name__}) takes batch statistics "
                "but cannot take them per worker share (its class does not derive from normbench's per-share "
                f"classes). Use workers=1, a norm whose statistics span all workers ({', '.join(synced)}), a "
                f"per-sample norm ({', '.join(per_sample)}), or derive the class from "
                "normbench.parts.norms.layers.BatchNorm1d/2d or reference.ReferenceBatchNorm, which take per-share "
                "statistics (docs/workers.md)."
            )


def _placeholder_model(spec: ModelSpec, fixed: dict[str, Any], options: dict[str, Any]) -> nn.Module:
    """The model with identities where its norm layers go, each marked with its channels: where they are."""
    from torch import nn

    def slot(channels: int, act: bool = True) -> nn.Module:
        module = nn.Identity()
        module.slot_channels = channels
        return module

    placeholders = {"norm_layer": slot, "act_layer": nn.Identity}
    return spec.cls(**{**fixed, **{k: v for k, v in placeholders.items() if k in fixed}}, **options)


def norm_inputs(
    model_cfg: Mapping[str, Any], in_channels: int, image_size: tuple[int, int], num_classes: int
) -> dict[str, tuple[int, ...]]:
    """The input shape of each norm layer of the model `model_cfg` describes (its name → shape, for one image): one
    forward of a zero image through the model with identities in the norms' places, so no norm computes (a shape
    that a norm would refuse, such as InstanceNorm on a 1×1 map, is found here and refused by `check_norm_shapes`
    with its reason)."""
    import torch

    name, options = split_name(model_cfg)
    spec = MODELS[name]
    given = {"in_channels": in_channels, "image_size": tuple(image_size), "num_classes": num_classes}
    if "conv_layer" in spec.fixed_args():
        given["conv_layer"] = conv_layer(options)
        options = {k: v for k, v in options.items() if k not in CONVS}
    fixed = {k: given.get(k) for k in spec.fixed_args()}
    placeholder = _placeholder_model(spec, fixed, options).eval()
    shapes: dict[str, tuple[int, ...]] = {}

    def seen(slot: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            shapes.setdefault(slot, tuple(args[0].shape))

        return hook

    for slot, module in placeholder.named_modules():
        if hasattr(module, "slot_channels"):
            module.register_forward_pre_hook(seen(slot))
    with torch.no_grad():
        placeholder(torch.zeros(1, in_channels, *image_size))
    return shapes


def check_norm_shapes(
    model: nn.Module,
    model_name: str,
    norm_cfg: Mapping[str, Any],
    in_channels: int,
    image_size: tuple[int, int],
    images: int,
    setting: str,
) -> None:
    """Refuse a built model whose norm layers would get training inputs the norm cannot normalize when a batch
    statistic averages `images` images (a worker's share, or the batch), e.g. bn on (1, C). One forward of a zero
    image in eval mode (no statistic or parameter changes) with a pre-hook on every norm layer: the hook puts
    `images` into dim 0 (every layout's N) of the layer's input shape and asks the norm's own `shape_problem`,
    refusing before the layer computes anything. `setting` says in words what gives `images`
    (`batch_size=8 with workers=4 ...`). The model's mode is restored."""
    import torch

    norm_name, norm_options = split_name(norm_cfg)
    spec = get_norm(norm_name)
    layout = MODELS[model_name].layout

    def check(layer: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            shape = (images, *args[0].shape[1:])
            problem = spec.shape_problem(shape, True, **norm_options)
            if problem is not None:
                raise NormError(
                    f"{setting} with norm={norm_name} on model={model_name}: this model's norms see "
                    f"{shape_of(layout)} {layout}s, and its norm layer '{layer}' gets {shape}. {problem} "
                    f"{_advice(spec, shape, norm_options, setting)}"
                )

        return pre_hook

    def same_shape(layer: str) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            if getattr(out, "shape", None) != args[0].shape:
                raise NormError(
                    f"norm={norm_name} on model={model_name}: its layer '{layer}' ({type(module).__name__}) returned "
                    f"{tuple(getattr(out, 'shape', ()))} for an input of {tuple(args[0].shape)}"
                    f"{' in train mode' if module.training else ''}. A norm layer returns "
                    'a tensor of its input\'s shape (see "What normbench asks of a norm" in docs/plugins.md).'
                )

        return hook

    slots = [(n, m) for n, m in model.named_modules() if getattr(m, NORM_SLOT, False)]
    hooks = [m.register_forward_pre_hook(check(n)) for n, m in slots]
    hooks += [m.register_forward_hook(same_shape(n)) for n, m in slots]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, in_channels, *image_size))
            # A norm may return another shape in training only: a copy in train mode (the model's statistics and the
            # RNG untouched), with the images of one statistic, at most 2 (a quick forward). Any other error there
            # is left to the run's first step, which says it as before (zero images are not the run's data).
            with torch.random.fork_rng(devices=[]), suppress(ValueError, TypeError, RuntimeError):
                copy.deepcopy(model).train()(torch.zeros(min(images, 2), in_channels, *image_size))
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()


def _advice(spec: Any, shape: tuple[int, ...], options: Mapping[str, Any], setting: str) -> str:
    """What to change instead, for a norm that cannot normalize `shape`."""
    per_sample = [n for n, s in NORMS.items() if not s.batch_statistics and s.normalizes(shape, True)]
    if setting.startswith("eval.bn_modes"):  # the validation's batches are short of images, not training's
        return (
            "Skip that validation with eval.bn_modes=false, give the validation more images, or use a norm that works "
            f"per sample ({', '.join(per_sample)})."
        )
    if spec.batch_statistics and "worker" in setting:
        return (
            f"Each worker's BatchNorm needs >= 2 images: a larger batch_size, fewer workers, a norm whose statistics "
            f"span all workers (syncbn), or one that works per sample ({', '.join(per_sample)})."
        )
    if spec.batch_statistics:
        return f"Use batch_size >= 2, or a norm that works per sample ({', '.join(per_sample)})."
    works = [n for n, s in NORMS.items() if s.normalizes(shape, True, **options)]
    return (
        f"Use a norm whose statistics average more values here ({', '.join(works)}), "
        "or a model config that gives this layer larger inputs."
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
