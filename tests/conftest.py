"""Shared helpers: tiny configs that train in well under a second, and a reader for TensorBoard events.

The suite pins `device=cpu` (in TINY and in every `normbench run`/`sweep` subprocess started through
`normbench`): its bit-exact checks (same seed, resume) hold for CPU kernels; on a CUDA or MPS host `device=auto`
would pick non-deterministic ones. Tests that start runs some other way pass `device=cpu` themselves.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# Rich fixes a console's width at its creation where COLUMNS is set (pytest-xdist's workers set 80), and normbench's
# console is made when normbench is imported here: without it, each command the tests run gets the width they give.
os.environ.pop("COLUMNS", None)

from normbench.base.overrides import hydra_value
from normbench.launch.start import plan_once
from normbench.parts.data import DATASETS, ImageData
from normbench.parts.models import build_model
from normbench.plan.plan import RunPlan
from normbench.run.checkpoint import CHECKPOINT_FILE
from normbench.run.record import RunRecord
from normbench.run.setup import Setup, set_up
from normbench.run.setup import build_model as build_run_model
from normbench.run.train import run

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "device=cpu", "data.train_size=64", "data.val_size=32", "batch_size=8", "max_steps=3", "epochs=1", "quiet=true",
    "eval.batch_size=32", "eval.precise_bn_images=16", "log.hist_points=2", "log.every=1", "threads=1",
]  # fmt: skip
SYNTHETIC_KEYS = ("data.train_size=", "data.val_size=")  # TINY's keys that only data=synthetic has


def tiny_for(overrides: tuple[str, ...] | list[str]) -> list[str]:
    """TINY, without the synthetic data's sizes where the overrides choose another dataset."""
    other = any(o.startswith("data=") and o != "data=synthetic" for o in overrides)
    return [o for o in TINY if not (other and o.startswith(SYNTHETIC_KEYS))]


def planned(directory: Path, *overrides: str, tiny: bool = True) -> RunPlan:
    """The plan `normbench run` makes of the tiny settings (`tiny`) and the test's own overrides, in `directory`."""
    base = tiny_for(overrides) if tiny else []
    plan, _ = plan_once([*base, *overrides, f"hydra.run.dir={hydra_value(str(directory))}"])
    return plan


def train(directory: Path, *overrides: str, tiny: bool = True, **kwargs: object) -> RunRecord:
    """A run (tiny unless `tiny=False`) trained in this process, as `normbench run` trains it (its plan, its one
    model)."""
    plan = planned(directory, *overrides, tiny=tiny)
    return run(plan, build_run_model(plan), **kwargs)  # type: ignore[arg-type]


def checked(*overrides: str, directory: Path = Path("/nonexistent")) -> RunPlan:
    """What `normbench run` checks of its overrides before anything is written: its plan (the schema, the data),
    and its model built, with its norm layers' inputs checked. Raises what the command refuses."""
    plan = planned(directory, *overrides, tiny=False)
    build_run_model(plan)
    return plan


def setup(*overrides: str, directory: Path = Path("/nonexistent")) -> Setup:
    """A tiny run's set-up, nothing trained."""
    plan = planned(directory, *overrides)
    return set_up(plan, build_run_model(plan))


@pytest.fixture
def tiny(tmp_path: Path) -> Callable[..., RunPlan]:
    """The plan of a tiny run in the test's directory, with the test's own overrides."""
    return lambda *overrides: planned(tmp_path, *overrides)


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


@functools.cache
def _validation_data(spec: str) -> ImageData:
    data = json.loads(spec)  # most tests share one tiny data config: made once
    return typed_data(data).load()


def typed_data(settings: dict) -> object:
    """A record's data config as its dataset's class."""
    cls = DATASETS[settings["name"]]
    return cls(**{k: v for k, v in settings.items() if k != "name"})


@torch.no_grad()
def saved_model_scores(run_dir: Path, batch_stats: bool = False, precise_bn: int = 0) -> dict[str, float]:
    """What the run's saved model scores on the validation images, computed here and not by normbench's evaluation:
    the weights of its last checkpoint (written right after the last validation), the validation images
    standardized by hand, argmax counted. `acc`/`loss`: eval mode (BN: running statistics). `batch_stats`: train
    mode, consecutive batches of the training batch size. `precise_bn` training images (the first draw of
    normbench's PreciseBN, in one batch): BN statistics re-estimated by torch.optim.swa_utils.update_bn."""
    config = RunRecord.read(run_dir).config
    data = _validation_data(json.dumps(config["data"], sort_keys=True))
    shape = data.val_images.shape[1:]
    model = build_model(config["model"], config["norm"], shape[0], tuple(shape[1:]), data.num_classes)
    model.load_state_dict(torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)["model"])
    mean, std = (torch.tensor(v, dtype=torch.float64).view(1, -1, 1, 1) for v in (data.mean, data.std))
    x = ((data.val_images.double() / 255 - mean) / std).float()
    y = data.val_labels
    logits = model.eval()(x)
    scores = {"acc": (logits.argmax(1) == y).sum().item() / len(y), "loss": F.cross_entropy(logits, y).item()}
    if batch_stats:
        b = config["batch_size"]
        correct = sum((model.train()(x[i : i + b]).argmax(1) == y[i : i + b]).sum().item() for i in range(0, len(y), b))
        scores["batch_stats"] = correct / len(y)
    if precise_bn:
        from normbench.parts.data.batches import Batches
        from normbench.run.evaluation import PRECISE_BN_DRAW

        train = Batches(data.train_images, data.train_labels, precise_bn, data.mean, data.std, torch.device("cpu"),
                        train=True, augment=config["data"]["augment"], seed=config["seed"])  # fmt: skip
        first = next(iter(train.epoch(PRECISE_BN_DRAW)))[0]
        torch.optim.swa_utils.update_bn([first], model)
        scores["precise_bn"] = (model.eval()(x).argmax(1) == y).sum().item() / len(y)
    return scores


class Started:
    """A real command in a session of its own (so that `ps -s` finds every process it started, also those
    orphaned), its output collected as it comes."""

    def __init__(self, command: list[str], cwd: Path | None = None) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
        self.proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=env, start_new_session=True)  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout or []), daemon=True)
        self.reader.start()

    def wait_for(self, predicate, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.01)

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)

    def output(self, timeout: float = 180) -> str:
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return "".join(self.lines)

    def processes(self) -> list[str]:
        """What `ps` lists in the command's session now ("pid stat args" lines, whole), zombies aside."""
        listed = subprocess.run(["ps", "-ww", "-o", "pid=,stat=,args=", "-s", str(self.proc.pid)], capture_output=True,
                                text=True).stdout.splitlines()  # fmt: skip
        return [line for line in listed if line.split()[1][0] != "Z"]

    def survivors(self, timeout: float = 30) -> list[str]:
        """What `ps` lists in the command's session (zombies aside) once it lists nothing or `timeout` passed."""
        deadline = time.monotonic() + timeout
        while True:
            alive = self.processes()
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.2)
