"""The normalization layer registry: one place that maps a name to a builder, used by every model.

    build_norm("gn", 64, "image", groups=8)  ->  nn.GroupNorm(8, 64)

A layout says what the features look like where the norm sits: `vector` (N, C) after a Linear layer,
`image` (N, C, H, W) after a convolution, `sequence` (N, L, D) inside a Transformer. The statistics of
each (norm, layout) pair, following the user's notes (shared/seed/normalization-notes.md):

| norm | vector (N, C)        | image (N, C, H, W)                 | sequence (N, L, D)               |
|------|----------------------|------------------------------------|----------------------------------|
| bn   | per C, over N        | per C, over N, H, W                | per D, over N, L                 |
| brn  | as bn                | as bn                              | as bn                            |
| ln   | per sample, over C   | per sample, over C, H, W           | per token, over D                |
| rms  | as ln (no mean)      | as ln (no mean)                    | as ln (no mean)                  |
| in   | refused: 1 value     | per sample and C, over H, W        | per sample and D, over L         |
| gn   | refused: 1 value     | per sample and group, over C/G,H,W | per token and group, over D/G    |
| none | identity             | identity                           | identity                         |

γ and β are always per channel (C or D of each), never per position, so parameter counts do not depend on
the resolution: `ln` on images is the GroupNorm paper's LN (= GroupNorm with one group), `in` its IN (with
affine), which is what its Table 1 compares. IN and GN are refused on vector features because each channel
holds a single value per sample there: there is no variance to take (the question the notes end with).

Add a norm by registering one builder; models need no change:

    @register_norm("mynorm", summary="...", axes={"image": "C,H,W"})
    def my_norm(num_features: int, layout: Layout, *, eps: float = 1e-5) -> nn.Module: ...
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from normbench.errors import NormError
from normbench.norms import layers as L
from normbench.norms import reference as R

Layout = Literal["vector", "image", "sequence"]
LAYOUTS: dict[str, tuple[str, ...]] = {
    "vector": ("N", "C"),
    "image": ("N", "C", "H", "W"),
    "sequence": ("N", "L", "D"),
}
IMPLS = ("torch", "reference")
ONE_VALUE = (
    "each channel holds a single value per sample in (N, C) features, so there is no mean or "
    "variance to take within a sample and channel"
)


@dataclass(frozen=True)
class NormSpec:
    name: str
    summary: str
    builder: Callable[..., nn.Module]
    axes: Mapping[str, str]  # layout -> the axes each statistic is taken over, e.g. "N,H,W"
    refused: Mapping[str, str] = field(default_factory=dict)  # layout -> why it has no meaning
    batch_statistics: bool = False  # normalizes with batch statistics in training, running ones in eval

    @property
    def options(self) -> dict[str, Any]:
        """The builder's keyword options and their defaults."""
        params = inspect.signature(self.builder).parameters.values()
        return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}


NORMS: dict[str, NormSpec] = {}


