"""Training: one run from a composed config to TensorBoard events, checkpoints and `results.json`.

The loop is deliberately plain (nanoGPT-style): batches come from `data.Batches` already on the device,
a step is forward, loss, backward, optimizer step, and nothing waits for the device except when
scalars are flushed every `log.every` steps. Losses are kept on the device until then.
"""

from __future__ import annotations

import math
import os
import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

from normbench import results as R
from normbench.board import Board
from normbench.data import Batches, ImageData, load_data
from normbench.devices import select_device
from normbench.errors import ConfigError, DivergedError, InterruptedRun
from normbench.models import build_model, count_parameters
from normbench.monitor import Monitor

CHECKPOINT_FILE = "checkpoint.pt"


# --- Set-up ---------------------------------------------------------------------------------------------


def effective_lr(optim: DictConfig, batch_size: int) -> float:
    """optim.lr is the rate at optim.base_batch_size, scaled to the run's batch size.

    linear: lr · B / base (Goyal et al. 2017, the GroupNorm paper's setting); sqrt: lr · sqrt(B / base);
    none: lr as given.
    """
    ratio = batch_size / optim.base_batch_size
    scale = {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[optim.lr_scaling]
    return float(optim.lr * scale)


def build_optimizer(model: nn.Module, optim: DictConfig, lr: float) -> torch.optim.Optimizer:
    # Weight decay on weight matrices and kernels only: decaying γ, β and biases fights the normalization.
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=optim.momentum, nesterov=optim.nesterov)
    if optim.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(optim.betas))
    raise ConfigError(f"Unknown optimizer '{optim.name}'. Optimizers: sgd, adamw.")


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


@dataclass(frozen=True)
class Budget:
    """How long a run trains. `epochs`: the same data seen at every batch size (the GroupNorm paper's
    setting); `steps`: the same number of optimizer steps. `max_steps` caps either."""

    unit: str
    steps_per_epoch: int
    total_steps: int

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)


def make_budget(cfg: DictConfig, train_size: int) -> Budget:
    steps_per_epoch = train_size // cfg.batch_size
    if steps_per_epoch < 1:
        raise ConfigError(
            f"batch_size={cfg.batch_size} is larger than the {train_size} training images, so an epoch has no "
            "full batch (incomplete batches are dropped). Use a smaller batch_size or more data."
        )
    if cfg.budget == "steps":
        if cfg.max_steps is None:
            raise ConfigError("budget=steps trains for max_steps optimizer steps: set max_steps (e.g. max_steps=2000).")
        return Budget("steps", steps_per_epoch, cfg.max_steps)
    total = cfg.epochs * steps_per_epoch
    return Budget("epochs", steps_per_epoch, min(total, cfg.max_steps or total))


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


# --- Signals --------------------------------------------------------------------------------------------


@dataclass
class StopRequest:
    """Set by SIGINT/SIGTERM; the loop stops at the next step boundary. A second Ctrl-C ends at once."""

    signum: int | None = None

    def handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self.handle)
        except ValueError:  # not the main thread (some launchers): signals stay with the launcher
            pass
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


# --- The run --------------------------------------------------------------------------------------------


