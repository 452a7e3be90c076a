"""Training: one run from a composed config to TensorBoard events, checkpoints and `results.json`.

Read top to bottom: `run` builds the run (`setup.set_up`), its side concerns (TensorBoard board, activation
monitor, checkpoint, progress bar), then alternates `train_epoch` and `end_epoch` until the budget is spent,
and writes the record whatever happens. The loop is deliberately plain (nanoGPT-style): batches come from
`data.Batches` already on the device, a step is forward, loss, backward, optimizer step, and nothing waits for
the device except when scalars are flushed every `log.every` steps. Losses are kept on the device until then.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from torch import Tensor

from normbench import __version__
from normbench.base.errors import DivergedError, InterruptedRun
from normbench.base.signals import StopRequest
from normbench.parts.data import ImageData
from normbench.run import record as R
from normbench.run.board import Board, run_hparams
from normbench.run.checkpoint import Checkpoint
from normbench.run.evaluation import bn_mode_accuracies, evaluate
from normbench.run.monitor import Monitor
from normbench.run.progress import ProgressBar
from normbench.run.record import Epoch, Metrics, RunRecord
from normbench.run.schema import XAxis
from normbench.run.setup import Setup, effective_lr, set_up


@dataclass
class RunState:
    """Where the run stands; all of it goes into the checkpoint, as plain data."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    examples: int = 0
    wall_s: float = 0.0  # training, and below: validation in eval mode, the BN-mode validations
    eval_s: float = 0.0
    bn_modes_s: float = 0.0
    epoch_loss_sum: float = 0.0
    epoch_correct: float = 0.0
    epoch_seen: int = 0
    best_val_acc: float = 0.0
    attempt: int = 1  # the processes that trained the run: a resume is the next attempt
    history: list[Epoch] = field(default_factory=list)
    curve: list[list[float]] = field(default_factory=list)  # [examples seen, mean train loss] per flush


# --- The run --------------------------------------------------------------------------------------------


def run(
    cfg: DictConfig,
    run_dir: Path,
    *,
    console: Console | None = None,
    data: ImageData | None = None,
    resume: bool = False,
    swept: Sequence[str] = (),
    experiment: bool = True,
) -> RunRecord:
    """Train to the end of the budget; write the record whatever happens. Raises the run's error.

    `swept`: the config keys that tell this run apart from the others of its sweep (HParams columns besides the
    usual ones); `experiment`: write the HParams experiment into the run (False in a sweep, which writes one for
    all its runs at its root)."""
    console = console or Console()
    # The run's HParams row: started now, ended with its status, so every run has one whatever happens.
    hparams = run_hparams(cfg, effective_lr(cfg.optim, cfg.batch_size), swept)
    x_per_step = cfg.batch_size if cfg.log.x_axis == XAxis.examples else 1
    try:
        setup = set_up(cfg, data)
        checkpoint = Checkpoint(run_dir, setup.model, setup.optimizer, setup.scheduler, setup.device)
        saved = checkpoint.load() if resume else None
    except Exception:  # a run that cannot start (its record says why) still gets its row
        with closing(Board(run_dir, x_per_step)) as board:
            board.start_session(hparams, experiment=experiment)
            board.end_session(R.FAILED)
        raise
    config = OmegaConf.to_container(cfg, resolve=True)
    state = R.from_dict(RunState, saved) if saved is not None else RunState()
    state.attempt += saved is not None
    run_dir.mkdir(parents=True, exist_ok=True)
    board = Board(run_dir, x_per_step, resumed_at=state.step if saved is not None else None)
    board.start_session(hparams, experiment=experiment)
    board.layout()
    monitor = (
        Monitor(setup.model, board, cfg.log.hist_every_images, cfg.log.hist_values) if cfg.log.activations else None
    )
    if saved is not None:
        console.print(f"Resuming from step {state.step} (epoch {state.epoch + 1}).")

    def record(status: str, reason: str | None = None, **values: Any) -> RunRecord:
        written = make_record(config, status, reason, setup, state, **values)
        written.write(run_dir)
        board.end_session(status)  # completed, diverged, failed; nothing while running or interrupted
        return written

    stop = StopRequest()
    name = f"{cfg.model.name}/{cfg.norm.name} b={cfg.batch_size}" + (f" w={cfg.workers}" if cfg.workers > 1 else "")
    show = console.is_terminal and not cfg.get("quiet", False)
    try:
        with stop.installed(), ProgressBar(console, name, setup.budget.total_steps, state.step, show) as bar:
            while state.step < setup.budget.total_steps:
                train_epoch(setup, state, board, monitor, bar, stop, cfg.log.every)
                if stop.signum is not None:
                    raise InterruptedRun(stop.reason(state.step, state.attempt, run_dir))
                epoch = end_epoch(setup, state, board, monitor, cfg.eval.bn_modes_every)
                checkpoint.save(asdict(state))
                record(R.RUNNING)
                bar.print(
                    f"epoch {epoch.epoch}/{setup.budget.epochs}  step {epoch.step}  train loss {epoch.train_loss:.4f} "
                    f"acc {epoch.train_acc:.3f}  val loss {epoch.val_loss:.4f} acc {epoch.val_acc:.3f}"
                )
        return record(R.COMPLETED, hparams=hparams)
    except DivergedError as error:
        record(R.DIVERGED, str(error), diverged_step=error.step)
        raise
    except InterruptedRun as error:
        checkpoint.save(asdict(state))
        record(R.REQUEUED if stop.requeue else R.INTERRUPTED, str(error))
        refusal = stop.hand_back()  # under submitit: requeues the job and exits here
        if refusal is None:
            raise
        reason = stop.not_requeued(str(error), refusal)
        record(R.INTERRUPTED, reason)
        raise InterruptedRun(reason) from None
    except KeyboardInterrupt:  # a second Ctrl-C: stopped mid-step, so the last epoch's checkpoint stands
        record(R.INTERRUPTED, f"Stopped at once by a second Ctrl-C at step {state.step}; resume=true continues "
               "from the checkpoint saved at the last epoch's end, if there is one.")  # fmt: skip
        raise
    except BaseException as error:
        record(R.FAILED, f"{type(error).__name__}: {error}")
        raise
    finally:
        if monitor is not None:
            monitor.close()
        board.close()


