"""Real worker processes (`workers=W`, issue 25): real gloo process groups started by torchrun and by
`launch=processes`, real signals, a real SIGKILL, compared with one process on the same global batches.

Each multi-process run costs about 10 s of process start-up (two Python processes importing torch, a rendezvous)
on top of its training, so the configs are tiny and each test starts as few runs as it can.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import TINY, events, normbench, train

from normbench.base.errors import EXIT_BAD_INPUT, EXIT_CRASH, EXIT_INTERRUPTED
from normbench.launch import rundir
from normbench.run import record as R
from normbench.run.checkpoint import CHECKPOINT_FILE
from normbench.run.record import RunRecord

SMALL = [*TINY, "model=mlp", "model.width=32", "model.depth=2", "log.hist_points=0"]
# Long enough to be stopped in its second epoch: 3 epochs of 96 steps of 8 images.
LONG = [*SMALL, "data.train_size=768", "max_steps=null", "epochs=3", "log.every=4"]


def _history(record: RunRecord) -> list[R.Epoch]:
    return [replace(h, wall_s=0) for h in record.history]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)["model"]


def _torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`torchrun --standalone --nproc_per_node=2 -m normbench run ...` (torchrun: `python -m torch.distributed.run`)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "normbench",
               "run", *args]  # fmt: skip
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=240)


def _start(run_dir: Path, *args: str) -> subprocess.Popen[str]:
    exe = Path(sys.executable).with_name("normbench")
    command = [str(exe), "run", *LONG, "workers=2", "launch=processes", *args, f"hydra.run.dir={run_dir}"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _proc(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def _processes_of(run_dir: Path) -> list[int]:
    """The processes of a run: those whose command line names `run_dir` (the parent normbench, torchrun's ranks)
    and their children (the workers a parent started), zombies aside."""
    pids = [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and e.name != str(os.getpid())]
    named = {pid for pid in pids if str(run_dir) in _proc(pid, "cmdline")}
    children = {pid for pid in pids if _proc(pid, "stat").rpartition(")")[2].split()[1:2] in ([str(p)] for p in named)}
    return sorted(p for p in named | children if _proc(p, "stat").rpartition(")")[2].split()[:1] != ["Z"])


def _rank_pid(run_dir: Path, rank: int) -> int:
    """A worker of the run by its rank: named `normbench-rank<r>` in `ps` (launch=processes)."""
    for pid in _processes_of(run_dir):
        if _proc(pid, "comm").strip() == f"normbench-rank{rank}":
            return pid
    raise AssertionError(f"no rank {rank} among {_processes_of(run_dir)}")


def _wait_for_training(run_dir: Path, proc: subprocess.Popen[str], timeout: float = 180) -> None:
    """Until epoch 1's record exists: the run is then in epoch 2 of 3 (no fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not (run_dir / R.RESULTS_FILE).exists():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _none_left(run_dir: Path) -> None:
    deadline = time.monotonic() + 10
    while _processes_of(run_dir):
        assert time.monotonic() < deadline, f"processes left behind: {_processes_of(run_dir)}"
        time.sleep(0.1)


def _same_run(run_dir: Path, reference: Path) -> None:
    """The same per-step losses, validation numbers (every BN mode) and weights and running statistics, to float
    tolerance: a mean of two shares' mean losses and DDP's averaged gradients round differently than one batch."""
    record, expected = RunRecord.read(run_dir), RunRecord.read(reference)
    assert record.status == expected.status == R.COMPLETED and record.steps == expected.steps == 3
    assert [p[1] for p in record.curve] == pytest.approx([p[1] for p in expected.curve], rel=1e-5)
    for key in ("val_loss", "val_acc", "val_acc_batch_stats", "val_acc_precise_bn"):
        assert getattr(record.metrics, key) == pytest.approx(getattr(expected.metrics, key), rel=1e-5), key
    weights, expected_weights = _weights(run_dir), _weights(reference)
    assert any("running_mean" in key for key in weights)
    for key, value in expected_weights.items():
        torch.testing.assert_close(weights[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.process
def test_two_worker_processes_train_like_two_emulated_workers(tmp_path) -> None:
    """bn, workers=2: each process normalizes its own share; the emulated run, the same shares side by side. Started
    by normbench (launch=processes) and by torchrun; rank 0 alone writes."""
    train(tmp_path / "emulated", *SMALL, "workers=2")
    spawned = normbench("run", *SMALL, "workers=2", "launch=processes", f"hydra.run.dir={tmp_path / 'p'}",
                        cwd=tmp_path)  # fmt: skip
    assert spawned.returncode == 0, spawned.stdout + spawned.stderr
    assert spawned.stdout.count("completed") == 1 and "Traceback" not in spawned.stderr
    torchrun = _torchrun(*SMALL, "workers=2", f"hydra.run.dir={tmp_path / 't'}", cwd=tmp_path)
    assert torchrun.returncode == 0, torchrun.stdout + torchrun.stderr
    for name in ("p", "t"):
        run_dir = tmp_path / name
        _same_run(run_dir, tmp_path / "emulated")
        # Rank 0 alone wrote: one event file, the losses once per step.
        assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
        assert [e.step for e in events(run_dir).Scalars("train/loss")] == [8, 16, 24]


@pytest.mark.process
def test_syncbn_across_two_processes_trains_like_bn_over_the_total_batch(tmp_path) -> None:
    train(tmp_path / "bn", *SMALL, "norm=bn")
    done = _torchrun(*SMALL, "norm=syncbn", "workers=2", f"hydra.run.dir={tmp_path / 'sync'}", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    _same_run(tmp_path / "sync", tmp_path / "bn")


@pytest.mark.process
def test_processes_not_as_many_as_workers_are_refused(tmp_path) -> None:
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": "29999"}
    done = normbench("run", *SMALL, "workers=4", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path, **env)
    assert done.returncode == EXIT_BAD_INPUT, done.stdout + done.stderr
    assert "workers=4, but torchrun started 2 processes" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.process
def test_sigterm_stops_every_worker_once_and_resume_ends_like_an_uninterrupted_run(tmp_path) -> None:
    reference = normbench("run", *LONG, "workers=2", "launch=processes", f"hydra.run.dir={tmp_path / 'ref'}",
                          cwd=tmp_path)  # fmt: skip
    assert reference.returncode == 0, reference.stdout + reference.stderr
    run_dir = tmp_path / "run"
    proc = _start(run_dir)
    _wait_for_training(run_dir, proc)
    assert rundir.in_use(run_dir)  # the parent holds the lock while the workers train
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, output
    assert output.count("Interrupted by SIGTERM") == 1 and "Traceback" not in output, output
    _none_left(run_dir)
    record = RunRecord.read(run_dir)
    assert record.status == R.INTERRUPTED and 96 < record.steps < 288  # in epoch 2 or 3, at a step boundary
    resumed = normbench("run", *LONG, "workers=2", "launch=processes", "resume=true", f"hydra.run.dir={run_dir}",
                        cwd=tmp_path)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    final, whole = RunRecord.read(run_dir), RunRecord.read(tmp_path / "ref")
    assert final.status == R.COMPLETED and final.attempt == 2 and final.steps == whole.steps
    assert _history(final) == _history(whole) and final.metrics == whole.metrics  # bit for bit, on the CPU
    for key, value in _weights(tmp_path / "ref").items():
        assert torch.equal(_weights(run_dir)[key], value), key
    _none_left(run_dir)


@pytest.mark.process
def test_a_killed_worker_ends_the_run_with_one_paragraph_naming_its_rank(tmp_path) -> None:
    run_dir = tmp_path / "run"
    proc = _start(run_dir)
    _wait_for_training(run_dir, proc)
    os.kill(_rank_pid(run_dir, 1), signal.SIGKILL)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_CRASH, output
    assert "Worker rank 1 of 2 was killed by SIGKILL" in output and "Traceback" not in output, output
    assert output.count("Error") == 1, output
    _none_left(run_dir)
    record = RunRecord.read(run_dir)
    assert record.status == R.FAILED and "rank 1 of 2 was killed by SIGKILL" in record.reason


@pytest.mark.process
def test_sigterm_to_one_worker_stops_both_at_the_same_step(tmp_path) -> None:
    run_dir = tmp_path / "run"
    proc = _start(run_dir)
    _wait_for_training(run_dir, proc)
    os.kill(_rank_pid(run_dir, 1), signal.SIGTERM)  # rank 0 hears of it through the workers' stop exchange
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, output
    assert output.count("Interrupted by SIGTERM") == 1 and "Traceback" not in output, output
    _none_left(run_dir)
    assert RunRecord.read(run_dir).status == R.INTERRUPTED