@dataclass
class RunState:
    """Where the run stands; all of it goes into the checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    examples: int = 0
    wall_s: float = 0.0
    epoch_loss_sum: float = 0.0
    epoch_correct: float = 0.0
    epoch_seen: int = 0
    best_val_acc: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    curve: list[list[float]] = field(default_factory=list)  # [examples seen, mean train loss] per flush


class Run:
    """One training run in `run_dir`."""

    def __init__(self, cfg: DictConfig, run_dir: Path, console: Console | None = None, data: ImageData | None = None):
        self.cfg = cfg
        self.run_dir = run_dir
        self.console = console or Console()
        self.device = select_device(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.train.deterministic:
            make_deterministic()
        seed_everything(cfg.seed)
        self.data = data or load_data(cfg.data)
        self.budget = make_budget(cfg, len(self.data.train_labels))
        self.model = build_model(cfg.model, cfg.norm, self.data.num_classes).to(self.device)
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.params = count_parameters(self.model)
        self.lr = effective_lr(cfg.optim, cfg.batch_size)
        self.optimizer = build_optimizer(self.model, cfg.optim, self.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg.optim.schedule, cfg.optim.warmup_steps, self.budget.total_steps)
        )
        self.forward = torch.compile(self.model) if cfg.train.compile else self.model  # eval stays eager
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if cfg.train.amp and self.device.type == "cuda"
            else nullcontext()
        )
        batches = dict(
            mean=self.data.mean, std=self.data.std, device=self.device, channels_last=cfg.train.channels_last
        )
        self.train_batches = Batches(
            self.data.train_images,
            self.data.train_labels,
            cfg.batch_size,
            train=True,
            augment=cfg.data.augment,
            seed=cfg.seed,
            **batches,
        )
        self.val_batches = Batches(
            self.data.val_images, self.data.val_labels, cfg.eval.batch_size, train=False, **batches
        )
        self.state = RunState()
        self.stop = StopRequest()
        self.monitor: Monitor | None = None

    # -- checkpoints --

    def save_checkpoint(self) -> None:
        payload = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "progress": self.state.__dict__,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        }
        if self.device.type == "cuda":
            payload["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        R.write_atomic(self.run_dir / CHECKPOINT_FILE, lambda f: torch.save(payload, f), binary=True)

    def load_checkpoint(self) -> bool:
        path = self.run_dir / CHECKPOINT_FILE
        if not path.exists():
            return False
        payload = torch.load(path, map_location="cpu", weights_only=False)  # RNG states must stay on the CPU
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.state = RunState(**payload["progress"])
        torch.set_rng_state(payload["rng"]["torch"])
        random.setstate(payload["rng"]["python"])
        if "cuda" in payload["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(payload["rng"]["cuda"], self.device)
        return True

    # -- the record --

    def record(self, status: str, reason: str | None = None, **extra: Any) -> dict[str, Any]:
        s = self.state
        last = s.history[-1] if s.history else {}
        return {
            "status": status,
            "reason": reason,
            "metrics": {
                "train_loss": last.get("train_loss"),
                "train_acc": last.get("train_acc"),
                "val_loss": last.get("val_loss"),
                "val_acc": last.get("val_acc"),
                "best_val_acc": s.best_val_acc if s.history else None,
                **{k: last[k] for k in ("val_acc_batch_stats", "val_acc_precise_bn") if k in last},
            },
            "model": self.cfg.model.name,
            "norm": self.cfg.norm.name,
            "batch_size": self.cfg.batch_size,
            "seed": self.cfg.seed,
            "params": self.params,
            "steps": s.step,
            "epochs": len(s.history),
            "examples": s.examples,
            "wall_s": round(s.wall_s, 3),
            "images_per_s": round(s.examples / s.wall_s, 1) if s.wall_s > 0 else None,
            "effective_lr": self.lr,
            "budget": {
                "unit": self.budget.unit,
                "total_steps": self.budget.total_steps,
                "epochs": self.budget.epochs,
                "steps_per_epoch": self.budget.steps_per_epoch,
            },
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "memory_format": "channels_last" if self.cfg.train.channels_last else "contiguous",
            "torch": torch.__version__,
            "history": s.history,
            "curve": _downsample(s.curve, 400),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            **extra,
        }

    def write_record(self, status: str, reason: str | None = None, **extra: Any) -> dict[str, Any]:
        record = self.record(status, reason, **extra)
        R.write_json(self.run_dir / R.RESULTS_FILE, record)
        return record

    # -- training --

    def train_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        with self.autocast:
            logits = self.forward(x)
            loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach().float(), (logits.argmax(dim=1) == y).sum()

    @torch.no_grad()
    def evaluate(self, batches: Batches | None = None, model: nn.Module | None = None) -> tuple[float, float]:
        """Mean loss and accuracy of `model` (the run's) over `batches` (the validation set), in whatever
        mode the model is in."""
        batches = batches or self.val_batches
        model = model or self.model
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        for x, y in batches.epoch():
            with self.autocast:
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(dim=1) == y).sum()
        n = len(batches.labels)
        return loss_sum.item() / n, correct.item() / n

    def fit(self, board: Board, progress: Progress | None, task: Any) -> None:
        cfg, s, budget = self.cfg, self.state, self.budget
        pending: list[Tensor] = []  # per-step losses still on the device
        pending_correct = torch.zeros((), device=self.device)  # float32, like the losses: one stack
        flush_every = max(1, cfg.log.every)

        def flush() -> None:
            nonlocal pending_correct
            if not pending:
                return
            *losses, correct = torch.stack([*pending, pending_correct]).tolist()  # the one host sync
            first = s.step - len(losses) + 1
            for i, value in enumerate(losses):
                if not math.isfinite(value):
                    board.flush()
                    raise DivergedError(
                        f"The training loss became {value} at step {first + i} (epoch {s.epoch + 1}); the run "
                        f"stopped there. Lower optim.lr (effective lr {self.lr:g}) or check the norm settings.",
                        step=first + i,
                    )
                board.scalar("train/loss", value, first + i)
            board.scalar("lr", self.scheduler.get_last_lr()[0], s.step)
            s.epoch_loss_sum += sum(losses) * cfg.batch_size
            s.epoch_correct += correct
            s.curve.append([s.examples, sum(losses) / len(losses)])
            pending.clear()
            pending_correct = torch.zeros((), device=self.device)
            if progress is not None:
                progress.update(
                    task,
                    completed=s.step,
                    loss=losses[-1],
                    speed=s.examples / max(s.wall_s + time.perf_counter() - started, 1e-9),
                )

        while s.step < budget.total_steps:
            self.model.train()
            started = time.perf_counter()
            for x, y in self.train_batches.epoch(s.epoch, start=s.batch_in_epoch):
                if self.monitor is not None:
                    self.monitor.before_step(s.step + 1)
                loss, correct = self.train_step(x, y)
                pending.append(loss)
                pending_correct += correct
                s.step += 1
                s.batch_in_epoch += 1
                s.examples += len(y)
                s.epoch_seen += len(y)
                if s.step % flush_every == 0:
                    flush()
                if self.monitor is not None:
                    self.monitor.after_step(s.step)
                if self.stop.signum is not None or s.step >= budget.total_steps:
                    break
            flush()
            s.wall_s += time.perf_counter() - started
            if self.stop.signum is not None:
                raise InterruptedRun(
                    f"Interrupted by {signal.Signals(self.stop.signum).name} at step {s.step}. A checkpoint is "
                    f"saved; continue with `normbench run resume=true hydra.run.dir={self.run_dir}`."
                )
            self.end_epoch(board, progress)

    def end_epoch(self, board: Board, progress: Progress | None) -> None:
        s = self.state
        train_loss = s.epoch_loss_sum / max(1, s.epoch_seen)
        train_acc = s.epoch_correct / max(1, s.epoch_seen)
        self.model.eval()  # validation uses running statistics for BatchNorm
        val_loss, val_acc = self.evaluate()
        s.best_val_acc = max(s.best_val_acc, val_acc)
        entry = {
            "epoch": s.epoch + 1,
            "step": s.step,
            "examples": s.examples,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": self.scheduler.get_last_lr()[0],
            "wall_s": round(s.wall_s, 3),
        }
        if self.monitor is not None:
            entry.update(self.monitor.end_epoch(self, s.step))
        s.history.append(entry)
        board.scalars(
            {"train/loss_epoch": train_loss, "train/acc": train_acc, "val/loss": val_loss, "val/acc": val_acc}, s.step
        )
        board.flush()
        s.epoch += 1
        s.batch_in_epoch = s.epoch_seen = 0
        s.epoch_loss_sum = s.epoch_correct = 0.0
        self.save_checkpoint()
        self.write_record(R.RUNNING)
        line = (
            f"epoch {s.epoch}/{self.budget.epochs}  step {s.step}  train loss {train_loss:.4f} acc "
            f"{train_acc:.3f}  val loss {val_loss:.4f} acc {val_acc:.3f}"
        )
        (progress.console if progress is not None else self.console).print(line, highlight=False)

    def execute(self, resume: bool = False) -> dict[str, Any]:
        """Train to the end of the budget; write the record whatever happens. Raises the run's error."""
        resumed = resume and self.load_checkpoint()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        board = Board(self.run_dir, purge_step=self.state.step + 1 if resumed else None)
        board.layout()
        if self.cfg.log.activations:
            self.monitor = Monitor(self.model, board, self.cfg, self.device)
        if resumed:
            self.console.print(f"Resuming from step {self.state.step} (epoch {self.state.epoch + 1}).")
        show = self.console.is_terminal and not self.cfg.get("quiet", False)
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TextColumn("{task.fields[speed]:.0f} img/s"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not show,
        )
        name = f"{self.cfg.model.name}/{self.cfg.norm.name} b={self.cfg.batch_size}"
        try:
            with self.stop.installed(), progress:
                task = progress.add_task(
                    name, total=self.budget.total_steps, completed=self.state.step, loss=float("nan"), speed=0.0
                )
                self.fit(board, progress if show else None, task)
            record = self.finish(board)
            return self.write_record(R.COMPLETED, **record)
        except DivergedError as error:
            self.write_record(R.DIVERGED, str(error), diverged_step=error.step)
            raise
        except InterruptedRun as error:
            self.save_checkpoint()
            self.write_record(R.INTERRUPTED, str(error))
            raise
        except BaseException as error:
            self.write_record(R.FAILED, f"{type(error).__name__}: {error}")
            raise
        finally:
            if self.monitor is not None:
                self.monitor.close()
            board.close()

    def finish(self, board: Board) -> dict[str, Any]:
        """HParams entry and the final metrics, once the budget is spent."""
        last = self.state.history[-1]
        cfg = self.cfg
        hparams = {
            "model": cfg.model.name,
            "norm": cfg.norm.name,
            "norm_impl": cfg.norm.get("impl", "torch"),
            "data": cfg.data.name,
            "batch_size": cfg.batch_size,
            "lr": self.lr,
            "optim": cfg.optim.name,
            "seed": cfg.seed,
            "budget": self.budget.unit,
            "steps": self.budget.total_steps,
        }
        board.hparams(
            hparams,
            {
                "hparam/final_val_acc": last["val_acc"],
                "hparam/best_val_acc": self.state.best_val_acc,
                "hparam/final_val_loss": last["val_loss"],
                "hparam/final_train_loss": last["train_loss"],
            },
            self.state.step,
        )
        board.flush()
        return {"hparams": hparams}


def _downsample(points: list[list[float]], most: int) -> list[list[float]]:
    """At most `most` points, averaging neighbours, so results.json stays small at tiny batch sizes."""
    if len(points) <= most:
        return points
    size = math.ceil(len(points) / most)
    chunks = [points[i : i + size] for i in range(0, len(points), size)]
    return [[c[-1][0], sum(p[1] for p in c) / len(c)] for c in chunks]
