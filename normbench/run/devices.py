"""Which device a run trains on: one small function, importable without the training stack."""

from __future__ import annotations

import torch

from normbench.base.errors import ConfigError


def select_device(name: str) -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; a named device must be present."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name == "cpu" or (name == "cuda" and cuda) or (name == "mps" and mps):
        return torch.device(name)
    present = ", ".join(["cpu", *(["cuda"] if cuda else []), *(["mps"] if mps else [])])
    if name in ("cuda", "mps"):
        raise ConfigError(f"device={name} is not available on this machine. Available: {present} (or device=auto).")
    raise ConfigError(f"device={name} is not a device normbench knows. Allowed: auto, cpu, cuda, mps.")
