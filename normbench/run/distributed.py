"""Real workers: one run across `workers` processes through torch.distributed (docs/workers.md, "Real processes").

A process started by torchrun (or by normbench's `launch=processes`, which starts torchrun's agent) finds RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in its environment and is one worker of the run (`join`):

* every rank builds the same model from the same seed, wraps it in DistributedDataParallel (default
  `broadcast_buffers=True`: each forward starts from rank 0's BN running statistics) and reads the same global
  batch from `data.Batches`, keeping its contiguous share: rank r trains on rows r·n:(r+1)·n of each batch of
  `batch_size` = W·n images, the share the emulated run gives worker r. DDP averages the gradients, so the step
  is the emulated run's step;
* rank 0 alone writes (results.json, TensorBoard, checkpoints) and validates, the others wait at a barrier: it
  validates the model it holds, whose BN running statistics are its own, as the emulated run's rule says;
* a stop signal reaches the run at a step boundary on every rank together: each step the ranks all-reduce
  (max) the signal each has received, on a gloo group of their own, so that the flag never waits for a GPU.

`Ranks()` (the default: one process) makes every hook here a no-op, so a one-process run is unchanged.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from normbench.base.signals import StopRequest
from normbench.parts.norms.layers import unsynced
from normbench.run.devices import select_device

# The start of the message of a rank that stopped because another one did not answer: `launch/processes.py` names
# the rank that failed first, not the ones that lost it.
LOST = "lost contact with the other ranks"
# How long a rank waits for the others at a collective (rank 0's validation at an epoch's end included).
TIMEOUT = datetime.timedelta(minutes=30)


@dataclass
class Ranks:
    """This process's place in the run: rank `rank` of `world`. The defaults are the one-process run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    flags: Any = None  # the gloo group of the stop agreement (None: one process)

    @property
    def writes(self) -> bool:
        """Whether this process writes the run's files and validates: rank 0."""
        return self.rank == 0

    @property
    def name(self) -> str:
        return f"rank {self.rank} of {self.world}"

    def shares(self, batches: Iterator[tuple[Tensor, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
        """Each global batch's rows of this rank: the contiguous share r of W (views, no copy)."""
        for x, y in batches:
            if self.world == 1:
                yield x, y
            else:
                n = len(y) // self.world
                yield x[self.rank * n : (self.rank + 1) * n], y[self.rank * n : (self.rank + 1) * n]

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module the training step calls: DDP around `model` across the ranks, `model` itself alone (and
        without a process group: a `Ranks` made by hand has nothing to average across)."""
        if self.world == 1 or not dist.is_initialized():
            return model
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def sum(self, values: Tensor) -> Tensor:
        """`values` summed over the ranks (every rank gets the sum)."""
        if self.world > 1:
            values = values.clone()
            dist.all_reduce(values)
        return values

    def stopping(self, stop: StopRequest) -> bool:
        """Whether the run stops at this step boundary: a signal reached any rank before it. Every rank then takes
        that signal into its `stop`, so they all record and exit alike. A signal that arrives during the exchange
        counts at the next boundary: the decision is the exchanged one, the same on every rank."""
        if self.world == 1:
            return stop.signum is not None
        flag = torch.tensor([stop.signum or 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.flags)
        agreed = int(flag.item())
        if agreed:
            stop.signum = stop.signum or agreed
        return agreed != 0

    def alone(self) -> AbstractContextManager[None]:
        """Rank 0 validating by itself: synced norms (syncbn) normalize its batches alone, as in one process."""
        return unsynced() if self.world > 1 else nullcontext()

    def barrier(self) -> None:
        """Wait for every rank (the others, while rank 0 validates and writes)."""
        if self.world > 1:
            dist.barrier(group=self.flags)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank (a picklable object)."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.flags)
        return box[0]


def join(device: str) -> Ranks:
    """Join the process group torchrun's variables describe (they are as many as the run's workers: the launch
    layer checked it): gloo on the CPU; on CUDA one GPU per process (its LOCAL_RANK) and nccl where there are enough
    GPUs for that, gloo where the processes share one."""
    world = int(os.environ["WORLD_SIZE"])
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    backend = "gloo"
    if select_device(device).type == "cuda":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        if torch.cuda.device_count() >= local_world:
            torch.cuda.set_device(local_rank)
            backend = "nccl"
    dist.init_process_group(backend, init_method="env://", timeout=TIMEOUT)
    flags = dist.new_group(backend="gloo", timeout=TIMEOUT) if backend != "gloo" else None
    return Ranks(rank, world, local_rank, flags)


def leave() -> None:
    """Leave the process group, if this process joined one. After another rank died the teardown may fail too:
    the run has ended and said why, so that failure is not reported over it."""
    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def lost_contact(error: BaseException) -> bool:
    """Whether `error` is a collective that failed because another rank is gone (died, killed, stopped)."""
    return isinstance(error, dist.DistError) or (
        isinstance(error, RuntimeError) and any(w in str(error) for w in ("Connection closed", "Connection reset"))
    )


def failure_reason(error: BaseException) -> str:
    """What a record and a message say about an unexpected error: a collective that lost another rank says so
    (the rank that failed first says why)."""
    if lost_contact(error):
        return f"{LOST} ({type(error).__name__}: {str(error).splitlines()[0]})"
    return f"{type(error).__name__}: {error}"