# --- One epoch ------------------------------------------------------------------------------------------


def train_step(setup: Setup, forward: Callable[..., Tensor], x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """One optimizer step; the loss and the count of correct predictions stay on the device."""
    with setup.autocast:
        logits = forward(x)
        loss = F.cross_entropy(logits, y)
    setup.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    setup.optimizer.step()
    setup.scheduler.step()
    return loss.detach().float(), (logits.argmax(dim=1) == y).sum()


def train_epoch(
    setup: Setup,
    state: RunState,
    board: Board,
    monitor: Monitor | None,
    bar: ProgressBar,
    stop: StopRequest,
    log_every: int,
) -> None:
    """Train from where `state` stands to the end of its epoch, the end of the budget, or a stop request."""
    s, budget = state, setup.budget
    pending: list[Tensor] = []  # per-step losses still on the device
    pending_correct = torch.zeros((), device=setup.device)  # float32, like the losses: one stack
    flush_every = max(1, log_every)
    started = time.perf_counter()

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
                    f"stopped there. Lower optim.lr (effective lr {setup.lr:g}) or check the norm settings.",
                    step=first + i,
                )
            board.scalar("train/loss", value, board.x(first + i))
        board.scalar("lr", setup.scheduler.get_last_lr()[0], board.x(s.step))
        s.epoch_loss_sum += sum(losses) * setup.train_batches.batch_size
        s.epoch_correct += correct
        s.curve.append([s.examples, sum(losses) / len(losses)])
        pending.clear()
        pending_correct = torch.zeros((), device=setup.device)
        bar.update(s.step, losses[-1], s.examples / max(s.wall_s + time.perf_counter() - started, 1e-9))

    setup.model.train()
    for x, y in setup.train_batches.epoch(s.epoch, start=s.batch_in_epoch):
        # A probed step runs the eager module: a compiled forward would skip the monitor's hooks.
        probed = monitor is not None and monitor.due(s.step + 1, s.examples, len(y))
        if probed:
            monitor.attach()
        loss, correct = train_step(setup, setup.model if probed else setup.forward, x, y)
        pending.append(loss)
        pending_correct += correct
        s.step += 1
        s.batch_in_epoch += 1
        s.examples += len(y)
        s.epoch_seen += len(y)
        if s.step % flush_every == 0:
            flush()
        if probed:
            monitor.write(s.step)
        if stop.signum is not None or s.step >= budget.total_steps:
            break
    flush()
    s.wall_s += time.perf_counter() - started


