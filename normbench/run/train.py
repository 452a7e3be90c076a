"""Training: one run from a composed config to TensorBoard events, checkpoints and `results.json`.

Read top to bottom: `run` builds the run from its plan and model (`setup.set_up`), its side concerns (TensorBoard
board, activation monitor, checkpoint, progress bar), then alternates `train_epoch` and `end_epoch` until the budget
is spent, and writes the record whatever happens. The loop is deliberately plain (nanoGPT-style): batches come from
`data.Batches` already on the device, a step is forward, loss, backward, optimizer step, and nothing waits for
the device except when scalars are flushed every `log.every` steps. Losses are kept on the device until then.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import Tensor, nn

from normbench import __version__
from normbench.base.errors import DivergedError, InterruptedRun
from normbench.base.signals import StopRequest
from normbench.parts.data import ImageData
from normbench.parts.models import MODELS
from normbench.parts.norms.shares import forward_in_shares
from normbench.plan.plan import RunPlan
from normbench.plan.schema import XAxis
from normbench.run import record as R
from normbench.run.board import LR_TAG, Board, run_experiment
from normbench.run.checkpoint import Checkpoint
from normbench.run.distributed import Ranks, failure_reason
from normbench.run.evaluation import NormContractError, bn_mode_accuracies, evaluate
from normbench.run.monitor import Monitor
from normbench.run.progress import BN_EVALUATIONS, TRAINING, VALIDATION, RunProgress, progress
from normbench.run.record import Epoch, Metrics, RunRecord
from normbench.run.setup import Setup, set_up


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
    # A stop between two flushes: the losses (mean over the workers) and correct predictions of the steps since the
    # last flush, kept so that the resumed run flushes them where the uninterrupted run would have.
    pending: list[float] = field(default_factory=list)
    pending_correct: float = 0.0


# --- The run --------------------------------------------------------------------------------------------


def run(
    plan: RunPlan,
    model: nn.Module,
    *,
    console: Console | None = None,
    data: ImageData | None = None,
    saved_checkpoint: dict[str, Any] | None = None,
    ranks: Ranks | None = None,
) -> RunRecord:
    """Train the planned run to the end of its budget; write the record whatever happens. Raises the run's error.

    `model`: the run's model (`setup.build_model`); `saved_checkpoint`: the checkpoint to resume from (read and
    checked by the claim of its directory), None to start at step 0; `ranks`: this process's place among the run's
    worker processes (default: the only one). Every rank trains; rank 0 alone validates and writes, the others wait
    for it at each epoch's end."""
    console = console or Console()
    ranks = ranks or Ranks()
    config, run_dir = plan.config, plan.directory
    x_per_step = config.batch_size if config.log.x_axis == XAxis.examples else 1
    experiment, first_event = run_experiment(plan)  # the run's HParams row: started now, ended with its status
    try:
        setup = set_up(plan, model, data, ranks)
        checkpoint = Checkpoint(run_dir, setup.model, setup.optimizer, setup.scheduler, setup.device, ranks.writes)
        saved = checkpoint.load(saved_checkpoint) if saved_checkpoint is not None else None
    except Exception:  # a run that cannot start (its record says why) still gets its row
        with closing(Board(run_dir, x_per_step, first_event=first_event, writes=ranks.writes)) as board:
            board.start_session(plan.hparams, experiment=experiment)
            board.end_session(R.FAILED)
        raise
    state = R.from_dict(RunState, saved) if saved is not None else RunState()
    state.attempt += saved is not None
    run_dir.mkdir(parents=True, exist_ok=True)
    resumed_at = state.step if saved is not None else None
    board = Board(run_dir, x_per_step, resumed_at=resumed_at, first_event=first_event, writes=ranks.writes)
    board.start_session(plan.hparams, experiment=experiment)
    board.layout()
    monitor = (
        Monitor(setup.model, board, config.log.hist_points, config.log.hist_values, plan.budget.total_steps,
                MODELS[config.model.name].layout)
        if config.log.activations and ranks.writes
        else None
    )  # fmt: skip

    def record(status: str, reason: str | None = None, **values: Any) -> RunRecord:
        written = make_record(plan, status, reason, setup, state, **values)
        if ranks.writes:
            written.write(run_dir)
        board.end_session(status)  # completed, diverged, failed; nothing while running or interrupted
        return written

    stop = StopRequest()
    show = console.is_terminal and not config.quiet and ranks.writes
    try:
        bar = progress(console, plan.title, plan.budget.total_steps, state.step, show, plan.sweep_dir, run_dir)
        if saved is not None and ranks.writes:
            bar.print(f"Resuming from step {state.step} (epoch {state.epoch + 1}).")
        with stop.installed(), bar:
            while state.step < plan.budget.total_steps:
                train_epoch(plan, setup, state, board, monitor, bar, stop)
                if ranks.stopping(stop):
                    raise InterruptedRun(stop.reason(state.step, state.attempt, plan.launch.command))
                if not ranks.writes:  # another worker process: rank 0 validates and writes; wait for it
                    next_epoch(state)
                    ranks.barrier()
                    continue
                with ranks.alone():
                    epoch = end_epoch(plan, setup, state, board, monitor, bar.phase)
                checkpoint.save(asdict(state))
                record(R.RUNNING)
                ranks.barrier()
                bar.phase(TRAINING)
                bar.print(
                    f"epoch {epoch.epoch}/{plan.budget.epochs}  step {epoch.step}  train loss {epoch.train_loss:.4f} "
                    f"acc {epoch.train_acc:.3f}  val loss {epoch.val_loss:.4f} acc {epoch.val_acc:.3f}"
                )
        return record(R.COMPLETED, hparams=plan.hparams)
    except DivergedError as error:
        record(R.DIVERGED, str(error), diverged_step=error.step)
        ranks.barrier()  # all workers end here together: none leaves (and has the others stopped) before rank 0 wrote
        raise
    except InterruptedRun as error:
        checkpoint.save(asdict(state))
        record(R.REQUEUED if stop.requeue else R.INTERRUPTED, str(error))
        ranks.barrier()
        refusal = stop.hand_back()  # under submitit: requeues the job and exits here
        if refusal is None:
            raise
        reason = stop.not_requeued(str(error), refusal)
        record(R.INTERRUPTED, reason)
        raise InterruptedRun(reason) from None
    except KeyboardInterrupt:  # a second Ctrl-C: stopped mid-step, so the last epoch's checkpoint stands
        record(R.INTERRUPTED, f"Stopped at once by a second Ctrl-C at step {state.step}; `{plan.launch.command}` "
               "continues from the checkpoint saved at the last epoch's end, if there is one.")  # fmt: skip
        raise
    except NormContractError as error:  # a plugin norm that fails in normbench's own validations
        broken = error.at(config.norm.name, state.step)
        record(R.FAILED, str(broken))
        raise broken from None
    except BaseException as error:
        record(R.FAILED, failure_reason(error))
        raise
    finally:
        if monitor is not None:
            monitor.close()
        board.close()


