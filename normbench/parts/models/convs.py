"""Convolution options: a registered option NAME is the setting `model.NAME=true|false` of every model that takes a
`conv_layer` (cnn and the ResNets), and replaces the class of every convolution of that model when true.

    register_conv("ws", "normbench.parts.models.ws.StdConv2d", summary="...", formula="...")

One registration is the whole of an option: the models' config schema gets the key (`ModelSpec.options`), the
model gets the class (`conv_layer`), `normbench explain NORM --conv NAME` says what it computes, and run names,
HParams and reports name the norm with it (`gn+ws`, `compared`), so that a sweep comparing gn with gn + ws tells
them apart. A conv option reparametrizes the convolution, not the features, so it pairs with any norm. Options are
alternatives: a model takes at most one at a time.

Classes are named by import path: this module imports no torch (`explain`, `list` and `report` read it).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from normbench.base.errors import ConfigError
from normbench.base.options import Options

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ConvOption:
    """A registered conv option: its class (by import path), one line about it and its formula in words."""

    name: str
    factory: str
    summary: str
    formula: str


CONVS: Options[ConvOption] = Options("conv")


def register_conv(name: str, factory: str, *, summary: str, formula: str, replace: bool = False) -> ConvOption:
    return CONVS.register(name, ConvOption(name, factory, summary, formula), origin=factory, replace=replace)


register_conv(
    "ws",
    "normbench.parts.models.ws.StdConv2d",
    summary="Weight Standardization (Qiao et al. 2019): each conv filter standardized in every forward",
    formula=(
        "Ŵ = (W - mean(W)) / sqrt(var(W) + 1e-6) per output filter, over its C_in × kh × kw weights (biased variance), "
        "and the conv uses Ŵ; the features are not touched, so it pairs with any norm (gn + ws: BiT's small-batch "
        "choice)"
    ),
)


def chosen(options: Mapping[str, Any]) -> list[str]:
    """The conv options set true in a model's options (a config node or a dict)."""
    return [name for name in CONVS if bool(options.get(name, False))]


def conv_layer(options: Mapping[str, Any]) -> type[nn.Conv2d]:
    """The conv class of a model's options: nn.Conv2d, or the class of the one conv option set true."""
    on = chosen(options)
    if len(on) > 1:
        raise ConfigError(
            f"model.{' and model.'.join(on)} are both true: conv options are alternatives (each replaces the class of "
            "every conv), so set at most one."
        )
    if not on:
        from torch import nn

        return nn.Conv2d
    module, _, attr = CONVS[on[0]].factory.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def compared(norm: str, model: Mapping[str, Any] | Any) -> str:
    """The norm as a run compares it: its name, and `+NAME` for each conv option the model has on (`gn+ws`). `model`:
    the model's options, a config node or a dataclass."""
    options = model if isinstance(model, Mapping) else vars(model) if hasattr(model, "__dict__") else {}
    return "+".join([norm, *chosen(options)])


def base_norm(label: str) -> str:
    """`gn` of `gn+ws`: the registered norm of a compared label."""
    return label.split("+", 1)[0]
