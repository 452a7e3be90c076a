"""Every way a user can launch a run, with real processes and real signals (docs/launch.md is the table of these
cells): a run in this process, in worker processes it starts (`launch=processes`) or under torchrun; a sweep by
Hydra's basic and parallel launchers with emulated workers or worker processes. Each is started, stopped by Ctrl-C
(SIGINT to its whole process group, as a terminal sends it) once it has trained an epoch, and continued by the
command it printed, copied as a user would. It must end bit for bit as the same run trained uninterrupted in the
same launch mode (whose numbers are the emulated run's to float rounding), leave no process behind and no record
at `running`. What cannot work (a sweep under torchrun) is refused before anything is written. SLURM's cells are
in tests/test_slurm.py, with the cluster they need.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import TINY, Started, train
from test_records import tree_hashes

from normbench.base.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED
from normbench.launch import rundir
from normbench.run import record as R
from normbench.run.checkpoint import CHECKPOINT_FILE
from normbench.run.record import RunRecord

pytestmark = pytest.mark.process

# 5 epochs of 96 steps of 8 images, 2 workers of 4: a checkpoint and a record at each epoch's end, so that a
# signal sent once the first epoch's record exists lands with four epochs still to train.
LONG = [*TINY, "model=mlp", "model.width=32", "model.depth=2", "log.hist_points=0", "data.train_size=768",
        "max_steps=null", "epochs=5", "log.every=8", "workers=2"]  # fmt: skip
EXE = str(Path(sys.executable).with_name("normbench"))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "normbench"]
# How each launch mode is typed: its command line before `run`'s overrides, and its own overrides.
RUN_MODES = {
    "emulated": ([EXE], []),
    "processes": ([EXE], ["launch=processes"]),
    "torchrun": (TORCHRUN, []),
}


def printed_command(output: str) -> list[str]:
    """The command a stopped run or sweep printed for continuing it, split as a shell splits it: a run's is in
    backquotes after "continue with", a sweep's on the line after "Continue it with:"."""
    said = " ".join(output.split())
    found = re.search(r"continue with `([^`]+)`", said) or re.search(r"Continue it with: (.+?normbench sweep .+?)$",
                                                                     said)  # fmt: skip
    assert found, output
    return shlex.split(found.group(1))


