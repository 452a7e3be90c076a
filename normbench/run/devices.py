"""Which device a run trains on: one small function, importable without the training stack."""

from __future__ import annotations

import torch

from normbench.base.errors import ConfigError


def select_device(name: str) -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; a named device must be present. `cuda` is the current CUDA
    device (a parallel sweep job's own GPU, launch/jobs.py), `cuda:N` the Nth visible one."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    kind, _, index = name.partition(":")
    if kind == "auto":
        kind = "cuda" if cuda else "mps" if mps else "cpu"
    present = ", ".join(["cpu", *(["cuda"] if cuda else []), *(["mps"] if mps else [])])
    if (kind == "cuda" and not cuda) or (kind == "mps" and not mps):
        raise ConfigError(f"device={name} is not available on this machine. Available: {present} (or device=auto).")
    if kind != "cuda":
        return torch.device(kind)
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise ConfigError(
            f"device={name}: this machine has {count} visible GPU{'s' * (count != 1)} (cuda:0 to cuda:{count - 1}; "
            "CUDA_VISIBLE_DEVICES chooses which are visible)."
        )
    return torch.device("cuda", int(index) if index else torch.cuda.current_device())
