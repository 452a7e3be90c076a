"""A run's checkpoint: everything a resume needs to continue exactly where the run stopped.

Model, optimizer and scheduler state_dicts, the RNG states, and the loop's progress as plain data, so that
`torch.load(weights_only=True)` reads it: loading a checkpoint never runs code from the file.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normbench.base.errors import CheckpointError
from normbench.base.files import write_atomic

CHECKPOINT_FILE = "checkpoint.pt"
PARTS = ("model", "optimizer", "scheduler", "progress", "rng")


class UnreadableCheckpoint(Exception):
    """A checkpoint file that exists but cannot be resumed from; the message says why."""


def read(run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint of `run_dir` as saved (tensors on the CPU), None when there is none; raises
    UnreadableCheckpoint for a file that is empty, truncated or not normbench's. Read once per resume: the payload
    is what `Checkpoint.load` restores."""
    path = run_dir / CHECKPOINT_FILE
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        missing = set(PARTS) - set(payload)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for a damaged file
        raise UnreadableCheckpoint(
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'empty'}"
        ) from None
    if missing:
        raise UnreadableCheckpoint(f"it lacks {', '.join(sorted(missing))}")
    return payload


class Checkpoint:
    """`run_dir/checkpoint.pt` of one run's model, optimizer and scheduler."""

    def __init__(
        self,
        run_dir: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        device: torch.device,
        writes: bool = True,
    ) -> None:
        self.path = run_dir / CHECKPOINT_FILE
        self.model, self.optimizer, self.scheduler, self.device = model, optimizer, scheduler, device
        self.writes = writes  # False: a worker process other than rank 0, which holds the same state

    def save(self, progress: dict[str, Any]) -> None:
        if not self.writes:
            return
        rng: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        payload = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "progress": progress,
            "rng": rng,
        }
        write_atomic(self.path, lambda f: torch.save(payload, f), binary=True)

    def load(self, payload: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Restore the saved state (`payload`, as `read` returned it; else read now) into the model, optimizer,
        scheduler and RNGs; return the saved progress, or None when there is no checkpoint."""
        payload = payload if payload is not None else read(self.path.parent)
        if payload is None:
            return None
        try:
            self.model.load_state_dict(payload["model"])
            self.optimizer.load_state_dict(payload["optimizer"])
            self.scheduler.load_state_dict(payload["scheduler"])
        except (RuntimeError, ValueError, KeyError) as error:  # another run's: other layers, shapes, optimizer
            raise CheckpointError(
                f"{self.path} does not fit this run: it belongs to another run ({str(error).splitlines()[0]}). "
                "Move it away to start this run from step 0, or choose another directory (hydra.run.dir=DIR)."
            ) from None
        rng = payload["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        random.setstate(rng["python"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)
        return payload["progress"]