def continued(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`command` run to its end, which must be a success without a traceback."""
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return done


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)["model"]


def same_numbers(run_dir: Path, reference: Path) -> None:
    """The run ended bit for bit as `reference`, the same run trained uninterrupted: its steps, losses per logged
    step, final metrics (every BN mode), weights and running statistics."""
    record, expected = RunRecord.read(run_dir), RunRecord.read(reference)
    assert record.status == expected.status == R.COMPLETED and record.steps == expected.steps
    assert record.attempt >= 2  # it was stopped and continued
    assert record.curve == expected.curve and record.metrics == expected.metrics
    theirs = weights(reference)
    assert all(torch.equal(value, theirs[key]) for key, value in weights(run_dir).items())


def emulated_to_rounding(reference: Path, emulated: Path) -> None:
    """Worker processes train what emulated workers do, to float rounding: two processes average their shares'
    gradients in another order. Training at this lr amplifies rounding (the curves of one emulated run on 1 and on
    2 threads part by 1e-3 within 25 steps, as a processes run's and an emulated run's do), so the first 16 steps'
    points are compared."""
    ours, theirs = RunRecord.read(reference).curve[:2], RunRecord.read(emulated).curve[:2]
    assert [p[1] for p in ours] == pytest.approx([p[1] for p in theirs], rel=1e-5)


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> Callable[[str, str], Path]:
    """`(mode, norm)` → the same run trained uninterrupted, once per module: emulated in this process; in worker
    processes and under torchrun by their own commands, each held to the emulated run to float rounding."""
    root = tmp_path_factory.mktemp("references")
    made: dict[tuple[str, str], Path] = {}

    def reference(mode: str, norm: str) -> Path:
        if (mode, norm) not in made:
            run_dir = root / f"{mode}_{norm}"
            if mode == "emulated":
                train(run_dir, *LONG, f"norm={norm}")
            else:
                start, extra = RUN_MODES[mode]
                continued([*start, "run", *LONG, *extra, f"norm={norm}", f"hydra.run.dir={run_dir}"], cwd=root)
                emulated_to_rounding(run_dir, reference("emulated", norm))
            made[mode, norm] = run_dir
        return made[mode, norm]

    return reference


@pytest.mark.parametrize("mode", RUN_MODES)
def test_a_run_stopped_by_ctrl_c_continues_by_its_printed_command(mode, tmp_path, references) -> None:
    start, extra = RUN_MODES[mode]
    run_dir = tmp_path / "my run"  # a space: the printed command must quote it
    run = Started([*start, "run", *LONG, *extra, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    run.wait_for(lambda: (run_dir / R.RESULTS_FILE).exists())
    run.ctrl_c()
    output = run.output()
    assert run.survivors() == [], output
    record = RunRecord.read(run_dir)
    assert record.status == R.INTERRUPTED and 96 <= record.steps < 480, output
    assert (run_dir / CHECKPOINT_FILE).exists()
    if mode != "torchrun":  # torchrun's own exit code is torchrun's (docs/launch.md); each rank exits 130
        assert run.proc.returncode == EXIT_INTERRUPTED, output
        assert "Traceback" not in output, output
    command = printed_command(output)
    assert (Path(command[0]).name == "torchrun" or command[1:3] == ["-m", "torch.distributed.run"]) == (
        mode == "torchrun"
    ), command
    assert ("launch=processes" in command) == (mode == "processes"), command
    continued(command, cwd=tmp_path)
    same_numbers(run_dir, references(mode, "bn"))
    # Rank 0 alone wrote: one event file per attempt.
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == RunRecord.read(run_dir).attempt


SWEEPS = [(launcher, mode) for launcher in ("basic", "parallel") for mode in ("emulated", "processes")]


@pytest.mark.parametrize(("launcher", "mode"), SWEEPS)
def test_a_sweep_stopped_by_ctrl_c_continues_by_its_printed_command(launcher, mode, tmp_path, references) -> None:
    sweep_dir = tmp_path / "my sweep"
    extra = ["launch=processes"] if mode == "processes" else []
    sweep = Started([EXE, "sweep", "norm=bn,gn", *LONG, *extra, f"hydra/launcher={launcher}",
                     f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)  # fmt: skip
    # Ctrl-C once every run that is under way trains (its record written): the basic launcher's first run; both of
    # the parallel launcher's, which start together. A Ctrl-C that lands while a job's worker processes still import
    # torch is another interleaving (not forced here, so not left to chance either).
    started = ["bn_b004x02", "gn_b004x02"] if launcher == "parallel" else ["bn_b004x02"]
    sweep.wait_for(lambda: all((sweep_dir / name / R.RESULTS_FILE).exists() for name in started))
    sweep.ctrl_c()
    output = sweep.output()
    assert sweep.proc.returncode == EXIT_INTERRUPTED and "Traceback" not in output, output
    assert sweep.survivors() == [], output
    for run_dir in sweep_dir.glob(f"*/{R.RESULTS_FILE}"):
        assert RunRecord.read(run_dir.parent).status in (R.INTERRUPTED, R.COMPLETED), output
    command = printed_command(output)
    assert command[1] == "sweep" and ("launch=processes" in command) == (mode == "processes"), command
    assert f"hydra/launcher={launcher}" in command, command
    continued(command, cwd=tmp_path)
    assert sorted(d.name for d in sweep_dir.iterdir() if d.is_dir()) == ["bn_b004x02", "gn_b004x02"]
    for norm in ("bn", "gn"):
        run_dir = sweep_dir / f"{norm}_b004x02"
        if RunRecord.read(run_dir).attempt == 1:  # not started before the stop, or completed before it
            continue
        same_numbers(run_dir, references(mode, norm))
    stopped = [d for d in sweep_dir.iterdir() if d.is_dir() and RunRecord.read(d).attempt >= 2]
    assert stopped, "no run of the sweep was stopped and continued"


def test_a_sweep_under_torchrun_is_refused_and_writes_nothing(tmp_path) -> None:
    """torchrun starts the processes of one run; a sweep is many runs. Each rank refuses with exit 2, rank 0 with
    one paragraph (torchrun then reports that its processes failed, and exits 1: its code, not normbench's); an
    earlier sweep's directory is left as it was."""
    sweep_dir = tmp_path / "sweep"
    done = subprocess.run([EXE, "sweep", "norm=bn,gn", *TINY, f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    before = tree_hashes(tmp_path)
    refused = subprocess.run([*TORCHRUN, "sweep", "norm=bn,gn", *TINY, f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0 and said.count("`normbench sweep` under torchrun") == 1, said  # rank 0 says it
    assert re.search(r"exitcode\s*:\s*2", said), said  # torchrun's report of its ranks' exit codes
    assert tree_hashes(tmp_path) == before


def test_ctrl_c_while_the_workers_start_says_nothing_was_trained(tmp_path) -> None:
    """The interleaving forced: the Ctrl-C (to the whole process group, as a terminal sends it) lands while the
    worker processes are still starting (multiprocessing's spawn_main importing torch, before their handlers).
    The run ends 130 with no record and no claim of a checkpoint, and nothing is left running. (A worker hit there
    still prints Python's KeyboardInterrupt traceback from inside its import: not asserted, left open.)"""
    run_dir = tmp_path / "run"
    run = Started([EXE, "run", *LONG, "launch=processes", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    run.wait_for(lambda: sum("spawn_main" in line for line in run.processes()) == 2)
    run.ctrl_c()
    output = run.output()
    assert run.proc.returncode == EXIT_INTERRUPTED, output
    assert run.survivors() == [], output
    assert RunRecord.read(run_dir) is None and not (run_dir / CHECKPOINT_FILE).exists(), output
    said = " ".join(output.split())
    assert "while the worker processes started: nothing was trained" in said and "checkpoint" not in said, output


def test_a_killed_parent_takes_its_workers_with_it_and_they_keep_the_lock_until_they_stop(tmp_path, references) -> None:
    """SIGKILL to `launch=processes`' parent: its workers notice (they watch their parent), stop at a step
    boundary with a checkpoint and an `interrupted` record, holding the run's lock until they have; the printed
    command continues the run to the uninterrupted numbers."""
    run_dir = tmp_path / "run"
    run = Started([EXE, "run", *LONG, "launch=processes", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    run.wait_for(lambda: (run_dir / R.RESULTS_FILE).exists())
    os.kill(run.proc.pid, signal.SIGKILL)
    run.proc.wait(timeout=30)
    # A second run into the directory meanwhile: refused while the workers hold the lock, or, once they have stopped
    # with their checkpoint and released it, a resume that continues from there. Which one depends on the machine's
    # speed; both are right, and never do two sets of workers train the run at once (one event file per attempt).
    second = subprocess.run([EXE, "run", *LONG, "launch=processes", "resume=true", f"hydra.run.dir={run_dir}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    said = " ".join(second.stdout.split())
    refused = second.returncode == EXIT_BAD_INPUT and "is in use: another normbench process is running" in said
    assert refused or (second.returncode == 0 and "Resuming from step" in said), second.stdout + second.stderr
    assert run.survivors() == []  # none outlives its parent
    assert not rundir.in_use(run_dir)
    record = RunRecord.read(run_dir)
    if refused:
        assert record.status == R.INTERRUPTED and (run_dir / CHECKPOINT_FILE).exists(), record
        continued(shlex.split(record.resume_command), cwd=tmp_path)
    same_numbers(run_dir, references("processes", "bn"))
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == RunRecord.read(run_dir).attempt


def test_a_hung_worker_then_ctrl_c_ends_the_run_recorded_and_no_process_left(tmp_path) -> None:
    """A worker stopped dead (SIGSTOP: it never answers a collective again), then Ctrl-C: the run ends with exit
    130 and one paragraph that says the workers did not all reach a step boundary, its record says `interrupted`
    (not `running`) with its steps, and no process is left, the stopped one included."""
    run_dir = tmp_path / "run"
    run = Started([EXE, "run", *LONG, "launch=processes", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    run.wait_for(lambda: (run_dir / R.RESULTS_FILE).exists())
    listed = subprocess.run(["ps", "-o", "pid=,comm=", "-s", str(run.proc.pid)], capture_output=True, text=True)
    (rank1,) = [int(line.split()[0]) for line in listed.stdout.splitlines() if line.split()[1] == "normbench-rank1"]
    os.kill(rank1, signal.SIGSTOP)
    time.sleep(1)
    run.ctrl_c()
    output = run.output(timeout=240)
    assert run.proc.returncode == EXIT_INTERRUPTED and "Traceback" not in output, output
    assert run.survivors() == [], output
    record = RunRecord.read(run_dir)
    assert record.status == R.INTERRUPTED and record.steps >= 96, (record.status, output)
    said = " ".join(output.split())
    assert f"after {record.steps} steps: the workers did not all reach a step boundary" in said, output
    assert said.count("Error") == 1, output


def test_torchrun_into_a_directory_another_run_holds_is_refused_by_every_rank(tmp_path) -> None:
    """A second run into a directory whose lock is held (here by this test, as a running run holds it) under
    torchrun: rank 0 finds the lock taken and says so in one paragraph; the ranks end with exit 2 (or torchrun's
    SIGTERM once one has), none aborts (no SIGABRT), nothing in the directory changed."""
    import fcntl

    run_dir = tmp_path / "run"
    train(run_dir, *TINY[:-1], "model=mlp", "workers=2")
    with (run_dir / rundir.LOCK_FILE).open("a") as lock:
        before = tree_hashes(run_dir)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        done = subprocess.run([*TORCHRUN, "run", *TINY[:-1], "model=mlp", "workers=2", "resume=true",
                               f"hydra.run.dir={run_dir}"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
    said = done.stdout + done.stderr
    assert said.count("is in use: another normbench process is running this run now") == 1, said
    # torchrun's report of how each rank ended: 2, or -15 where torchrun stopped a rank after the first one's exit
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", said)
    assert "2" in codes and set(codes) <= {"2", "-15"}, said
    assert "terminate called" not in said and "SIGABRT" not in said, said
    assert tree_hashes(run_dir) == before


@pytest.mark.parametrize("launcher", ["basic", "parallel"])
def test_a_tuning_study_stopped_by_ctrl_c_continues_by_its_printed_command(launcher, tmp_path) -> None:
    """An Optuna study (Hydra's Optuna sweeper, its trials in `study.db`) stopped while its first trial trains:
    its printed command continues the same study to all its trials, and the same command once more has nothing to
    run. The stopped trial's record says `interrupted` (a failed trial of the study: the study samples new ones),
    and the study's results say whether it is partial."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    import yaml

    sweep_dir = tmp_path / "study"
    study = Started([EXE, "sweep", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1",
                     "optim.lr=interval(0.01,0.1)", *LONG, f"hydra/launcher={launcher}",
                     f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path)  # fmt: skip
    study.wait_for(lambda: any(sweep_dir.glob(f"*/{R.RESULTS_FILE}")))
    study.ctrl_c()
    output = study.output()
    assert study.proc.returncode == EXIT_INTERRUPTED and "Traceback" not in output, output
    assert "Study interrupted: 0 of its 2 trials completed" in " ".join(output.split()), output
    assert study.survivors() == [], output
    stopped = [RunRecord.read(p.parent) for p in sweep_dir.glob(f"*/{R.RESULTS_FILE}")]
    assert [r.status for r in stopped] == [R.INTERRUPTED], output
    command = printed_command(output)
    assert command[1] == "sweep" and {"hydra/sweeper=optuna", f"hydra/launcher={launcher}"} <= set(command), command
    continued(command, cwd=tmp_path)
    records = [RunRecord.read(p.parent) for p in sweep_dir.glob(f"*/{R.RESULTS_FILE}")]
    assert sorted(r.status for r in records) == sorted([R.COMPLETED, R.COMPLETED, R.INTERRUPTED])
    final = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert final["normbench"] == {"trials_completed": 2, "partial": False}, final
    assert len(list(sweep_dir.glob(f"*/{R.RESULTS_FILE}"))) == 3  # the stopped trial stays, a failed one of the study
    again = continued(command, cwd=tmp_path)
    assert "nothing to run" in again.stdout, again.stdout
