"""The norm registry: a name → `NormSpec` map, and the lookups every model, check and command goes through.

    build_norm("gn", 64, "image", groups=8)  ->  nn.GroupNorm(8, 64)

A layout says what the features look like where the norm sits: `vector` (N, C) after a Linear layer,
`image` (N, C, H, W) after a convolution, `sequence` (N, L, D) inside a Transformer. A norm declares, per
layout it supports, the axes each of its statistics is taken over and its class per implementation
(`torch`: PyTorch's fused kernels, `reference`: normbench's code written from the formulas):

    @register_norm("mynorm", summary="...", layouts={"image": on("C,H,W", torch=MyNorm, reference=MyRefNorm)})
    def my_norm(cls, num_features: int, *, eps: float = 1e-5) -> nn.Module:
        return cls(num_features, eps=eps)

The builder's keyword-only parameters are the norm's options: their defaults and type annotations are the
only statement of them (`NormSpec.options`, `NormSpec.option_types`); `impl` is added by the registry. The
built-in norms are registered in `catalog.py`.

A norm-activation layer (FRN + TLU, EvoNorm: `activation=True`) is a norm and the nonlinearity after it in one
layer. Its builder takes `act` after `num_features`, and the models put it where they put a norm followed by their
activation, with no activation of their own; `act=False` builds it where a model has no activation after its norm
(models/__init__.py). `formula`, `statistic`, `modes` and `without_act` are what `normbench explain` says of a norm.

Conventions every built-in norm follows: the variance used to normalize is the biased one, eps sits inside the
square root, γ and β are per channel. Batch norms keep running statistics with **PyTorch's momentum
convention**, `running = (1 - m) * running + m * batch` with m = 0.1 and the *unbiased* batch variance going
into `running_var` (the notes write the textbook form, momentum ≈ 0.9 on the old value).

This module and `catalog.py` import no torch (classes may be named by their import path and are imported on
first use), so `normbench --help`, `list` and `report` read the registry in a fraction of a second.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from normbench.base.errors import NormError
from normbench.base.options import Options, origin_of

if TYPE_CHECKING:
    from torch import nn

Layout = Literal["vector", "image", "sequence"]
LAYOUTS: dict[str, tuple[str, ...]] = {
    "vector": ("N", "C"),
    "image": ("N", "C", "H", "W"),
    "sequence": ("N", "L", "D"),
}
IMPLS = ("torch", "reference")
# A norm class, or its import path ("torch.nn.BatchNorm1d"), imported when a norm is first built.
Factory = Callable[..., "nn.Module"] | str


@dataclass(frozen=True)
class Support:
    """How a norm treats one layout: the axes each statistic averages ("N,H,W"; "C/G" = the channels of one
    group, G being the norm's `groups` option; "" = no statistics), and its class for each implementation."""

    axes: str
    classes: Mapping[str, Factory]


def on(axes: str, **classes: Factory) -> Support:
    """`on("N,H,W", torch=nn.BatchNorm2d, reference=ReferenceBatchNorm)`: one row of a norm's layout table."""
    return Support(axes, classes)


@dataclass(frozen=True)
class NormSpec:
    name: str
    summary: str
    builder: Callable[..., nn.Module]  # builder(cls, num_features, **options) -> the layer
    layouts: Mapping[str, Support]  # the layouts it supports, nothing else
    refused: Mapping[str, str] = field(default_factory=dict)  # layout -> why it has no meaning there
    batch_statistics: bool = False  # normalizes with batch statistics in training, running ones in eval
    min_values: int = 2  # fewest values one statistic may average: a variance needs two
    # Batch statistics over every worker's share (SyncBN); otherwise per worker share (docs/workers.md).
    synced: bool = False
    # A norm-activation layer (FRN + TLU, EvoNorm): it takes the place of the norm *and* the activation after it,
    # and is built with act=False where a model puts no activation after its norm (a residual branch's last norm).
    activation: bool = False
    # Its parameter count for `channels` channels and its options (and `act` for a norm-activation layer), said
    # without building it (so `explain` of a built-in norm imports no torch; tests/test_norms.py holds it against
    # every built layer). None: count the parameters of a built layer (a plugin's norm that does not say).
    params: Callable[..., int] | None = None
    # What `normbench explain` says of it: the formula, what each statistic over the axes is ("mean and variance",
    # "mean square", "variance"), how training and evaluation differ (default: from `batch_statistics`), and for
    # a norm-activation layer what it is where a model puts no activation after its norm.
    formula: str = ""
    statistic: str = "mean and variance"
    modes: str = ""
    without_act: str = ""

    @property
    def train_vs_eval(self) -> str:
        """How training and evaluation differ, in words."""
        if self.modes:
            return self.modes
        if self.batch_statistics:
            return "differ: batch statistics in training, running statistics in eval"
        return "identical: statistics come from each sample alone"

    def statistic_words(self, count: int) -> str:
        """`8 means and 8 variances`, `8 mean squares`: `count` of each statistic it takes."""
        return " and ".join(f"{count} {word}{'s' * (count != 1)}" for word in self.statistic.split(" and "))

    @property
    def axes(self) -> dict[str, str]:
        """Layout -> the axes each statistic is taken over."""
        return {layout: support.axes for layout, support in self.layouts.items()}

    @property
    def impls(self) -> tuple[str, ...]:
        """Its implementations, the default first."""
        return tuple(next(iter(self.layouts.values())).classes)

    @property
    def per_share(self) -> bool:
        """Whether its training statistics are taken per worker share (BN-family norms, not synced ones)."""
        return self.batch_statistics and not self.synced

    @property
    def options(self) -> dict[str, Any]:
        """Option name -> default: the builder's keyword-only parameters, then `impl`."""
        return {**{p.name: p.default for p in self._keywords()}, "impl": self.impls[0]}

    @property
    def option_types(self) -> dict[str, Any]:
        """Option name -> its type annotation as a Python object (`float`, `float | None`, `str`, ...)."""
        found = {p.name: Any if p.annotation is p.empty else p.annotation for p in self._keywords()}
        # Annotations are strings under `from __future__ import annotations`: evaluate them where they were written.
        evaluated = {k: eval(a, self.builder.__globals__) if isinstance(a, str) else a for k, a in found.items()}
        return {**evaluated, "impl": str}

    def _keywords(self) -> list[inspect.Parameter]:
        params = inspect.signature(self.builder).parameters.values()
        return [p for p in params if p.kind is p.KEYWORD_ONLY]

    def check_options(self, num_features: int, **options: Any) -> None:
        """Run the builder's own checks of its options (groups that do not divide the channels, eps <= 0, ...)
        without building the layer, so that nothing here imports torch: the builder gets a class that builds
        nothing."""
        options = {k: v for k, v in options.items() if k != "impl"}
        args = (True,) if self.activation else ()
        self.builder(_NoLayer, num_features, *args, **options)

    def statistic_size(self, shape: tuple[int, ...], **options: Any) -> int:
        """How many values of an input of `shape` each statistic averages (0: the norm takes none)."""
        layout = layout_of(shape)
        self.refuse_unless_supported(layout)
        axes = self.layouts[layout].axes
        if not axes:
            return 0
        sizes = dict(zip(LAYOUTS[layout], shape, strict=True))
        groups = options.get("groups", self.options.get("groups", 1))
        return math.prod(sizes[a] if "/" not in a else sizes[a.split("/")[0]] // groups for a in axes.split(","))

    def too_few_values(self, shape: tuple[int, ...], training: bool, **options: Any) -> bool:
        """Whether a statistic would average fewer than `min_values` values of an input of `shape`.
        Batch norms use batch statistics only in training; the others compute theirs in both modes."""
        each = self.statistic_size(shape, **options)
        return 0 < each < self.min_values and (training or not self.batch_statistics)

    def normalizes(self, shape: tuple[int, ...], training: bool, **options: Any) -> bool:
        """Whether the norm takes statistics of an input of `shape` (`none` takes none) and passes `check`."""
        layout = layout_of(shape)
        if layout not in self.layouts or not self.layouts[layout].axes:
            return False
        mine = {k: v for k, v in options.items() if k in self.options}
        grouped = [a.split("/")[0] for a in self.layouts[layout].axes.split(",") if "/" in a]
        groups = mine.get("groups", self.options.get("groups", 1))
        sizes = dict(zip(LAYOUTS[layout], shape, strict=True))
        if any(sizes[a] % groups for a in grouped):  # the groups must divide the channels
            return False
        return not self.too_few_values(shape, training, **mine)

    def shape_problem(self, shape: tuple[int, ...], training: bool, **options: Any) -> str | None:
        """Why this norm cannot normalize an input of `shape` (a sentence), or None if it can."""
        if not self.too_few_values(shape, training, **options):
            return None
        layout, each = layout_of(shape), self.statistic_size(shape, **options)
        axes = self.layouts[layout].axes
        one_channel = "/G" in axes and each == 1 and axes.count(",") == 0  # groups = channels on (N, C) or tokens
        return (
            f"{'In training, ' if self.batch_statistics else ''}norm={self.name} takes each statistic over "
            f"{axes}, which gives {each} value{'s' * (each != 1)} per statistic on {tuple(shape)}: a "
            f"{self.statistic.split(' and ')[-1]} needs {self.min_values}."
            + (" With as many groups as channels each group is one channel (InstanceNorm), which has one value "
               "per sample here; use fewer groups." if one_channel else "")
        )  # fmt: skip

    def check(self, shape: tuple[int, ...], training: bool, **options: Any) -> None:
        """Refuse an input of `shape` that this norm cannot normalize, e.g. bn on (1, C) in training."""
        problem = self.shape_problem(shape, training, **options)
        if problem:
            works = [n for n, s in NORMS.items() if s.normalizes(shape, training, **options)]
            raise NormError(
                f"norm={self.name} cannot normalize {layout_of(shape)} features of shape {tuple(shape)}. {problem} "
                f"Norms whose statistics average enough values here: {', '.join(works) or 'none'}."
            )

    def refuse_unless_supported(self, layout: str) -> None:
        if layout not in LAYOUTS:
            raise NormError(f"Unknown layout '{layout}'. Layouts: {', '.join(LAYOUTS)}.")
        if layout not in self.layouts:
            why = self.refused.get(layout, "it is not defined for them")
            usable = [n for n, s in sorted(NORMS.items()) if layout in s.layouts and n != "none"]
            raise NormError(
                f"norm={self.name} cannot normalize {layout} features {shape_of(layout)}: {why}. "
                f"{self.name} applies to: {', '.join(f'{lay} {shape_of(lay)}' for lay in self.layouts)}. "
                f"Norms for {layout} features: {', '.join(usable)}."
            )


NORMS: Options[NormSpec] = Options("norm", NormError)  # in registration order, which lists and reports follow


def _NoLayer(*args: Any, **kwargs: Any) -> None:
    """What `NormSpec.check_options` hands a builder as its class: builds nothing."""


def register_norm(
    name: str,
    *,
    summary: str,
    layouts: Mapping[str, Support],
    refused: Mapping[str, str] | None = None,
    batch_statistics: bool = False,
    min_values: int = 2,
    synced: bool = False,
    activation: bool = False,
    params: Callable[..., int] | None = None,
    formula: str = "",
    statistic: str = "mean and variance",
    modes: str = "",
    without_act: str = "",
    replace: bool = False,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register `builder(cls, num_features, *, **options) -> nn.Module` under `name`; `cls` is the class that
    `layouts` names for the layout and implementation being built. A norm-activation layer (`activation=True`)
    has `builder(cls, num_features, act, *, **options)`, `act` saying whether it includes its activation, and takes
    the place of the norm and the activation after it in every model (docs/plugins.md). A name already registered
    (a built-in norm, another plugin's) is refused, naming both places, unless `replace=True` asks for it.
    `params(channels, **options)`: its parameter count (a norm-activation layer's also gets `act`; None: counted on
    a built layer when asked). `formula`, `statistic`, `modes`, `without_act`: what `normbench explain` says of it
    (see NormSpec)."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        impls = [tuple(support.classes) for support in layouts.values()]
        if not layouts or set(layouts) - set(LAYOUTS) or len(set(impls)) != 1 or not impls[0]:
            raise NormError(
                f"register_norm('{name}'): layouts must map some of {', '.join(LAYOUTS)} to on(axes, impl=class, "
                f"...) with the same implementations for every layout; got {dict(layouts)}."
            )
        spec = NormSpec(name, summary, builder, dict(layouts), dict(refused or {}), batch_statistics, min_values,
                        synced, activation, params, formula=formula, statistic=statistic, modes=modes,
                        without_act=without_act)  # fmt: skip
        NORMS.register(name, spec, origin=origin_of(builder), replace=replace)
        return builder

    return decorator


def get_norm(name: str) -> NormSpec:
    return NORMS[name]  # an unknown name: a NormError listing the norms


def build_norm(name: str, num_features: int, layout: Layout, act: bool = True, **options: Any) -> nn.Module:
    """Build the norm `name` for `num_features` channels of the given layout, refusing what has no meaning. `act`:
    a norm-activation layer includes its activation (plain norms never do: the model adds its own)."""
    spec = get_norm(name)
    spec.refuse_unless_supported(layout)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise NormError(
            f"norm={name} has no option {', '.join(repr(k) for k in unknown)}. "
            f"Its options: {', '.join(f'{k}={v}' for k, v in spec.options.items())}."
        )
    impl = options.pop("impl", spec.impls[0])
    if impl not in spec.impls:
        raise NormError(
            f"norm={name}: impl='{impl}' is not available. Allowed: {', '.join(spec.impls)} "
            "(torch = PyTorch's fused kernels, reference = normbench's code written from the formulas)."
        )
    args = (act,) if spec.activation else ()
    return spec.builder(_resolve(spec.layouts[layout].classes[impl]), num_features, *args, **options)


def _resolve(factory: Factory) -> Callable[..., nn.Module]:
    if not isinstance(factory, str):
        return factory
    module, _, attr = factory.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def layout_of(shape: tuple[int, ...]) -> str:
    """The layout of a feature shape: N,C (vector), N,L,D (sequence) or N,C,H,W (image)."""
    layout = {2: "vector", 3: "sequence", 4: "image"}.get(len(shape))
    if layout is None or min(shape) < 1:
        raise NormError(
            f"shape {','.join(map(str, shape))} is not a feature shape: give N,C (vector), N,L,D (sequence) "
            "or N,C,H,W (image) with positive sizes."
        )
    return layout


def shape_of(layout: str) -> str:
    """`(N, C, H, W)` for "image"."""
    return "(" + ", ".join(LAYOUTS[layout]) + ")"
