"""The built-in norms: one registration each, with its layouts, classes and options.

What each (norm, layout) pair averages, following the user's notes (docs/norms.md):

| norm   | vector (N, C)                   | image (N, C, H, W)                 | sequence (N, L, D)         |
|--------|---------------------------------|------------------------------------|----------------------------|
| bn     | per C, over N                   | per C, over N, H, W                | per D, over N, L           |
| brn    | as bn                           | as bn                              | as bn                      |
| syncbn | as bn, over all workers         | as bn, over all workers            | as bn, over all workers    |
| ln     | per sample, over C              | per sample, over C, H, W           | per token, over D          |
| rms    | as ln (no mean)                 | as ln (no mean)                    | as ln (no mean)            |
| in     | refused: 1 value                | per sample and C, over H, W        | per sample and D, over L   |
| gn     | per sample and group, over C/G  | per sample and group, over C/G,H,W | per token and group, D/G   |
| frn    | refused: 1 value                | per sample and C, over H, W (x²)   | refused                    |
| evonorm_s0 | refused                     | per sample and group, over C/G,H,W | refused                    |
| evonorm_b0 | refused: 1 value            | per C over N, H, W + per sample over H, W | refused             |
| none   | identity                        | identity                           | identity                   |

γ and β are always per channel (C or D of each), never per position, so parameter counts do not depend on
the resolution: `ln` on images is the GroupNorm paper's LN (= GroupNorm with one group), `in` its IN (with
affine), which is what its Table 1 compares. IN is refused on vector features because each channel holds a
single value per sample there: there is no variance to take (the question the notes end with).

GN on vector features is where normbench departs from the notes, which call it not applicable ("cannot group a
single value"). GN groups channels, not positions: on (N, C) a group is C/G channels of one sample, and their
mean and variance exist whenever C/G >= 2. G=1 is LN on vectors; only G=C leaves one value per statistic (each
group one channel: IN), and that one case is refused, as IN is. The layer is the same formula as on images
with no spatial axes, which is what PyTorch's nn.GroupNorm computes on (N, C) input.

With data-parallel workers (`workers=W`, docs/workers.md) bn, brn and evonorm_b0 take their batch statistics per
worker share of batch_size / W images; syncbn takes them over every share, i.e. over the total batch.

frn, evonorm_s0 and evonorm_b0 are norm-activation layers (`activation=True`): each replaces a norm *and* the ReLU
after it, and is built with `act=False` where a model puts no activation after its norm (normact.py says what the
layer is then).

Classes are named by import path so that this module imports no torch (see registry.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from normbench.base.errors import NormError
from normbench.parts.norms.registry import LAYOUTS, on, register_norm

if TYPE_CHECKING:
    from torch import nn

NN, LAYERS, REF = "torch.nn", "normbench.parts.norms.layers", "normbench.parts.norms.reference"
NORMACT = "normbench.parts.norms.normact"
ONE_VALUE = (
    "each channel holds a single value per sample in (N, C) features, so there is no mean or "
    "variance to take within a sample and channel"
)
Cls = Callable[..., "nn.Module"]


def affine_params(channels: int, affine: bool = True, **_: object) -> int:
    """γ and β per channel when affine: the parameter count of every norm here but rms and none."""
    return 2 * channels if affine else 0


def _check_eps(name: str, eps: float) -> None:
    if not eps > 0:
        raise NormError(f"norm={name}: eps={eps} must be positive (it keeps sqrt(var + eps) away from zero).")


def _check_momentum(name: str, momentum: float | None) -> None:
    if momentum is not None and not 0 < momentum <= 1:
        raise NormError(
            f"norm={name}: momentum={momentum} is outside (0, 1]. PyTorch's convention: "
            "running = (1 - momentum) * running + momentum * batch; null = cumulative average."
        )


def batch_norm_builder(name: str) -> Callable[..., nn.Module]:
    """The builder of bn and syncbn, which differ in their classes only: one signature, so one set of options."""

    def batch_norm(
        cls: Cls,
        num_features: int,
        *,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> nn.Module:
        _check_eps(name, eps)
        _check_momentum(name, momentum)
        return cls(num_features, eps=eps, momentum=momentum, affine=affine, track_running_stats=track_running_stats)

    return batch_norm


register_norm(
    "bn",
    summary="BatchNorm: per channel over the batch; batch statistics in training, running ones in eval",
    layouts={
        "vector": on("N", torch=f"{LAYERS}.BatchNorm1d", reference=f"{REF}.ReferenceBatchNorm"),
        "image": on("N,H,W", torch=f"{LAYERS}.BatchNorm2d", reference=f"{REF}.ReferenceBatchNorm"),
        "sequence": on("N,L", torch=f"{LAYERS}.SequenceBatchNorm", reference=f"{LAYERS}.SequenceReferenceBatchNorm"),
    },
    batch_statistics=True,
    params=affine_params,
    formula="y = γ · (x - mean) / sqrt(var + eps) + β,  mean and var per channel over the batch and positions",
)(batch_norm_builder("bn"))


# PyTorch has no fused Batch Renorm kernel: the formula code is the only implementation.
@register_norm(
    "brn",
    summary="Batch Renormalization (Ioffe 2017): BN corrected towards running statistics by clipped r, d",
    layouts={
        "vector": on("N", reference=f"{LAYERS}.BatchRenorm"),
        "image": on("N,H,W", reference=f"{LAYERS}.BatchRenorm"),
        "sequence": on("N,L", reference=f"{LAYERS}.SequenceBatchRenorm"),
    },
    batch_statistics=True,
    params=affine_params,
    formula="y = γ · ((x - mean) / sqrt(var + eps) · r + d) + β,  r, d: the batch's statistics against the running "
    "ones, clipped",
)
def batch_renorm(
    cls: Cls,
    num_features: int,
    *,
    eps: float = 1e-5,
    momentum: float | None = 0.1,
    affine: bool = True,
    r_max: float = 3.0,
    d_max: float = 5.0,
    warmup_steps: int = 1000,
) -> nn.Module:
    _check_eps("brn", eps)
    _check_momentum("brn", momentum)
    if r_max < 1 or d_max < 0:
        raise NormError(f"norm=brn: r_max={r_max} must be >= 1 and d_max={d_max} >= 0 (r_max=1, d_max=0 is BN).")
    return cls(
        num_features, eps=eps, momentum=momentum, affine=affine, r_max=r_max, d_max=d_max, warmup_steps=warmup_steps
    )


register_norm(
    "syncbn",
    summary="SyncBatchNorm: BatchNorm over every data-parallel worker's share (= bn over the total batch)",
    layouts={
        "vector": on("N", torch=f"{LAYERS}.SyncBatchNorm", reference=f"{LAYERS}.ReferenceSyncBatchNorm"),
        "image": on("N,H,W", torch=f"{LAYERS}.SyncBatchNorm", reference=f"{LAYERS}.ReferenceSyncBatchNorm"),
        "sequence": on(
            "N,L", torch=f"{LAYERS}.SequenceSyncBatchNorm", reference=f"{LAYERS}.SequenceReferenceSyncBatchNorm"
        ),
    },
    batch_statistics=True,
    synced=True,
    params=affine_params,
    formula="y = γ · (x - mean) / sqrt(var + eps) + β,  mean and var per channel over every worker's share",
)(batch_norm_builder("syncbn"))


@register_norm(
    "ln",
    summary="LayerNorm: per sample over all its features (per token in sequences); per-channel affine",
    layouts={
        "vector": on("C", torch=f"{LAYERS}.LayerNorm", reference=f"{REF}.ReferenceLayerNorm"),
        "image": on("C,H,W", torch=f"{LAYERS}.ChannelLayerNorm", reference=f"{REF}.ReferenceLayerNorm"),
        "sequence": on("D", torch=f"{LAYERS}.LayerNorm", reference=f"{LAYERS}.TokenReferenceLayerNorm"),
    },
    params=affine_params,
    formula="y = γ · (x - mean) / sqrt(var + eps) + β,  mean and var per sample (per token) over its features",
)
def layer_norm(cls: Cls, num_features: int, *, eps: float = 1e-5, affine: bool = True) -> nn.Module:
    _check_eps("ln", eps)
    return cls(num_features, eps=eps, affine=affine)


@register_norm(
    "in",
    summary="InstanceNorm: per sample and channel over the spatial positions; per-channel affine",
    layouts={
        "image": on("H,W", torch=f"{NN}.InstanceNorm2d", reference=f"{REF}.ReferenceInstanceNorm"),
        "sequence": on(
            "L", torch=f"{LAYERS}.SequenceInstanceNorm", reference=f"{LAYERS}.SequenceReferenceInstanceNorm"
        ),
    },
    refused={"vector": ONE_VALUE},
    params=affine_params,
    formula="y = γ · (x - mean) / sqrt(var + eps) + β,  mean and var per sample and channel over the positions",
)
def instance_norm(cls: Cls, num_features: int, *, eps: float = 1e-5, affine: bool = True) -> nn.Module:
    _check_eps("in", eps)
    return cls(num_features, eps=eps, affine=affine)


@register_norm(
    "gn",
    summary="GroupNorm: per sample and channel group over (C/G, H, W), or C/G on vectors; per-channel affine",
    layouts={
        # (N, C): per sample over the C/G channels of a group; groups=C (one value each) is refused by the shape check.
        "vector": on("C/G", torch=f"{NN}.GroupNorm", reference=f"{REF}.ReferenceGroupNorm"),
        "image": on("C/G,H,W", torch=f"{NN}.GroupNorm", reference=f"{REF}.ReferenceGroupNorm"),
        "sequence": on("D/G", torch=f"{LAYERS}.TokenGroupNorm", reference=f"{LAYERS}.TokenReferenceGroupNorm"),
    },
    params=affine_params,
    formula="y = γ · (x - mean) / sqrt(var + eps) + β,  mean and var per sample and group of C/G channels",
)
def group_norm(cls: Cls, num_features: int, *, groups: int = 8, eps: float = 1e-5, affine: bool = True) -> nn.Module:
    _check_eps("gn", eps)
    _check_groups("gn", groups, num_features)
    return cls(groups, num_features, eps=eps, affine=affine)


def _check_groups(name: str, groups: int, num_features: int) -> None:
    if not isinstance(groups, int) or groups < 1 or num_features % groups:
        divisors = [g for g in range(1, num_features + 1) if num_features % g == 0]
        raise NormError(
            f"norm={name}: groups={groups} does not divide the {num_features} channels of this layer; "
            f"{'GroupNorm splits' if name == 'gn' else 'its statistic splits, as GroupNorm,'} the channels into equal "
            f"groups. Allowed for {num_features} channels: "
            f"{', '.join(map(str, divisors))}."
        )


@register_norm(
    "rms",
    summary="RMSNorm: like LayerNorm but divides by the root mean square, no mean subtracted, no beta",
    layouts={
        "vector": on("C", torch=f"{LAYERS}.RMSNorm", reference=f"{REF}.ReferenceRMSNorm"),
        "image": on("C,H,W", torch=f"{LAYERS}.RMSNorm", reference=f"{REF}.ReferenceRMSNorm"),
        "sequence": on("D", torch=f"{LAYERS}.TokenRMSNorm", reference=f"{LAYERS}.TokenReferenceRMSNorm"),
    },
    min_values=1,  # no variance: one value is normalized to its sign
    params=lambda channels, affine=True, **_: channels if affine else 0,  # γ only
    formula="y = γ · x / sqrt(mean of x² + eps),  per sample (per token) over its features",
    statistic="mean square",
)
def rms_norm(cls: Cls, num_features: int, *, eps: float = 1e-6, affine: bool = True) -> nn.Module:
    _check_eps("rms", eps)
    return cls(num_features, eps=eps, affine=affine)


# --- Norm-activation layers: each takes the place of a norm and the ReLU after it (models/__init__.py) ------------
# Defined on feature maps (N, C, H, W) only: see the reasons below and docs/norms.md. PyTorch has no kernel for them,
# so the formula code (normact.py) is their only implementation. Defaults are timm's (tests/test_normact.py), except
# EvoNorm-S0's groups: 8 as normbench's gn (timm's 32 does not divide a ResNet's 16 channels).

NORM_ACT_ON_TOKENS = (
    "it is a norm-activation layer for convolutional feature maps, and the transformer has no place for one: every "
    "norm of its pre-norm blocks feeds attention or an MLP with no activation after it"
)
BUILT_WITHOUT_ACT = "γ·x + β only, no statistic (as the authors' code and timm: EvoNorm without its nonlinearity)"


@register_norm(
    "frn",
    summary="Filter Response Norm + TLU (Singh & Krishnan 2020): per sample and channel, no mean, max(y, τ)",
    layouts={"image": on("H,W", reference=f"{NORMACT}.FilterResponseNorm")},
    refused={
        "vector": (
            "each channel holds a single value per sample in (N, C) features, so FRN's mean square over the "
            "positions is x² itself and x / sqrt(x² + eps) keeps only the sign of x"
        ),
        "sequence": NORM_ACT_ON_TOKENS,
    },
    activation=True,
    params=lambda channels, act=True, **_: 3 * channels if act else 2 * channels,  # γ, β, and τ with its TLU
    formula="z = max(γ · x / sqrt(ν² + eps) + β, τ),  ν² = mean of x² over H, W (no mean subtracted)",
    statistic="mean square",
    modes="identical: statistics come from each sample alone",
    without_act="y = γ · x / sqrt(ν² + eps) + β: FRN without its TLU (no τ)",
)
def filter_response_norm(cls: Cls, num_features: int, act: bool, *, eps: float = 1e-5) -> nn.Module:
    _check_eps("frn", eps)
    return cls(num_features, act=act, eps=eps)


@register_norm(
    "evonorm_s0",
    summary="EvoNorm-S0 (Liu et al. 2020): x · sigmoid(v·x) over GroupNorm's std, per sample; no batch statistics",
    layouts={"image": on("C/G,H,W", reference=f"{NORMACT}.EvoNormS0")},
    refused={
        "vector": (
            "it is defined for convolutional feature maps (N, C, H, W), where Liu et al. searched and evaluated it; "
            "normbench does not carry it to (N, C) features, which no paper measured"
        ),
        "sequence": NORM_ACT_ON_TOKENS,
    },
    activation=True,
    params=lambda channels, act=True, **_: 3 * channels if act else 2 * channels,  # γ, β, and v with its gate
    formula="y = x · sigmoid(v · x) / sqrt(var + eps) · γ + β,  var over C/G, H, W of one sample and group",
    statistic="variance",
    modes="identical: statistics come from each sample alone",
    without_act=BUILT_WITHOUT_ACT,
)
def evonorm_s0(cls: Cls, num_features: int, act: bool, *, groups: int = 8, eps: float = 1e-5) -> nn.Module:
    _check_eps("evonorm_s0", eps)
    _check_groups("evonorm_s0", groups, num_features)
    return cls(num_features, act=act, groups=groups, eps=eps)


@register_norm(
    "evonorm_b0",
    summary="EvoNorm-B0 (Liu et al. 2020): x / max(batch std, v·x + instance std); running variance in eval",
    layouts={"image": on("N,H,W", reference=f"{NORMACT}.EvoNormB0")},
    refused={
        "vector": (
            "its per-sample statistic is a variance over each channel's positions, and a channel of (N, C) features "
            "holds a single value per sample: there is no variance to take"
        ),
        "sequence": NORM_ACT_ON_TOKENS,
    },
    batch_statistics=True,
    activation=True,
    params=lambda channels, act=True, **_: 3 * channels if act else 2 * channels,  # γ, β, and v with its max
    formula=(
        "y = x / max(sqrt(var_b + eps), v · x + sqrt(var_s + eps)) · γ + β,  var_b over N, H, W per channel (the "
        "batch's), var_s over H, W per sample and channel"
    ),
    statistic="variance",
    modes=(
        "differ: the batch variance var_b in training, the running variance in eval (no running mean: no mean is "
        "subtracted); var_s comes from each sample in both"
    ),
    without_act=BUILT_WITHOUT_ACT,
)
def evonorm_b0(cls: Cls, num_features: int, act: bool, *, eps: float = 1e-3, momentum: float | None = 0.1) -> nn.Module:
    _check_eps("evonorm_b0", eps)
    _check_momentum("evonorm_b0", momentum)
    return cls(num_features, act=act, eps=eps, momentum=momentum)


@register_norm(
    "none",
    summary="No normalization (identity): the baseline",
    layouts={layout: on("", torch=f"{NN}.Identity", reference=f"{NN}.Identity") for layout in LAYOUTS},
    params=lambda channels, **_: 0,
)
def no_norm(cls: Cls, num_features: int) -> nn.Module:
    return cls()
