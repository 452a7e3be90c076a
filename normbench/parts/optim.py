"""Optimizers and learning-rate schedules: the `optim` config group, one class per optimizer, one function per
schedule.

An optimizer's class is its config schema (keys, types, defaults, ranges) and its builder: `build(groups, lr)` gets
the parameter groups (weight decay on weight matrices and kernels only) and the effective learning rate, which
`effective_lr` computes once for the run's plan. A schedule is a registered function of the step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from normbench.base.errors import ConfigError
from normbench.base.options import Options, origin_of
from normbench.base.settings import MISSING, Choice, setting

if TYPE_CHECKING:
    import torch


class LrScaling(Choice):
    linear = "linear"  # lr·B/base (GroupNorm paper)
    sqrt = "sqrt"  # lr·sqrt(B/base)
    none = "none"


# --- Schedules: the lr's factor at each optimizer step ------------------------------------------------------

Schedule = Callable[..., float]
SCHEDULES: Options[Schedule] = Options("schedule")


def register_schedule(name: str) -> Callable[[Schedule], Schedule]:
    """Register `factor(progress, step, total_steps, milestones, gamma) -> float`: the lr's factor after the warm-up,
    `progress` being the share of the post-warm-up steps done (0 to 1)."""

    def decorator(factor: Schedule) -> Schedule:
        return SCHEDULES.register(name, factor, origin=origin_of(factor))

    return decorator


@register_schedule("cosine")
def cosine(progress: float, **_: Any) -> float:
    """From lr to 0 over the budget, along half a cosine."""
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@register_schedule("constant")
def constant(**_: Any) -> float:
    """lr throughout."""
    return 1.0


@register_schedule("step")
def step(step: int, total_steps: int, milestones: Sequence[float], gamma: float, **_: Any) -> float:
    """× gamma once the step reaches each milestone, a fraction of the run's steps (rounded down): the GroupNorm
    paper's ÷10 at epochs 30, 60 and 90 of 100 is milestones 0.3, 0.6, 0.9."""
    return gamma ** sum(step >= int(m * total_steps) for m in milestones)


def lr_lambda(
    schedule: str, warmup_steps: int, total_steps: int, milestones: Sequence[float] = (), gamma: float = 0.1
) -> Callable[[int], float]:
    """The lr's factor at each optimizer step (0-based): a linear warm-up, then the schedule."""
    factor = SCHEDULES[schedule]

    def at(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return factor(progress=progress, step=step, total_steps=total_steps, milestones=milestones, gamma=gamma)

    return at


# --- Optimizers ---------------------------------------------------------------------------------------------


@dataclass
class OptimConfig:
    """lr is the rate at base_batch_size; lr_scaling adapts it to batch_size."""

    name: str = MISSING
    lr: float = setting(MISSING, gt=0)
    base_batch_size: int = setting(128, ge=1)
    lr_scaling: LrScaling = LrScaling.linear
    weight_decay: float = setting(MISSING, ge=0)  # on weights only, not on γ/β or biases
    schedule: str = "cosine"  # a registered schedule: cosine (to 0 over the budget), constant, step
    warmup_steps: int = setting(0, ge=0)
    # schedule=step: the lr is multiplied by gamma at each milestone, given as a fraction of the run's optimizer
    # steps (fractions, not epochs, so that one list fits every budget: 0.3,0.6,0.9 of 100 epochs = epochs 30/60/90).
    milestones: list[float] = setting([0.5, 0.75], gt=0, lt=1)  # noqa: RUF009 (setting() returns a field)
    gamma: float = setting(0.1, gt=0)

    def effective_lr(self, batch_size: int) -> float:
        """optim.lr is the rate at optim.base_batch_size, scaled to the run's batch size: linear: lr · B / base
        (Goyal et al. 2017, the GroupNorm paper's setting); sqrt: lr · sqrt(B / base); none: lr as given."""
        ratio = batch_size / self.base_batch_size
        scale = {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[self.lr_scaling]
        return float(self.lr * scale)

    def build(self, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
        """The optimizer over parameter `groups` at learning rate `lr`."""
        raise NotImplementedError

    def scheduler(self, optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
        import torch

        factor = lr_lambda(self.schedule, self.warmup_steps, total_steps, list(self.milestones), self.gamma)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


Optim = TypeVar("Optim", bound=type[OptimConfig])
OPTIMIZERS: Options[type[OptimConfig]] = Options("optim", ConfigError)


def register_optim(cls: Optim) -> Optim:
    """Register an optimizer's class under the name its `name` field states."""
    name = {f.name: f for f in dataclasses.fields(cls)}["name"].default
    OPTIMIZERS.register(name, cls, origin=origin_of(cls))
    return cls


@register_optim
@dataclass
class SGD(OptimConfig):
    """SGD with momentum; lr scaled linearly with batch size from optim.base_batch_size"""

    name: str = "sgd"
    lr: float = setting(0.1, gt=0)
    momentum: float = setting(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = setting(5.0e-4, ge=0)

    def build(self, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
        import torch

        return torch.optim.SGD(groups, lr=lr, momentum=self.momentum, nesterov=self.nesterov)


@register_optim
@dataclass
class AdamW(OptimConfig):
    """AdamW; lr scaled with the square root of batch size from optim.base_batch_size"""

    name: str = "adamw"
    lr: float = setting(2.0e-3, gt=0)
    lr_scaling: LrScaling = LrScaling.sqrt
    betas: list[float] = setting([0.9, 0.999], ge=0, lt=1)  # noqa: RUF009 (setting() returns a field)
    weight_decay: float = setting(0.05, ge=0)

    def build(self, groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
        import torch

        return torch.optim.AdamW(groups, lr=lr, betas=tuple(self.betas))
