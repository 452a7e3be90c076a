"""What a norm computes on an input of a given shape (`normbench explain`): its formula, axes, statistic counts,
parameters, how training and evaluation differ, for a norm-activation layer what it is without its activation, and
with data-parallel workers what one worker share is and what syncbn averages. All of it read from the registry."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from normbench.base.errors import NormError
from normbench.parts.norms.registry import LAYOUTS, NormSpec, get_norm, layout_of


@dataclass(frozen=True)
class NormExplanation:
    name: str
    shape: tuple[int, ...]
    layout: str
    axes: str
    num_statistics: int
    values_per_statistic: int
    params: int
    batch_statistics: bool
    groups: int | None = None  # grouped norms (gn): the number of groups; groups = channels is InstanceNorm
    problem: str | None = None  # why the norm cannot normalize this shape in training (too few values), if so
    workers: int = 1  # data-parallel workers sharing the batch N: shares of N / workers samples
    synced: bool = False  # batch statistics over every worker's share (syncbn), else per share
    statistic: str = "mean and variance"  # what each statistic over the axes is
    formula: str = ""
    train_vs_eval: str = ""
    activation: bool = False  # a norm-activation layer: it includes the activation after it
    without_act: str = ""  # what it is where a model puts no activation after its norm
    params_without_act: int | None = None  # its parameters then

    @property
    def images_per_worker(self) -> int:
        return self.shape[0] // self.workers


def explain(name: str, shape: tuple[int, ...], workers: int = 1, **options: Any) -> NormExplanation:
    """Axes, statistic counts and parameters of norm `name` on an input of `shape` (2-, 3- or 4-D), whose batch
    N is shared by `workers` data-parallel workers: a norm with per-worker batch statistics takes them over
    each share of N / workers samples, syncbn over all of them, per-sample norms are unaffected."""
    layout = layout_of(shape)
    if workers < 1 or shape[0] % workers:
        raise NormError(
            f"--workers {workers} does not divide the batch N={shape[0]} of shape {','.join(map(str, shape))}: each "
            "worker takes an equal, contiguous share of N / workers samples. Give a workers count that divides N."
        )
    sizes = dict(zip(LAYOUTS[layout], shape, strict=True))
    channels = sizes["D" if layout == "sequence" else "C"]
    spec = get_norm(name)
    spec.refuse_unless_supported(layout)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise NormError(f"norm={name} has no option {', '.join(unknown)}. Its options: {', '.join(spec.options)}.")
    spec.check_options(channels, **options)  # the builder's own refusals, without building the layer (no torch)
    per_share = spec.batch_statistics and not spec.synced
    each = spec.statistic_size((shape[0] // workers, *shape[1:]) if per_share else shape, **options)
    if not each:
        return NormExplanation(name, shape, layout, "", 0, 0, 0, False, workers=workers)
    given = {**spec.options, **options}
    params = _params(spec, name, channels, layout, given, act=True)
    axes = spec.layouts[layout].axes
    groups = options.get("groups", spec.options.get("groups")) if "/G" in axes else None
    share = (shape[0] // workers, *shape[1:]) if per_share else shape
    problem = spec.shape_problem(share, training=True, **options)
    return NormExplanation(
        name,
        shape,
        layout,
        axes,
        math.prod(shape) // each,
        each,
        params,
        spec.batch_statistics,
        groups,
        problem,
        workers,
        spec.synced,
        spec.statistic,
        spec.formula,
        spec.train_vs_eval,
        spec.activation,
        spec.without_act,
        _params(spec, name, channels, layout, given, act=False) if spec.activation else None,
    )


def _params(spec: NormSpec, name: str, channels: int, layout: str, given: dict[str, Any], act: bool) -> int:
    """The layer's parameter count, as its spec states it, or for a plugin's norm that does not state it, a built
    layer's (which imports torch)."""
    if spec.params is not None:
        return spec.params(channels, **given, **({"act": act} if spec.activation else {}))
    from normbench.parts.norms.registry import build_norm

    return sum(p.numel() for p in build_norm(name, channels, layout, act=act, **given).parameters())
