"""Construction of a run from its plan: the model, optimizer, schedule and batches.

Nothing here trains, and nothing here derives a fact of the run: the plan (plan/plan.py) holds them. The model is
built once per run, and its norm layers' input shapes are checked on that very model (`build_model`) before the run
directory is claimed, so a shape a norm cannot normalize is refused before anything is written.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from normbench.base import signals
from normbench.base.errors import ConfigError, NormbenchError
from normbench.parts.data import ImageData
from normbench.parts.data.batches import Batches
from normbench.parts.models import build_model as build
from normbench.parts.models import check_norm_shapes, count_parameters
from normbench.plan.plan import RunPlan
from normbench.run.devices import select_device
from normbench.run.distributed import Ranks
from normbench.run.evaluation import PreciseBNPlan, has_running_stats, plan_precise_bn


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def build_model(plan: RunPlan) -> nn.Module:
    """The run's model, from its seed, with its norm layers' inputs checked (`check_norm_shapes`) at the images
    per statistic of training and, for norms with batch statistics validated with them, of that validation. Raises
    ConfigError/NormError naming the layer and what to change. The one build of the run's model (on the CPU)."""
    config = plan.config
    select_device(config.device)  # a device this machine lacks is refused here, before anything is written
    seed_everything(config.seed)
    try:
        model = build(plan.options("model"), plan.options("norm"), plan.data.channels, plan.data.image_size,
                      plan.data.classes, per_share=config.workers > 1)  # fmt: skip
        shape = (plan.data.channels, plan.data.image_size)
        check_norm_shapes(model, config.model.name, plan.options("norm"), *shape, plan.per_statistic, _setting(plan))
        if plan.norm.batch_statistics and config.eval.bn_modes and plan.eval_per_statistic < plan.per_statistic:
            setting = (
                f"eval.bn_modes=true (validation with batch statistics, over batches of at most the "
                f"{plan.data.val_images} validation images)"
            )
            check_norm_shapes(model, config.model.name, plan.options("norm"), *shape, plan.eval_per_statistic, setting)
    except NormbenchError:
        raise
    except (ValueError, TypeError, RuntimeError) as error:
        why = str(error).splitlines()[0] if str(error) else type(error).__name__  # torch appends C++ frames
        raise ConfigError(
            f"model={config.model.name} cannot be built for data={config.data.name} ({plan.data.words()}) from its "
            f"config {plan.options('model')}: {why}"
        ) from None
    return model


def _setting(plan: RunPlan) -> str:
    """What gives the images per statistic, in words, for a refusal."""
    config = plan.config
    if plan.norm.per_share and config.workers > 1:
        images = plan.per_statistic
        return (f"batch_size={config.batch_size} with workers={config.workers} ({images} image{'s' * (images != 1)} "
                "per worker)")  # fmt: skip
    return f"batch_size={config.batch_size}"


def make_deterministic() -> None:
    """Bitwise-repeatable GPU runs, at some speed: CPU runs are repeatable without it.

    cuBLAS needs a fixed workspace (set before its first use), cuDNN must not pick kernels by timing, and
    PyTorch must refuse ops that have no deterministic kernel.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)


def build_optimizer(model: nn.Module, plan: RunPlan) -> torch.optim.Optimizer:
    # Weight decay on weight matrices and kernels only: decaying γ, β and biases fights the normalization.
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    optim = plan.config.optim
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    with signals.deferred():  # the first optimizer of a process imports torch._dynamo (see signals.deferred)
        return optim.build(groups, plan.lr)


@dataclass
class Setup:
    """What a run is built from. `forward` is the module the training step calls: `eager`, or its compiled
    version (probed steps call `eager`). `eager` is `model` itself, or DDP around it across real worker processes
    (`ranks`); evaluation calls `model`."""

    device: torch.device
    model: nn.Module
    forward: Callable[..., torch.Tensor]
    eager: Callable[..., torch.Tensor]
    ranks: Ranks
    params: int
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    autocast: AbstractContextManager[Any]
    memory_format: str
    train_batches: Batches
    val_batches: Batches
    # BN-family models with eval.bn_modes: validation batches of the training images per statistic (batch statistics
    # depend on it), and PreciseBN's training batches of its own batch size with its plan; None otherwise.
    val_at_train_batch_size: Batches | None
    precise_bn_batches: Batches | None = None
    precise_bn: PreciseBNPlan | None = None


def set_up(plan: RunPlan, model: nn.Module, data: ImageData | None = None, ranks: Ranks | None = None) -> Setup:
    """Everything the loop needs, around the run's `model` (`build_model`), in a fixed order, so that the same plan
    gives the same run; on every rank of a multi-process run (`ranks`: run/distributed.py) the same."""
    config = plan.config
    ranks = ranks or Ranks()
    device = select_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.train.deterministic:
        make_deterministic()
    data = data or config.data.load()
    model = model.to(device)
    channels_last = config.train.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, plan)
    amp = config.train.amp and device.type == "cuda"
    common = dict(mean=data.mean, std=data.std, device=device, channels_last=channels_last)
    augment = dict(augment=config.data.augment, pad=augment_pad(plan), flip=config.data.flip)
    train_batches = Batches(data.train_images, data.train_labels, config.batch_size, train=True, seed=config.seed,
                            **augment, **common)  # fmt: skip
    val_batches = Batches(data.val_images, data.val_labels, config.eval.batch_size, train=False, **common)
    bn_modes = config.eval.bn_modes and any(has_running_stats(m) for m in model.modules())
    precise = plan_precise_bn(config.eval.precise_bn_images, config.eval.precise_bn_batch_size, plan.data.train_images)
    precise = precise if bn_modes else None
    eager = ranks.wrap(model, device)
    return Setup(
        device=device,
        model=model,
        forward=torch.compile(eager, mode=config.train.compile_mode.value) if config.train.compile else eager,
        eager=eager,
        ranks=ranks,
        params=count_parameters(model),
        optimizer=optimizer,
        scheduler=config.optim.scheduler(optimizer, plan.budget.total_steps),
        autocast=torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext(),
        memory_format="channels_last" if channels_last else "contiguous",
        train_batches=train_batches,
        val_batches=val_batches,
        # The validation images already on the device, cut into batches of the images each training statistic
        # averages: a worker's share, or the whole batch for a norm synced over the workers.
        val_at_train_batch_size=(
            Batches(val_batches.images, val_batches.labels, plan.eval_per_statistic, train=False, **common)
            if bn_modes
            else None
        ),
        # The training images already on the device (padded when augmented), in PreciseBN's batch size.
        precise_bn_batches=train_batches.rebatched(precise.batch_size) if precise else None,
        precise_bn=precise,
    )


def augment_pad(plan: RunPlan) -> int:
    """Pixels of padding for the random crop: an eighth of the image's shorter side, CIFAR's 4 at 32×32."""
    return max(1, round(min(plan.data.image_size) / 8))
