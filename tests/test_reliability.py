"""Divergence, interruption by real signals, resume to the same result, atomic files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import events, normbench, saved_model_scores, train

from normbench.base.errors import EXIT_DIVERGED, EXIT_INTERRUPTED, DivergedError
from normbench.base.files import write_atomic, write_json
from normbench.base.signals import SAME_STOP_S
from normbench.run import record as R
from normbench.run.checkpoint import CHECKPOINT_FILE
from normbench.run.record import RunRecord

LONG = ["device=cpu", "data.train_size=768", "data.val_size=64", "batch_size=16", "epochs=3", "quiet=true",
        "threads=1", "eval.precise_bn_images=32", "log.hist_points=4", "log.every=4"]  # fmt: skip


def _history(record: RunRecord) -> list[R.Epoch]:
    return [replace(h, wall_s=0) for h in record.history]


def _start(run_dir: Path, *extra: str) -> subprocess.Popen[str]:
    exe = Path(sys.executable).with_name("normbench")
    return subprocess.Popen([str(exe), "run", *LONG, *extra, f"hydra.run.dir={run_dir}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _wait_for_training(run_dir: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """Until the first epoch's record exists (its checkpoint is written before it): the run is then in its second
    epoch, and has two more of 48 steps to go, whatever the speed of the core. No fixed sleep."""
    deadline = time.monotonic() + timeout
    while not (run_dir / R.RESULTS_FILE).exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.mark.process
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_at_a_step_saves_and_resume_ends_like_an_uninterrupted_run(sig, tmp_path) -> None:
    reference = train(tmp_path / "reference", *LONG, tiny=False)

    run_dir = tmp_path / "run"
    proc = _start(run_dir)
    _wait_for_training(run_dir, proc)
    sent = time.monotonic()
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 5  # stops within a few seconds, at a step boundary
    assert proc.returncode == EXIT_INTERRUPTED, output
    assert "Traceback" not in output and "resume=true" in output
    record = RunRecord.read(run_dir)
    assert record.status == "interrupted" and 48 < record.steps < reference.steps  # in epoch 2 or 3, at a step
    assert (run_dir / CHECKPOINT_FILE).exists()
    # Steps since the last flush (every 4) are kept in the checkpoint, not logged: the resumed run logs them where
    # the uninterrupted one did, so the curve and its flags are the same.
    flushed = record.steps - record.steps % 4
    assert [e.step for e in events(run_dir).Scalars("train/loss")] == list(range(16, 16 * flushed + 1, 16))

    resumed = normbench("run", *LONG, "resume=true", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"Resuming from step {record.steps}" in resumed.stdout
    final = RunRecord.read(run_dir)
    assert final.status == "completed" and final.steps == reference.steps
    assert _history(final) == _history(reference)  # the same metrics, to the last bit, on CPU
    assert final.metrics == reference.metrics and final.curve == reference.curve and final.flags == reference.flags
    logged = [e.step for e in events(run_dir).Scalars("train/loss")]  # x: examples seen, 16 per step
    assert logged == list(range(16, 16 * reference.steps + 1, 16))  # no duplicated steps after the resume


@pytest.mark.process
def test_a_second_ctrl_c_ends_at_once_and_records_interrupted(tmp_path) -> None:
    run_dir = tmp_path / "run"
    proc = _start(run_dir, "epochs=1000")
    _wait_for_training(run_dir, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(SAME_STOP_S + 0.2)  # sooner, it is the same Ctrl-C forwarded by a parent (base/signals.py)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=30)
    if proc.returncode == -signal.SIGINT:  # the first stop had ended (saved, recorded) before the second came
        assert RunRecord.read(run_dir).status == "interrupted" and "Traceback" not in output, output
        return
    assert proc.returncode == EXIT_INTERRUPTED, output
    assert RunRecord.read(run_dir).status == "interrupted" and "second Ctrl-C" in output


def test_divergence_stops_the_run_with_its_step(tmp_path) -> None:
    with pytest.raises(DivergedError, match=r"The training loss became (nan|inf) at step \d+"):
        train(tmp_path, "norm=none", "optim.lr=1e9", "max_steps=30", "epochs=4", "log.every=5")
    record = RunRecord.read(tmp_path)
    assert record.status == "diverged" and "Lower optim.lr" in record.reason
    step = record.diverged_step
    assert 1 <= step < 30 and f"at step {step} " in record.reason
    logged = [e.step for e in events(tmp_path).Scalars("train/loss")]
    assert logged == [8 * s for s in range(1, step)]  # every finite loss before it was flushed to TensorBoard


@pytest.mark.process
def test_divergence_exit_code_in_a_real_process(tmp_path) -> None:
    done = normbench("run", "norm=none", "optim.lr=1e9", "max_steps=30", "data.train_size=256", "data.val_size=32",
                     "batch_size=16", "quiet=true", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)  # fmt: skip
    assert done.returncode == EXIT_DIVERGED
    assert "The training loss became" in done.stdout and "Traceback" not in done.stdout + done.stderr
    assert json.loads((tmp_path / "r" / "results.json").read_text())["status"] == "diverged"


def test_checkpoints_hold_everything_a_resume_needs(tmp_path) -> None:
    train(tmp_path, "max_steps=3")
    saved = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)  # plain data: no code runs on load
    assert set(saved) == {"model", "optimizer", "scheduler", "progress", "rng"}
    assert saved["progress"]["step"] == 3 and saved["progress"]["epoch"] == 1
    # The checkpoint's weights are those its epoch was validated with: their accuracy, counted here.
    assert saved["progress"]["history"][0]["val_acc"] == pytest.approx(saved_model_scores(tmp_path)["acc"], abs=1e-9)
    assert "stage1.norm.running_mean" in saved["model"]


def test_atomic_writes_never_leave_half_a_file(tmp_path) -> None:
    path = tmp_path / "results.json"
    write_json(path, {"status": "completed"})

    def crash(f) -> None:
        f.write('{"status": "comp')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, crash)
    assert json.loads(path.read_text()) == {"status": "completed"}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left behind