# --- One epoch ------------------------------------------------------------------------------------------


def train_step(
    setup: Setup, forward: Callable[..., Tensor], x: Tensor, y: Tensor, shares: int = 1
) -> tuple[Tensor, Tensor]:
    """One optimizer step, its BN statistics per worker share of `shares` (one process's shares of the batch); the
    loss and the count of correct predictions stay on the device."""
    with setup.autocast:
        logits = forward_in_shares(forward, x, shares)
        loss = F.cross_entropy(logits, y)
    setup.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    setup.optimizer.step()
    setup.scheduler.step()
    return loss.detach().float(), (logits.argmax(dim=1) == y).sum()


def train_epoch(
    plan: RunPlan,
    setup: Setup,
    state: RunState,
    board: Board,
    monitor: Monitor | None,
    bar: RunProgress,
    stop: StopRequest,
) -> None:
    """Train from where `state` stands to the end of its epoch, the end of the budget, or a stop request."""
    s, budget = state, plan.budget
    pending: list[Tensor] = []  # per-step losses still on the device
    pending_correct = torch.zeros((), device=setup.device)  # float32, like the losses: one stack
    flush_every = max(1, plan.config.log.every)
    started = time.perf_counter()

    def gathered() -> tuple[list[float], float]:
        """The unflushed steps' losses (mean over the worker processes: the batch's loss) and correct predictions:
        the one host sync; across worker processes, summed over them."""
        nonlocal pending_correct
        if not pending:
            return [], 0.0
        *totals, correct = setup.ranks.sum(torch.stack([*pending, pending_correct])).tolist()
        pending.clear()
        pending_correct = torch.zeros((), device=setup.device)
        return [total / setup.ranks.world for total in totals], correct

    def flush() -> None:
        new, correct = gathered()
        losses, correct = [*s.pending, *new], correct + s.pending_correct
        s.pending, s.pending_correct = [], 0.0
        if not losses:
            return
        first = s.step - len(losses) + 1
        for i, value in enumerate(losses):
            if not math.isfinite(value):
                board.flush()
                raise DivergedError(
                    f"The training loss became {value} at step {first + i} (epoch {s.epoch + 1}); the run "
                    f"stopped there. Lower optim.lr (effective lr {plan.lr:g}) or check the norm settings.",
                    step=first + i,
                )
            board.scalar("train/loss", value, board.x(first + i))
        board.scalar(LR_TAG, setup.scheduler.get_last_lr()[0], board.x(s.step))
        s.epoch_loss_sum += sum(losses) * setup.train_batches.batch_size
        s.epoch_correct += correct
        s.curve.append([s.examples, sum(losses) / len(losses)])
        bar.update(s.step, losses[-1], s.examples / max(s.wall_s + time.perf_counter() - started, 1e-9))

    batch = setup.train_batches.batch_size  # the optimizer's batch: all workers' shares together
    setup.model.train()
    # Each worker process trains on its share of every batch (the whole batch in one process).
    for x, y in setup.ranks.shares(setup.train_batches.epoch(s.epoch, start=s.batch_in_epoch)):
        # A probed step runs the eager module: a compiled forward would skip the monitor's hooks.
        probed = monitor is not None and monitor.due(s.step + 1)
        if probed:
            monitor.attach()
        loss, correct = train_step(setup, setup.eager if probed else setup.forward, x, y, plan.shares)
        pending.append(loss)
        pending_correct += correct
        s.step += 1
        s.batch_in_epoch += 1
        s.examples += batch
        s.epoch_seen += batch
        if s.step % flush_every == 0:
            flush()
        if probed:
            monitor.write(s.step)
        if setup.ranks.stopping(stop):  # every worker stops at the same step
            new, correct = gathered()  # kept, not flushed: the resumed run flushes them where this one would have
            s.pending, s.pending_correct = [*s.pending, *new], s.pending_correct + correct
            s.wall_s += time.perf_counter() - started
            return
        if s.step >= budget.total_steps:
            break
    flush()
    s.wall_s += time.perf_counter() - started


