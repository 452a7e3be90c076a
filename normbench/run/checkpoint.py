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

from normbench.base.files import write_atomic

CHECKPOINT_FILE = "checkpoint.pt"


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

    def load(self) -> dict[str, Any] | None:
        """Restore the saved state into the model, optimizer, scheduler and RNGs; return the saved progress,
        or None when there is no checkpoint."""
        if not self.path.exists():
            return None
        payload = torch.load(self.path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        rng = payload["rng"]
        torch.set_rng_state(rng["torch"].cpu())
        random.setstate(rng["python"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)
        return payload["progress"]
