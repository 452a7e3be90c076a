"""Construction of a run: from a composed config to the model, optimizer, schedule, budget and batches.

Nothing here trains. The config has been checked at composition (types, ranges, cross-key rules such as
budget=steps needing max_steps, or a batch no larger than the training set), so the builders do not check again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from normbench.base import signals
from normbench.base.files import write_atomic
from normbench.parts import data as data_module
from normbench.parts.data import Batches, ImageData, load_data
from normbench.parts.models import build_model, count_parameters
from normbench.parts.norms import get_norm
from normbench.run import schema
from normbench.run.devices import select_device
from normbench.run.distributed import Ranks
from normbench.run.evaluation import PreciseBNPlan, has_running_stats, plan_precise_bn
from normbench.run.record import Budget
from normbench.run.schema import effective_lr  # the one statement of it; imported from here by the trainer

# Each optimizer from its parameter groups, the effective lr and the `optim` config group, by the group's schema
# (which names it).
OPTIMIZERS: dict[type, Callable[[list[dict[str, Any]], float, DictConfig], torch.optim.Optimizer]] = {
    schema.SGD: lambda groups, lr, o: torch.optim.SGD(groups, lr=lr, momentum=o.momentum, nesterov=o.nesterov),
    schema.AdamW: lambda groups, lr, o: torch.optim.AdamW(groups, lr=lr, betas=tuple(o.betas)),
}


def build_optimizer(model: nn.Module, optim: DictConfig, lr: float) -> torch.optim.Optimizer:
    # Weight decay on weight matrices and kernels only: decaying γ, β and biases fights the normalization.
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    with signals.deferred():  # the first optimizer of a process imports torch._dynamo (see signals.deferred)
        return OPTIMIZERS[OmegaConf.get_type(optim)](groups, lr, optim)


def lr_lambda(
    schedule: str, warmup_steps: int, total_steps: int, milestones: Sequence[float] = (), gamma: float = 0.1
) -> Callable[[int], float]:
    """The lr's factor at each optimizer step (0-based): a linear warm-up, then cosine (to 0 at total_steps),
    constant, or step: × gamma once step reaches each milestone (a fraction of total_steps, rounded down), the
    GroupNorm paper's ÷10 at epochs 30, 60 and 90 of 100 being milestones 0.3, 0.6, 0.9."""
    at = [int(m * total_steps) for m in milestones]

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        if schedule == "step":
            return gamma ** sum(step >= m for m in at)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


# Synthetic sets at least this large are made once and then read from the cache (12,000 images take 5-8 s to
# make on 2 cores, about a tenth of the default run, and every job of a sweep made them again).
CACHE_FROM_IMAGES = 4096


def cached_data(cfg: DictConfig) -> ImageData:
    """`load_data(cfg)`, kept for synthetic sets in $NORMBENCH_DATA/synthetic (default ~/.cache/normbench).

    The file is named by a hash of the data config, data.py's source and torch's version, so a change to the
    generator never reads stale images. Anything unreadable is made again."""
    spec = OmegaConf.to_container(cfg, resolve=True)
    if cfg.name != "synthetic" or cfg.train_size + cfg.val_size < CACHE_FROM_IMAGES:
        return load_data(spec)  # type: ignore[arg-type]
    source = Path(data_module.__file__).read_bytes()
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode() + source + torch.__version__.encode())
    path = Path(os.environ.get("NORMBENCH_DATA", "~/.cache/normbench")).expanduser() / "synthetic"
    path = path / f"{key.hexdigest()[:20]}.pt"
    try:
        return ImageData(**torch.load(path, weights_only=True))
    except Exception:  # missing, partial or from elsewhere: make it
        data = load_data(spec)  # type: ignore[arg-type]
        write_atomic(path, lambda f: torch.save(_compact(data), f), binary=True)
        return data


def _compact(data: ImageData) -> dict[str, Any]:
    # Each split its own storage: a slice saved as it is drags the whole array into the file.
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in dataclasses.asdict(data).items()}


def make_budget(cfg: DictConfig, train_size: int) -> Budget:
    """Steps per epoch count full batches only (incomplete ones are dropped); max_steps caps an epoch budget."""
    steps_per_epoch = train_size // cfg.batch_size
    total = cfg.max_steps if cfg.budget == "steps" else min(cfg.epochs * steps_per_epoch, cfg.max_steps or math.inf)
    return Budget(cfg.budget, total, math.ceil(total / steps_per_epoch), steps_per_epoch)