def end_epoch(
    plan: RunPlan,
    setup: Setup,
    state: RunState,
    board: Board,
    monitor: Monitor | None,
    phase: Callable[[str], None] = lambda _: None,
) -> Epoch:
    """Validate, log, and move `state` to the next epoch. BN-family models are also validated with batch
    statistics and with PreciseBN at the end of training, and every `bn_modes_every` epochs (0: only at the end).
    `phase` hears which of the two is under way."""
    s, model = state, setup.model
    phase(VALIDATION)
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
    last = s.step >= plan.budget.total_steps
    every = plan.config.eval.bn_modes_every
    due = last or (every > 0 and (s.epoch + 1) % every == 0)
    if setup.val_at_train_batch_size is not None and due:
        phase(BN_EVALUATIONS)
        started = time.perf_counter()
        batch_stats, precise = bn_mode_accuracies(
            model, setup.val_batches, setup.val_at_train_batch_size, setup.precise_bn_batches, setup.precise_bn,
            setup.autocast,
        )  # fmt: skip
        s.bn_modes_s += time.perf_counter() - started
        # val/acc again under a tag only BN-family runs write, at the same points: Custom Scalars selects tags, not
        # runs, so a chart of the three evaluations on `val/acc` would draw every other norm's accuracy too.
        board.scalar("val/acc_running_stats", val_acc, board.x(s.step))
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
    next_epoch(s)
    return epoch


def next_epoch(state: RunState) -> None:
    s = state
    s.epoch += 1
    s.batch_in_epoch = s.epoch_seen = 0
    s.epoch_loss_sum = s.epoch_correct = 0.0


# --- What a run leaves behind ---------------------------------------------------------------------------


def make_record(
    plan: RunPlan, status: str, reason: str | None, setup: Setup, state: RunState, **values: Any
) -> RunRecord:
    s = state
    return RunRecord.of(
        plan,
        status,
        reason,
        metrics=Metrics.of(s.history, s.best_val_acc),
        params=setup.params,
        steps=s.step,
        epochs=len(s.history),
        examples=s.examples,
        attempt=s.attempt,
        wall_s=round(s.wall_s, 3),
        eval_s=round(s.eval_s, 3),
        bn_modes_s=round(s.bn_modes_s, 3),
        images_per_s=round(s.examples / s.wall_s, 1) if s.wall_s > 0 else None,
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