def end_epoch(setup: Setup, state: RunState, board: Board, monitor: Monitor | None, bn_modes_every: int) -> Epoch:
    """Validate, log, and move `state` to the next epoch. BN-family models are also validated with batch
    statistics and with PreciseBN at the end of training, and every `bn_modes_every` epochs (0: only at the end)."""
    s, model = state, setup.model
    train_loss = s.epoch_loss_sum / max(1, s.epoch_seen)
    train_acc = s.epoch_correct / max(1, s.epoch_seen)
    started = time.perf_counter()
    model.eval()  # validation uses running statistics for BatchNorm
    if monitor is not None:
        monitor.attach()  # the hooks keep the first validation batch: eval-mode activations without a forward more
    val_loss, val_acc = evaluate(model, setup.val_batches, setup.autocast)
    if monitor is not None:
        monitor.write(s.step, "act_eval")
    s.best_val_acc = max(s.best_val_acc, val_acc)
    s.eval_s += time.perf_counter() - started
    batch_stats = precise = None
    last = s.step >= setup.budget.total_steps
    due = last or (bn_modes_every > 0 and (s.epoch + 1) % bn_modes_every == 0)
    if setup.val_at_train_batch_size is not None and due:
        started = time.perf_counter()
        batch_stats, precise = bn_mode_accuracies(
            model, setup.val_batches, setup.val_at_train_batch_size, setup.precise_bn_batches, setup.precise_bn,
            setup.autocast, setup.workers,
        )  # fmt: skip
        s.bn_modes_s += time.perf_counter() - started
        board.scalar("val/acc_batch_stats", batch_stats, board.x(s.step))
        if precise is not None:
            board.scalar("val/acc_precise_bn", precise, board.x(s.step))
    epoch = Epoch(
        epoch=s.epoch + 1,
        step=s.step,
        examples=s.examples,
        train_loss=train_loss,
        train_acc=train_acc,
        val_loss=val_loss,
        val_acc=val_acc,
        lr=setup.scheduler.get_last_lr()[0],
        wall_s=round(s.wall_s, 3),
        val_acc_batch_stats=batch_stats,
        val_acc_precise_bn=precise,
    )
    s.history.append(epoch)
    board.scalars(
        {"train/loss_epoch": train_loss, "train/acc": train_acc, "val/loss": val_loss, "val/acc": val_acc},
        board.x(s.step),
    )
    board.flush()
    s.epoch += 1
    s.batch_in_epoch = s.epoch_seen = 0
    s.epoch_loss_sum = s.epoch_correct = 0.0
    return epoch


# --- What a run leaves behind ---------------------------------------------------------------------------


def make_record(
    config: dict[str, Any], status: str, reason: str | None, setup: Setup, state: RunState, **values: Any
) -> RunRecord:
    s = state
    return RunRecord.of(
        config,
        status,
        reason,
        metrics=Metrics.of(s.history, s.best_val_acc),
        params=setup.params,
        num_classes=setup.num_classes,
        steps=s.step,
        epochs=len(s.history),
        examples=s.examples,
        attempt=s.attempt,
        wall_s=round(s.wall_s, 3),
        eval_s=round(s.eval_s, 3),
        bn_modes_s=round(s.bn_modes_s, 3),
        images_per_s=round(s.examples / s.wall_s, 1) if s.wall_s > 0 else None,
        effective_lr=setup.lr,
        budget=setup.budget,
        device=str(setup.device),
        threads=torch.get_num_threads(),
        memory_format=setup.memory_format,
        torch=torch.__version__,
        normbench_version=__version__,
        history=list(s.history),
        curve=_downsample(s.curve, 400),
        precise_bn_images=setup.precise_bn.images if setup.precise_bn else None,
        warnings=[w for w in [setup.precise_bn and setup.precise_bn.warning] if w],
        **values,
    )


def _downsample(points: list[list[float]], most: int) -> list[list[float]]:
    """At most `most` points, averaging neighbours, so results.json stays small at tiny batch sizes."""
    if len(points) <= most:
        return points
    size = math.ceil(len(points) / most)
    chunks = [points[i : i + size] for i in range(0, len(points), size)]
    return [[c[-1][0], sum(p[1] for p in c) / len(c)] for c in chunks]