def register_norm(
    name: str,
    *,
    summary: str,
    axes: Mapping[str, str],
    refused: Mapping[str, str] | None = None,
    batch_statistics: bool = False,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register `builder(num_features, layout, *, **options) -> nn.Module` under `name`."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        NORMS[name] = NormSpec(name, summary, builder, dict(axes), dict(refused or {}), batch_statistics)
        return builder

    return decorator


def get_norm(name: str) -> NormSpec:
    if name not in NORMS:
        raise NormError(
            f"Unknown norm '{name}'. Registered norms: {', '.join(sorted(NORMS))} (`normbench list` describes each)."
        )
    return NORMS[name]


def build_norm(name: str, num_features: int, layout: Layout, **options: Any) -> nn.Module:
    """Build the norm `name` for `num_features` channels of the given layout, refusing what has no meaning."""
    spec = get_norm(name)
    if layout not in LAYOUTS:
        raise NormError(f"Unknown layout '{layout}'. Layouts: {', '.join(LAYOUTS)}.")
    if layout not in spec.axes:
        why = spec.refused.get(layout, "it is not defined for them")
        usable = [n for n, s in sorted(NORMS.items()) if layout in s.axes and n != "none"]
        raise NormError(
            f"norm={name} cannot normalize {layout} features {_shape(layout)}: {why}. "
            f"{name} applies to: {', '.join(f'{lay} {_shape(lay)}' for lay in spec.axes)}. "
            f"Norms for {layout} features: {', '.join(usable)}."
        )
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise NormError(
            f"norm={name} has no option {', '.join(repr(k) for k in unknown)}. "
            f"Its options: {', '.join(f'{k}={v}' for k, v in spec.options.items())}."
        )
    return spec.builder(num_features, layout, **options)


def _shape(layout: str) -> str:
    return "(" + ", ".join(LAYOUTS[layout]) + ")"


def _check_impl(name: str, impl: str, allowed: tuple[str, ...] = IMPLS) -> None:
    if impl not in allowed:
        raise NormError(
            f"norm={name}: impl='{impl}' is not available. Allowed: {', '.join(allowed)} "
            "(torch = PyTorch's fused kernels, reference = normbench's code written from the formulas)."
        )


def _pick(name: str, impl: str, layout: str, classes: Mapping[str, Mapping[str, type[nn.Module]]]) -> Any:
    _check_impl(name, impl, tuple(classes))
    return classes[impl][layout]


def _check_eps(name: str, eps: float) -> None:
    if not eps > 0:
        raise NormError(f"norm={name}: eps={eps} must be positive (it keeps sqrt(var + eps) away from zero).")


@register_norm(
    "bn",
    summary="BatchNorm: per channel over the batch; batch statistics in training, running ones in eval",
    axes={"vector": "N", "image": "N,H,W", "sequence": "N,L"},
    batch_statistics=True,
)
def batch_norm(
    num_features: int,
    layout: Layout,
    *,
    eps: float = 1e-5,
    momentum: float | None = 0.1,
    affine: bool = True,
    track_running_stats: bool = True,
    impl: str = "torch",
) -> nn.Module:
    _check_eps("bn", eps)
    if momentum is not None and not 0 < momentum <= 1:
        raise NormError(
            f"norm=bn: momentum={momentum} is outside (0, 1]. PyTorch's convention: "
            "running = (1 - momentum) * running + momentum * batch; null = cumulative average."
        )
    cls = _pick(
        "bn",
        impl,
        layout,
        {
            "torch": {"vector": nn.BatchNorm1d, "image": nn.BatchNorm2d, "sequence": L.SequenceBatchNorm},
            "reference": {
                "vector": R.ReferenceBatchNorm,
                "image": R.ReferenceBatchNorm,
                "sequence": L.SequenceReferenceBatchNorm,
            },
        },
    )
    return cls(num_features, eps=eps, momentum=momentum, affine=affine, track_running_stats=track_running_stats)


@register_norm(
    "brn",
    summary="Batch Renormalization (Ioffe 2017): BN corrected towards running statistics by clipped r, d",
    axes={"vector": "N", "image": "N,H,W", "sequence": "N,L"},
    batch_statistics=True,
)
def batch_renorm(
    num_features: int,
    layout: Layout,
    *,
    eps: float = 1e-5,
    momentum: float | None = 0.1,
    affine: bool = True,
    r_max: float = 3.0,
    d_max: float = 5.0,
    warmup_steps: int = 1000,
    impl: str = "reference",
) -> nn.Module:
    _check_eps("brn", eps)
    if r_max < 1 or d_max < 0:
        raise NormError(f"norm=brn: r_max={r_max} must be >= 1 and d_max={d_max} >= 0 (r_max=1, d_max=0 is BN).")
    # PyTorch has no fused Batch Renorm kernel: the formula code is the only implementation.
    cls = _pick(
        "brn",
        impl,
        layout,
        {
            "reference": {"vector": L.BatchRenorm, "image": L.BatchRenorm, "sequence": L.SequenceBatchRenorm},
        },
    )
    return cls(
        num_features, eps=eps, momentum=momentum, affine=affine, r_max=r_max, d_max=d_max, warmup_steps=warmup_steps
    )


@register_norm(
    "ln",
    summary="LayerNorm: per sample over all its features (per token in sequences); per-channel affine",
    axes={"vector": "C", "image": "C,H,W", "sequence": "D"},
)
def layer_norm(
    num_features: int, layout: Layout, *, eps: float = 1e-5, affine: bool = True, impl: str = "torch"
) -> nn.Module:
    _check_eps("ln", eps)
    _check_impl("ln", impl)
    if impl == "torch" and layout == "image":
        return nn.GroupNorm(1, num_features, eps=eps, affine=affine)  # the GroupNorm paper's LN
    if impl == "torch":
        return nn.LayerNorm(num_features, eps=eps, elementwise_affine=affine)
    cls = _pick(
        "ln",
        impl,
        layout,
        {
            "reference": {
                "vector": R.ReferenceLayerNorm,
                "image": R.ReferenceLayerNorm,
                "sequence": L.TokenReferenceLayerNorm,
            },
        },
    )
    return cls(num_features, eps=eps, affine=affine)


@register_norm(
    "in",
    summary="InstanceNorm: per sample and channel over the spatial positions; per-channel affine",
    axes={"image": "H,W", "sequence": "L"},
    refused={"vector": ONE_VALUE},
)
def instance_norm(
    num_features: int, layout: Layout, *, eps: float = 1e-5, affine: bool = True, impl: str = "torch"
) -> nn.Module:
    _check_eps("in", eps)
    cls = _pick(
        "in",
        impl,
        layout,
        {
            "torch": {"image": nn.InstanceNorm2d, "sequence": L.SequenceInstanceNorm},
            "reference": {"image": R.ReferenceInstanceNorm, "sequence": L.SequenceReferenceInstanceNorm},
        },
    )
    return cls(num_features, eps=eps, affine=affine)


@register_norm(
    "gn",
    summary="GroupNorm: per sample and channel group over (C/G, H, W); per-channel affine",
    axes={"image": "C/G,H,W", "sequence": "D/G"},
    refused={"vector": ONE_VALUE},
)
def group_norm(
    num_features: int,
    layout: Layout,
    *,
    groups: int = 8,
    eps: float = 1e-5,
    affine: bool = True,
    impl: str = "torch",
) -> nn.Module:
    _check_eps("gn", eps)
    if not isinstance(groups, int) or groups < 1 or num_features % groups:
        divisors = [g for g in range(1, num_features + 1) if num_features % g == 0]
        raise NormError(
            f"norm=gn: groups={groups} does not divide the {num_features} channels of this layer; "
            f"GroupNorm splits the channels into equal groups. Allowed for {num_features} channels: "
            f"{', '.join(map(str, divisors))}."
        )
    cls = _pick(
        "gn",
        impl,
        layout,
        {
            "torch": {"image": nn.GroupNorm, "sequence": L.TokenGroupNorm},
            "reference": {"image": R.ReferenceGroupNorm, "sequence": L.TokenReferenceGroupNorm},
        },
    )
    return cls(groups, num_features, eps=eps, affine=affine)


@register_norm(
    "rms",
    summary="RMSNorm: like LayerNorm but divides by the root mean square, no mean subtracted, no beta",
    axes={"vector": "C", "image": "C,H,W", "sequence": "D"},
)
def rms_norm(
    num_features: int, layout: Layout, *, eps: float = 1e-6, affine: bool = True, impl: str = "torch"
) -> nn.Module:
    _check_eps("rms", eps)
    cls = _pick(
        "rms",
        impl,
        layout,
        {
            "torch": {"vector": L.RMSNorm, "image": L.RMSNorm, "sequence": L.TokenRMSNorm},
            "reference": {
                "vector": R.ReferenceRMSNorm,
                "image": R.ReferenceRMSNorm,
                "sequence": L.TokenReferenceRMSNorm,
            },
        },
    )
    return cls(num_features, eps=eps, affine=affine)


@register_norm(
    "none",
    summary="No normalization (identity): the baseline",
    axes={"vector": "", "image": "", "sequence": ""},
)
def no_norm(num_features: int, layout: Layout, *, impl: str = "torch") -> nn.Module:
    _check_impl("none", impl)
    return nn.Identity()


@dataclass(frozen=True)
class NormExplanation:
    """What a norm computes on an input of a given shape (`normbench explain`)."""

    name: str
    shape: tuple[int, ...]
    layout: str
    axes: str
    num_statistics: int
    values_per_statistic: int
    params: int
    batch_statistics: bool


def explain(name: str, shape: tuple[int, ...], **options: Any) -> NormExplanation:
    """Axes, statistic counts and parameters of norm `name` on an input of `shape` (2-, 3- or 4-D)."""
    layout = {2: "vector", 3: "sequence", 4: "image"}.get(len(shape))
    if layout is None or min(shape) < 1:
        raise NormError(
            f"shape {','.join(map(str, shape))} is not a feature shape: give N,C (vector), N,L,D (sequence) "
            "or N,C,H,W (image) with positive sizes."
        )
    sizes = dict(zip(LAYOUTS[layout], shape, strict=True))
    channels = sizes["D"] if layout == "sequence" else sizes["C"]
    module = build_norm(name, channels, layout, **options)  # refuses what the registry refuses
    spec = NORMS[name]
    axes = spec.axes[layout]
    if not axes:
        return NormExplanation(name, shape, layout, "", 0, 0, 0, False)
    groups = options.get("groups", spec.options.get("groups", 1))
    per = [sizes[a] if "/" not in a else sizes[a.split("/")[0]] // groups for a in axes.split(",")]
    each = math.prod(per)
    params = sum(p.numel() for p in module.parameters())
    return NormExplanation(name, shape, layout, axes, math.prod(shape) // each, each, params, spec.batch_statistics)
