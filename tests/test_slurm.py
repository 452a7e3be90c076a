"""SLURM: the pre-timeout signal path and the launcher plugin without a cluster; on a real single-node cluster,
sweeps, sbatch's refusals, scancel and Ctrl-C.

The cluster tests (`-m slurm`) start their own single-node SLURM with the setup script beside the repository (as in
CI; $NORMBENCH_SLURM_SETUP names another copy), stop it afterwards, and skip, saying why, where they cannot: not root,
no setup script, setup failing. They never submit to a cluster they did not start: where `scontrol ping` finds one
already up (a login node), they skip unless NORMBENCH_TEST_SLURM=existing says to use it. The time-limit test is
also `slow`: `pytest -m slow tests/test_slurm.py` (7 to 20 min, with the machine's load).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, normbench, train

from normbench.base.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_SWEEP_INCOMPLETE, InterruptedRun
from normbench.launch.slurm import gpus, refused, signal_delay
from normbench.run import record as R
from normbench.run.record import RunRecord, find_records

LONG = ["data.train_size=768", "data.val_size=64", "batch_size=16", "epochs=3", "quiet=true", "threads=1",
        "eval.precise_bn_images=32", "log.hist_points=4", "device=cpu", "log.every=4"]  # fmt: skip
TINY_SWEEP = ["batch_size=8", "data.train_size=64", "data.val_size=32", "max_steps=3", "epochs=1", "quiet=true",
              "threads=1", "eval.precise_bn_images=16", "device=cpu"]  # fmt: skip
# About 3 minutes of training on one loaded core, epochs of about a minute: longer than a 1-minute limit.
LIMITED = ["model=cnn", "batch_size=32", "data.train_size=8192", "data.val_size=256", "epochs=3", "quiet=true",
           "threads=1", "device=cpu"]  # fmt: skip
SETUP = Path(os.environ.get("NORMBENCH_SLURM_SETUP", ROOT.parent / "shared" / "slurm" / "setup.sh"))


def _history(record: RunRecord) -> list[R.Epoch]:
    return [replace(h, wall_s=0) for h in record.history]


def _wait_for_training(run_dir: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """Until epoch 1's record exists: the run is then in epoch 2 of 3, whatever the core's speed (no fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not (run_dir / R.RESULTS_FILE).exists():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline
        time.sleep(0.01)


# --- Without a cluster ----------------------------------------------------------------------------------


def test_preset_helpers_ask_for_gpus_only_for_cuda_and_signal_within_the_limit() -> None:
    assert [gpus(d) for d in ("cpu", "auto", "mps", "cuda", "cuda:1")] == [0, 0, 0, 1, 1]
    assert [signal_delay(t) for t in (1, 2, 10, 20, 120, 2880)] == [15, 15, 60, 120, 120, 120]


@pytest.mark.process
def test_preset_composes_without_gpus_for_cpu_runs_and_with_one_for_cuda(tmp_path) -> None:
    shown = normbench("run", "hydra/launcher=slurm", "--cfg", "all", "--resolve", "-p", "hydra.launcher",
                      cwd=tmp_path)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "gpus_per_node: 0" in shown.stdout and "signal_delay_s: 120" in shown.stdout
    assert "normbench_slurm" not in shown.stdout and "cpus_per_task: 2" in shown.stdout
    cuda = normbench("run", "hydra/launcher=slurm", "device=cuda", "hydra.launcher.timeout_min=1", "--cfg", "all",
                     "--resolve", "-p", "hydra.launcher", cwd=tmp_path)  # fmt: skip
    assert "gpus_per_node: 1" in cuda.stdout and "signal_delay_s: 15" in cuda.stdout


def test_hydra_finds_the_launcher_the_preset_names() -> None:
    """Hydra instantiates launchers only from classes its plugin scan found in the `hydra_plugins` package."""
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher

    target = yaml.safe_load((ROOT / "configs" / "hydra" / "launcher" / "slurm.yaml").read_text())["_target_"]
    found = {f"{c.__module__}.{c.__name__}": c for c in Plugins.instance().discover(Launcher)}
    assert target.startswith("hydra_plugins.") and target in found
    assert found[target].__mro__[1].__name__ == "SlurmLauncher"  # submitit's, with normbench's additions


def test_a_job_that_failed_is_not_mistaken_for_a_refusal_by_sbatch(monkeypatch) -> None:
    from submitit.core.utils import FailedJobError  # what submitit raises for both, sbatch's with its exit status

    import normbench.launch.slurm

    # As on a cluster's login node: on a fresh machine SLURM is installed only when a cluster test first starts one.
    monkeypatch.setattr(normbench.launch.slurm.shutil, "which", lambda command: f"/usr/bin/{command}")
    with pytest.raises(FailedJobError, match="failed during processing"), refused({"partition": "debug"}):
        raise FailedJobError("Job (task=0) failed during processing with trace: ...")


@pytest.mark.process
def test_a_machine_without_slurm_is_told_so_in_one_paragraph(tmp_path) -> None:
    done = normbench("sweep", "norm=bn,gn", *TINY_SWEEP, "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 's'}",
                     cwd=tmp_path, PATH=str(Path(sys.executable).parent))  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == EXIT_BAD_INPUT and "Traceback" not in out, out
    assert "no sbatch or srun on its PATH" in out and "hydra/launcher=parallel" in out


@pytest.mark.process
def test_usr2_checkpoints_at_a_step_records_requeued_and_the_next_attempt_ends_like_an_uninterrupted_run(
    tmp_path,
) -> None:
    reference = train(tmp_path / "reference", *LONG, tiny=False)
    run_dir = tmp_path / "run"
    exe = Path(sys.executable).with_name("normbench")
    proc = subprocess.Popen([str(exe), "run", *LONG, f"hydra.run.dir={run_dir}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    _wait_for_training(run_dir, proc)
    sent = time.monotonic()
    proc.send_signal(signal.SIGUSR2)  # without submitit: nobody requeues, the run stops like an interrupt
    output, _ = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 15, output  # a step, a checkpoint, the exit (loaded machine)
    assert proc.returncode == EXIT_INTERRUPTED, output
    record = RunRecord.read(run_dir)
    assert record.status == "requeued" and record.attempt == 1, record.reason
    assert "SIGUSR2" in record.reason and "attempt 1" in record.reason
    assert 0 < record.steps < reference.steps and record.steps % 48 != 0  # mid-epoch (48 steps an epoch)

    resumed = normbench("run", *LONG, "resume=true", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    final = RunRecord.read(run_dir)
    assert final.status == "completed" and final.attempt == 2
    assert _history(final) == _history(reference) and final.metrics == reference.metrics


def test_a_job_that_may_not_be_requeued_again_says_so(tmp_path) -> None:
    """The handler before the run's (submitit's) gets the signal after the checkpoint; when it refuses to
    requeue, as submitit does after max_num_timeout requeues, the record says why and what to change."""
    calls: list[int] = []

    def submitit_like(signum: int, frame: object) -> None:
        calls.append(signum)
        raise RuntimeError("Job not requeued because: timed-out too many times.")

    def signal_once_training() -> None:
        deadline = time.monotonic() + 120
        while not (tmp_path / R.RESULTS_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGUSR2)

    previous = signal.signal(signal.SIGUSR2, submitit_like)
    sender = threading.Thread(target=signal_once_training)
    try:
        sender.start()
        with pytest.raises(InterruptedRun, match="not requeued"):
            train(tmp_path, *LONG, "epochs=20", tiny=False)
    finally:
        sender.join()
        signal.signal(signal.SIGUSR2, previous)
    assert calls == [signal.SIGUSR2]
    record = RunRecord.read(tmp_path)
    assert record.status == "interrupted" and "timed-out too many times" in record.reason
    assert "max_num_timeout" in record.reason and record.steps > 0


# --- On a real cluster ----------------------------------------------------------------------------------


def _cluster_up() -> bool:
    if shutil.which("scontrol") is None:
        return False
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    return "UP" in ping.stdout


@pytest.fixture(scope="module")
def partition() -> Iterator[str]:
    """The `debug` partition of a single-node cluster started here and stopped after the tests."""
    if _cluster_up():
        if os.environ.get("NORMBENCH_TEST_SLURM") == "existing":
            yield "debug"
            return
        pytest.skip("a SLURM cluster is already running here (scontrol ping): the tests submit only to a cluster "
                    "they start; NORMBENCH_TEST_SLURM=existing uses that one (its `debug` partition)")  # fmt: skip
    if os.geteuid() != 0:
        pytest.skip("starting SLURM needs root (apt, munge, slurmctld)")
    if not SETUP.is_file():
        pytest.skip(f"no SLURM setup script at {SETUP} (shared/ beside the repository)")
    if shutil.which("sbatch") is None and shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and there is no apt-get to install it")
    started = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=600)
    if started.returncode != 0:
        pytest.skip(f"{SETUP} failed: {(started.stdout + started.stderr)[-500:]}")
    yield "debug"
    subprocess.run(["bash", str(SETUP.with_name("teardown.sh"))], capture_output=True, timeout=120)


def _job_name(job_id: str) -> str:
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30).stdout
    return next(word.split("=", 1)[1] for word in shown.split() if word.startswith("JobName="))


@pytest.mark.process
@pytest.mark.slurm
def test_a_sweep_runs_as_slurm_jobs_with_only_the_partition_set(partition, tmp_path) -> None:
    sweep_dir = tmp_path / "sweep"
    done = normbench("sweep", "norm=bn,gn", *TINY_SWEEP, "hydra/launcher=slurm",
                     f"hydra.launcher.partition={partition}", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path,
                     timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    records = dict(find_records(sweep_dir))
    assert sorted(r.norm for r in records.values()) == ["bn", "gn"]
    assert all(r.status == "completed" and r.attempt == 1 for r in records.values())
    tasks = sorted((sweep_dir / ".submitit").glob("[0-9]*_*"))
    assert len(tasks) == 2
    for task in tasks:
        log = next(task.glob("*_log.out")).read_text()
        assert "Job completed successfully" in log  # submitit's logger survives Hydra's disabled job logging
        assert _job_name(task.name.split("_")[0]) in {f"normbench-{d.name}" for d in records}


@pytest.mark.process
@pytest.mark.slurm
@pytest.mark.slow
def test_a_run_longer_than_the_time_limit_completes_through_requeues(partition, tmp_path) -> None:
    reference = train(tmp_path / "reference", *LIMITED, tiny=False)
    sweep_dir = tmp_path / "sweep"
    started = time.monotonic()
    done = normbench("sweep", "norm=bn", *LIMITED, "hydra/launcher=slurm", f"hydra.launcher.partition={partition}",
                     "hydra.launcher.timeout_min=1", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path,
                     timeout=1800)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    [(_, record)] = find_records(sweep_dir)
    print(f"{record.attempt} attempts, {time.monotonic() - started:.0f} s; alone: {reference.wall_s:.0f} s")
    assert record.status == "completed" and record.attempt >= 3
    assert _history(record) == _history(reference) and record.metrics == reference.metrics
    logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").rglob("*_log.*"))
    assert "Caught signal SIGUSR2" in logs and "Requeued job" in logs


@pytest.mark.process
@pytest.mark.slurm
@pytest.mark.parametrize(
    ("setting", "sbatch_option", "fix"),
    [
        ("hydra.launcher.partition=nosuch", "--partition=nosuch", "`sinfo` lists the partitions"),
        ("hydra.launcher.gpus_per_node=1", "--gpus-per-node=1", "leave gpus_per_node unset"),
    ],
)
def test_settings_sbatch_refuses_end_in_one_paragraph_with_sbatchs_words_and_the_fix(
    partition, tmp_path, setting, sbatch_option, fix
) -> None:
    asked = subprocess.run(["sbatch", f"--partition={partition}", sbatch_option, "--wrap=true"], capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    assert asked.returncode != 0  # the cluster refuses it: no such partition, no GPUs
    sweep_dir = tmp_path / "sweep"
    done = normbench("sweep", "norm=bn,gn", *TINY_SWEEP, "hydra/launcher=slurm",
                     f"hydra.launcher.partition={partition}", setting, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path,
                     timeout=300)  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == EXIT_BAD_INPUT, out
    assert "Traceback" not in out and "HYDRA_FULL_ERROR" not in out
    [paragraph] = [line for line in out.splitlines() if line.startswith("Error:")]
    assert asked.stderr.strip().rsplit("sbatch: error: ", 1)[1] in paragraph  # sbatch's own words, quoted
    assert setting in paragraph and fix in paragraph and "Nothing was submitted" in paragraph
    assert not list(find_records(sweep_dir)) and not list(sweep_dir.glob("summary.*"))


def _sweep_in_background(sweep_dir: Path, partition: str, *overrides: str) -> subprocess.Popen[str]:
    exe = Path(sys.executable).with_name("normbench")
    return subprocess.Popen([str(exe), "sweep", *LONG, *overrides, "hydra/launcher=slurm",
                             f"hydra.launcher.partition={partition}", f"hydra.sweep.dir={sweep_dir}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _training_job(sweep_dir: Path, proc: subprocess.Popen[str]) -> tuple[str, Path]:
    """The SLURM job id and run directory of the sweep's first run, once it trains."""
    deadline = time.monotonic() + 300
    while not list(sweep_dir.glob(f"*/{R.RESULTS_FILE}")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.stdout else ""
        time.sleep(0.2)
    time.sleep(1)
    [run_dir] = [p.parent for p in sweep_dir.glob(f"*/{R.RESULTS_FILE}")]
    [task] = [p for p in (sweep_dir / ".submitit").glob("[0-9]*") if list(p.glob("*_log.out"))]  # JOBID[_TASK]
    return task.name, run_dir


def _queued(job: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job.split("_")[0]], capture_output=True, text=True).stdout.strip()


def _leaves_queue(job: str, timeout: float = 60) -> bool:
    """Whether `job` leaves squeue within `timeout` s: an ended job shows as CG (completing) while SLURM cleans up."""
    deadline = time.monotonic() + timeout
    while _queued(job):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


@pytest.mark.process
@pytest.mark.slurm
@pytest.mark.parametrize("how", [["--signal=TERM"], []], ids=["sigterm", "cancel"])
def test_scancel_stops_a_job_at_a_step_with_a_checkpoint(partition, tmp_path, how) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = _sweep_in_background(sweep_dir, partition, "norm=choice(bn)", "epochs=30")  # one run, longer than the test
    job, run_dir = _training_job(sweep_dir, proc)
    subprocess.run(["scancel", *how, job], check=True, timeout=30)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_SWEEP_INCOMPLETE and "Traceback" not in output, output
    record = RunRecord.read(run_dir)
    assert record.status == "interrupted" and "SIGTERM" in record.reason and record.steps > 0, output
    assert (run_dir / "checkpoint.pt").is_file() and _leaves_queue(job)


@pytest.mark.process
@pytest.mark.slurm
def test_ctrl_c_on_a_slurm_sweep_stops_its_jobs_and_exits_130(partition, tmp_path) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = _sweep_in_background(sweep_dir, partition, "norm=bn,gn", "epochs=30")  # 2 cores: one runs, one waits
    job, run_dir = _training_job(sweep_dir, proc)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_INTERRUPTED and "Sweep interrupted" in output and "Traceback" not in output
    assert {d.name: r.status for d, r in find_records(sweep_dir)} == {run_dir.name: "interrupted"}, output
    assert (run_dir / "checkpoint.pt").is_file() and _leaves_queue(job)  # the waiting task was cancelled


@pytest.mark.process
@pytest.mark.slurm
def test_a_run_of_two_worker_processes_as_two_tasks_of_one_job(partition, tmp_path) -> None:
    """hydra.launcher.tasks_per_node=2 with workers=2: the job's two tasks are the run's two workers (submitit's
    TorchDistributedEnvironment gives them torch.distributed's variables), and train like two emulated workers."""
    small = [*TINY_SWEEP, "model=mlp", "model.width=32", "model.depth=2", "eval.batch_size=32", "workers=2",
             "log.every=1", "log.hist_points=0"]  # fmt: skip
    emulated = train(tmp_path / "emulated", *small, tiny=False)
    sweep_dir = tmp_path / "sweep"
    done = normbench("sweep", "norm=choice(bn)", *small, "hydra/launcher=slurm", "hydra.launcher.tasks_per_node=2",
                     f"hydra.launcher.partition={partition}", "hydra.launcher.cpus_per_task=1",
                     f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    [(_, record)] = find_records(sweep_dir)
    assert record.status == "completed" and record.steps == 3
    logs = [p.read_text() for p in sorted((sweep_dir / ".submitit").rglob("*_log.out"))]
    assert ["global_rank=1(2)" in log for log in logs] == [False, True]  # task 1 was rank 1 of 2
    assert ["bn_b004x02 | done" in log for log in logs] == [True, False]  # rank 0 alone speaks
    assert [p[1] for p in record.curve] == pytest.approx([p[1] for p in emulated.curve], rel=1e-5)
    assert record.metrics.val_loss == pytest.approx(emulated.metrics.val_loss, rel=1e-5)