def make_deterministic() -> None:
    """Bitwise-repeatable GPU runs, at some speed: CPU runs are repeatable without it.

    cuBLAS needs a fixed workspace (set before its first use), cuDNN must not pick kernels by timing, and
    PyTorch must refuse ops that have no deterministic kernel.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


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
    num_classes: int
    lr: float
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    budget: Budget
    autocast: AbstractContextManager[Any]
    memory_format: str
    train_batches: Batches
    val_batches: Batches
    # BN-family models with eval.bn_modes: validation batches of the training images per worker (batch statistics
    # depend on it), and PreciseBN's training batches of its own batch size with its plan; None otherwise.
    val_at_train_batch_size: Batches | None
    precise_bn_batches: Batches | None = None
    precise_bn: PreciseBNPlan | None = None
    workers: int = 1  # worker shares emulated in this process's forward (the BN-family layers know it too)


def set_up(cfg: DictConfig, data: ImageData | None = None, ranks: Ranks | None = None) -> Setup:
    """Build everything in a fixed order from the seed, so that the same config gives the same run; on every
    rank of a multi-process run (`ranks`: run/distributed.py) the same."""
    ranks = ranks or Ranks()
    device = select_device(cfg.device)
    if device.type == "cuda" and device.index is None:  # the current device: a sweep job's own GPU (launch/jobs.py)
        device = torch.device("cuda", torch.cuda.current_device())
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.train.deterministic:
        make_deterministic()
    seed_everything(cfg.seed)
    data = data or cached_data(cfg.data)
    budget = make_budget(cfg, len(data.train_labels))
    # Worker shares this process's BN-family layers take in one forward: all of them in one process, its own
    # alone in each of the run's worker processes.
    emulated = cfg.workers // ranks.world
    model = build_model(cfg.model, cfg.norm, data.num_classes, emulated).to(device)
    channels_last = cfg.train.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    lr = effective_lr(cfg.optim, cfg.batch_size)
    optimizer = build_optimizer(model, cfg.optim, lr)
    o = cfg.optim
    schedule = lr_lambda(o.schedule, o.warmup_steps, budget.total_steps, list(o.milestones), o.gamma)
    amp = cfg.train.amp and device.type == "cuda"
    common = dict(mean=data.mean, std=data.std, device=device, channels_last=channels_last)
    train_batches = Batches(
        data.train_images, data.train_labels, cfg.batch_size, train=True, augment=cfg.data.augment, seed=cfg.seed,
        **common,
    )  # fmt: skip
    val_batches = Batches(data.val_images, data.val_labels, cfg.eval.batch_size, train=False, **common)
    bn_modes = cfg.eval.bn_modes and any(has_running_stats(m) for m in model.modules())
    # The validation images already on the device, cut into batches of the images each training statistic
    # averages: a worker's share, or the whole batch for a norm synced over the workers.
    per_statistic = cfg.batch_size if get_norm(cfg.norm.name).synced else cfg.batch_size // cfg.workers
    small = min(per_statistic, len(val_batches.labels))
    precise = plan_precise_bn(cfg.eval.precise_bn_images, cfg.eval.precise_bn_batch_size, len(data.train_labels))
    precise = precise if bn_modes else None
    eager = ranks.wrap(model, device)
    return Setup(
        device=device,
        model=model,
        forward=torch.compile(eager, mode=cfg.train.compile_mode.value) if cfg.train.compile else eager,
        eager=eager,
        ranks=ranks,
        params=count_parameters(model),
        num_classes=data.num_classes,
        lr=lr,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        budget=budget,
        autocast=torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext(),
        memory_format="channels_last" if channels_last else "contiguous",
        train_batches=train_batches,
        val_batches=val_batches,
        val_at_train_batch_size=(
            Batches(val_batches.images, val_batches.labels, small, train=False, **common) if bn_modes else None
        ),
        # The training images already on the device (padded when augmented), in PreciseBN's batch size.
        precise_bn_batches=train_batches.rebatched(precise.batch_size) if precise else None,
        precise_bn=precise,
        workers=emulated,
    )
