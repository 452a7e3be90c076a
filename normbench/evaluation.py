"""Validation, and BatchNorm's two other ways to be evaluated.

`evaluate` is the plain one: mean loss and accuracy in whatever mode the model is in (eval mode: BN uses its
running statistics, the default `val/acc`). For BN-family models, `bn_mode_accuracies` adds validation in train
mode, each batch of the training batch size normalized with its own statistics (`val/acc_batch_stats`), and with
population statistics re-estimated over training batches with frozen weights (`val/acc_precise_bn`, PreciseBN,
Wu & Johnson 2021). Comparing the three separates noisy batch statistics from poor running estimates.
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType

import torch
import torch.nn.functional as F
from torch import nn

from normbench.data import Batches


def has_running_stats(module: nn.Module) -> bool:
    """A BN-family layer: it keeps running statistics and updates them with a momentum."""
    return getattr(module, "running_mean", None) is not None and hasattr(module, "momentum")


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


def bn_mode_accuracies(
    model: nn.Module,
    val: Batches,
    val_at_train_batch_size: Batches,
    train: Batches,
    epoch: int,
    precise_bn_batches: int,
    autocast: AbstractContextManager[object] | None = None,
) -> tuple[float, float | None]:
    """Validation accuracy with batch statistics (the running statistics are left as they were), and with
    PreciseBN statistics over `precise_bn_batches` training batches (None when 0). Leaves `model` in eval mode."""
    with frozen_buffers(model):
        model.train()
        batch_stats = evaluate(model, val_at_train_batch_size, autocast)[1]
    precise = None
    if precise_bn_batches:
        precise = evaluate(precise_bn(model, train, epoch, precise_bn_batches).eval(), val, autocast)[1]
    model.eval()
    return batch_stats, precise


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
def precise_bn(model: nn.Module, batches: Batches, epoch: int, num_batches: int) -> nn.Module:
    """A copy of `model` whose BN statistics are the cumulative average over `num_batches` training
    batches (momentum=None) with the weights frozen, instead of the exponential average of training."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if has_running_stats(m):
            m.running_mean.zero_()
            m.running_var.fill_(1)
            m.num_batches_tracked.zero_()
            m.momentum = None
    model.train()
    for i, (x, _) in enumerate(batches.epoch(epoch + 10_000)):  # a draw of its own, not training's order
        if i >= num_batches:
            break
        model(x)
    return model
