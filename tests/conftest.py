"""Shared helpers: tiny configs that train in well under a second, and a reader for TensorBoard events.

The suite pins `device=cpu` (in TINY and in every `normbench run`/`sweep` subprocess started through
`normbench`): its bit-exact checks (same seed, resume) hold for CPU kernels; on a CUDA or MPS host `device=auto`
would pick non-deterministic ones. Tests that start runs some other way pass `device=cpu` themselves.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import DictConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from normbench.config import compose_config

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "device=cpu", "data.train_size=64", "data.val_size=32", "batch_size=8", "max_steps=3", "epochs=1", "quiet=true",
    "eval.batch_size=32", "eval.precise_bn_images=16", "log.hist_every_images=16", "log.every=1", "threads=1",
]  # fmt: skip


@pytest.fixture
def tiny() -> Callable[..., DictConfig]:
    """compose_config with the tiny settings, then the test's own overrides."""
    return lambda *overrides: compose_config([*TINY, *overrides])


def events(run_dir: Path) -> EventAccumulator:
    """Everything TensorBoard's own reader finds in a run directory (no sampling: size_guidance 0)."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def normbench(*args: str, cwd: Path, timeout: float = 240, **env: str) -> subprocess.CompletedProcess[str]:
    """The real `normbench` command in a subprocess; runs and sweeps on the CPU (see above)."""
    exe = Path(sys.executable).with_name("normbench")
    if args[:1] in (("run",), ("sweep",)) and not any(a.startswith("-") for a in args[1:]):
        # First, so that a test's own device=... still wins; not with Hydra's flags (--hydra-help composes alone).
        args = (args[0], "device=cpu", *args[1:])
    return subprocess.run(
        [str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **env},
    )  # fmt: skip
