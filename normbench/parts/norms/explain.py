"""What a norm computes on an input of a given shape (`normbench explain`): axes, statistic counts, parameters."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from normbench.parts.norms.registry import LAYOUTS, build_norm, get_norm, layout_of


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


def explain(name: str, shape: tuple[int, ...], **options: Any) -> NormExplanation:
    """Axes, statistic counts and parameters of norm `name` on an input of `shape` (2-, 3- or 4-D)."""
    layout = layout_of(shape)
    sizes = dict(zip(LAYOUTS[layout], shape, strict=True))
    module = build_norm(name, sizes["D" if layout == "sequence" else "C"], layout, **options)  # refuses as it does
    spec = get_norm(name)
    each = spec.statistic_size(shape, **options)
    if not each:
        return NormExplanation(name, shape, layout, "", 0, 0, 0, False)
    params = sum(p.numel() for p in module.parameters())
    axes = spec.layouts[layout].axes
    groups = options.get("groups", spec.options.get("groups")) if "/G" in axes else None
    problem = spec.shape_problem(shape, training=True, **options)
    return NormExplanation(
        name, shape, layout, axes, math.prod(shape) // each, each, params, spec.batch_statistics, groups, problem
    )
