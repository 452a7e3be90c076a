"""Validation, and BatchNorm's two other ways to be evaluated.

`evaluate` is the plain one: mean loss and accuracy in whatever mode the model is in (eval mode: BN uses its
running statistics, the default `val/acc`). For BN-family models, `bn_mode_accuracies` adds validation in train
mode, each share of the training images per worker normalized with its own statistics (`val/acc_batch_stats`:
that size is the point, it is what BN sees in training; the whole batch for syncbn), and with population
statistics re-estimated over a fixed number of training images with frozen weights (`val/acc_precise_bn`,
PreciseBN, Wu & Johnson 2021). PreciseBN counts images, not batches, and uses its own batch size, so that runs at
batch 2 and at batch 128 are estimated from the same images. Comparing the three separates noisy batch
statistics from poor running estimates.

The batch-statistics validation runs grouped (`batch_stats_accuracy`): chunks of many shares go through one
forward with per-share statistics (the worker shares of parts/norms/shares.py), so a run at 2 images per worker
makes a few dozen forwards of its validation set instead of one per 2 images, with the same statistics.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from types import TracebackType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normbench.base.errors import NormError
from normbench.parts.data.batches import Batches
from normbench.parts.norms.shares import PerShare, forward_in_shares

RUNNING = {"running_mean": 0.0, "running_var": 1.0}  # the running statistics a norm may keep, and their start


def running_stats(module: nn.Module) -> dict[str, Tensor]:
    """The running statistics `module` keeps (`running_mean`, `running_var`, or both): BatchNorm keeps both,
    EvoNorm-B0 a variance only; a buffer set to None (BN with track_running_stats=false) is none."""
    found = {name: getattr(module, name, None) for name in RUNNING}
    return {name: value for name, value in found.items() if isinstance(value, Tensor)}


def has_running_stats(module: nn.Module) -> bool:
    """A layer with running statistics, like BN: it keeps a running mean or variance and updates it with a momentum."""
    return bool(running_stats(module)) and hasattr(module, "momentum")


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Batches, autocast: AbstractContextManager[object] | None = None
) -> tuple[float, float]:
    """Mean loss and accuracy of `model` over `batches`, in the mode the model is in. One host sync."""
    device = batches.labels.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    for x, y in batches.epoch():
        with autocast or nullcontext():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(dim=1) == y).sum()
    n = len(batches.labels)
    return loss_sum.item() / n, correct.item() / n


PRECISE_BN_DRAW = 10_000  # the epoch number of PreciseBN's draw of training images: not one that training uses


@dataclass(frozen=True)
class PreciseBNPlan:
    """How PreciseBN re-estimates BN statistics: `batches` batches of `batch_size` training images."""

    batch_size: int
    batches: int
    requested: int  # eval.precise_bn_images

    @property
    def images(self) -> int:
        return self.batch_size * self.batches

    @property
    def warning(self) -> str | None:
        """Said in the record when fewer images were used than asked for (fvcore's PreciseBN checks this too)."""
        if self.images >= self.requested:
            return None
        return (
            f"PreciseBN used {self.images} training images, fewer than eval.precise_bn_images={self.requested} "
            f"(the training set, in whole batches of {self.batch_size}): its statistics are less precise."
        )


def plan_precise_bn(images: int, batch_size: int, available: int) -> PreciseBNPlan | None:
    """`images` training images in batches of `batch_size`, both cut to the `available` images (a batch is at
    least 2 images: BN needs two to have a variance); None when `images` is 0 (PreciseBN off)."""
    if not images:
        return None
    batch = min(available, max(2, min(batch_size, images)))
    return PreciseBNPlan(batch, max(1, min(images, available) // batch), images)


def bn_mode_accuracies(
    model: nn.Module,
    val: Batches,
    val_at_train_batch_size: Batches,
    precise_bn_batches: Batches | None,
    plan: PreciseBNPlan | None,
    autocast: AbstractContextManager[object] | None = None,
) -> tuple[float, float | None]:
    """Validation accuracy with batch statistics of the training images per statistic, the batch size of
    `val_at_train_batch_size` (the running statistics are left as they were; `batch_stats_accuracy`), and with
    PreciseBN statistics over `plan.batches` batches of `precise_bn_batches` (None without a plan). Leaves
    `model` in eval mode."""
    with contract(BATCH_STATS_CONTRACT), frozen_buffers(model):
        model.train()
        batch_stats = batch_stats_accuracy(model, val_at_train_batch_size, val.batch_size, autocast)
    precise = None
    if precise_bn_batches is not None and plan is not None:
        with contract(PRECISE_BN_CONTRACT):
            precise = evaluate(precise_bn(model, precise_bn_batches, plan.batches).eval(), val, autocast)[1]
    model.eval()
    return batch_stats, precise


# What these validations ask of a norm with running statistics, in the words of docs/plugins.md ("What
# normbench asks of a norm"), where the whole contract is written.
BATCH_STATS_CONTRACT = (
    "the validation with batch statistics, which puts the model in train mode and restores every buffer afterwards "
    "(a norm with running statistics must normalize with the batch's statistics in train mode and keep its whole "
    "state in buffers and parameters)"
)
PRECISE_BN_CONTRACT = (
    "PreciseBN, which deep-copies the model, zeroes running_mean and num_batches_tracked, fills running_var with 1 "
    "and sets momentum=None on every layer with running statistics (a norm with running_mean or running_var and "
    "momentum must accept momentum=None as a cumulative average of the batches seen, as torch's BatchNorm does)"
)


class NormContractError(NormError):
    """A norm that failed inside normbench's own machinery; `at` names the norm and the step."""

    def __init__(self, phase: str, error: BaseException) -> None:
        first = str(error).splitlines()[0] if str(error) else ""
        super().__init__(f"{phase}: {type(error).__name__}: {first}")
        self.phase, self.error = phase, f"{type(error).__name__}{': ' + first if first else ''}"

    def at(self, norm: str, step: int) -> NormError:
        return NormError(
            f"norm={norm} failed at step {step} in {self.phase}; it raised {self.error}. That is the contract every "
            'norm meets, the built-in ones included: see "What normbench asks of a norm" in docs/plugins.md. Fix '
            "the norm, or set eval.bn_modes=false to skip these validations."
        )


@contextmanager
def contract(phase: str) -> Iterator[None]:
    """A norm's failure inside `phase` as a NormContractError, so that it is reported as the norm's, not a crash."""
    try:
        yield
    except (TypeError, AttributeError, RuntimeError, ValueError) as error:
        raise NormContractError(phase, error) from error


def groupable(model: nn.Module) -> bool:
    """Whether every layer with batch statistics takes them per worker share (syncbn's, over all, do not)."""
    from normbench.parts.norms.layers import ReferenceSyncBatchNorm

    return all(
        isinstance(m, PerShare) and not isinstance(m, ReferenceSyncBatchNorm)
        for m in model.modules()
        if has_running_stats(m)
    )


@torch.no_grad()
def batch_stats_accuracy(
    model: nn.Module, shares: Batches, most: int, autocast: AbstractContextManager[object] | None = None
) -> float:
    """Accuracy in the mode the model is in (train: batch statistics) with the validation images cut into
    consecutive shares of `shares.batch_size` images, each normalized over itself, as the loop over `shares`'
    batches does, but forwarding up to `most` images (whole shares) at once with per-share statistics.

    The last share holds what is left (n mod share images) and is normalized on its own, as the loop did; a
    single image left over is normalized together with the share before it, since one image has no batch
    variance on vector features (the loop failed there). The running statistics are restored after every
    forward: Batch Renorm's r and d correct every share against the trained running statistics (the loop let
    them drift with the validation batches it had seen); BatchNorm's training output does not read them."""
    share = shares.batch_size
    n = len(shares.labels)
    chunk = share * max(1, most // share) if groupable(model) else share
    correct = torch.zeros((), device=shares.labels.device)

    def forward(x: Tensor, y: Tensor) -> None:
        nonlocal correct
        count = len(y) // share if len(y) % share == 0 else 1
        with frozen_buffers(model), autocast or nullcontext():  # every share sees the trained running statistics
            logits = forward_in_shares(model, x, count)
        correct += (logits.argmax(dim=1) == y).sum()

    held: tuple[Tensor, Tensor] | None = None
    for x, y in shares.rebatched(chunk).epoch():
        if held is not None and len(y) == 1 and n > 1:  # a last image alone: with the chunk before it
            x, y = torch.cat([held[0], x]), torch.cat([held[1], y])
        elif held is not None:
            whole_and_rest(*held, share, forward)
        held = (x, y)
    if held is not None:
        whole_and_rest(*held, share, forward)
    return correct.item() / n


def whole_and_rest(x: Tensor, y: Tensor, share: int, forward: Callable[[Tensor, Tensor], None]) -> None:
    """Forward the whole shares of a chunk at once, then what is left as one share (a single image left over
    joins the share before it)."""
    rest = len(y) % share
    if rest == 1 and len(y) > share:
        rest += share
    whole = len(y) - rest
    if whole:
        forward(x[:whole], y[:whole])
    if rest:
        forward(x[whole:], y[whole:])


class frozen_buffers:
    """Restore every buffer (BN running statistics) on exit: a train-mode pass must not change them."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.saved = {k: v.clone() for k, v in self.model.named_buffers()}

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        with torch.no_grad():
            for k, v in self.model.named_buffers():
                v.copy_(self.saved[k])


@torch.no_grad()
def precise_bn(model: nn.Module, batches: Batches, num_batches: int) -> nn.Module:
    """A copy of `model` whose BN statistics are the cumulative average over the first `num_batches` batches of
    `batches` (momentum=None) with the weights frozen, instead of the exponential average of training. The draw
    is the same at every call, so successive estimates differ only by the weights."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if has_running_stats(m):
            for name, statistic in running_stats(m).items():
                statistic.fill_(RUNNING[name])
            m.num_batches_tracked.zero_()
            m.momentum = None
    model.train()
    for i, (x, _) in enumerate(batches.epoch(PRECISE_BN_DRAW)):
        if i >= num_batches:
            break
        forward_in_shares(model, x, 1)  # population statistics over whole batches, whatever the training's split
    return model
