"""Trustworthy records, with real processes: refused runs change nothing (hashes), one process per run directory
(a real lock), sweeps that stop on a real signal and leave no process behind, exit codes, and file-system faults
(a file in the way, a read-only mount, a full disk) as messages instead of tracebacks."""

from __future__ import annotations

import csv
import hashlib
import json
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import events, normbench

from normbench.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_SWEEP_INCOMPLETE
from normbench.record import RunRecord

SMALL = ["device=cpu", "data.train_size=64", "data.val_size=32", "batch_size=8", "threads=1", "log.activations=false",
         "quiet=true", "max_steps=3", "epochs=1", "eval.precise_bn_images=16"]  # fmt: skip
# Long enough for a signal to land mid-run: 3 epochs of 48 steps per run, a checkpoint at each epoch's end.
SLOW = ["device=cpu", "data.train_size=384", "data.val_size=32", "batch_size=8", "threads=1", "log.activations=false",
        "quiet=true", "epochs=3", "eval.precise_bn_images=16", "model=mlp"]  # fmt: skip
EXE = str(Path(sys.executable).with_name("normbench"))


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root (hidden ones included), by relative path."""
    files = (p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _ok(done: subprocess.CompletedProcess[str], code: int) -> str:
    text = done.stdout + done.stderr
    assert done.returncode == code, text
    assert "Traceback" not in text, text
    return " ".join(text.split())  # rich wraps lines: compare words


def _wait(predicate, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _descendants(pid: int) -> set[int]:
    """Every living process below `pid`, from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


@pytest.fixture(scope="module")
def completed(tmp_path_factory) -> Path:
    """A completed run, never changed by the tests that use it (they copy nothing and compare hashes)."""
    run_dir = tmp_path_factory.mktemp("done") / "run"
    _ok(normbench("run", *SMALL, f"hydra.run.dir={run_dir}", cwd=run_dir.parent), 0)
    return run_dir


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["optim.lr=0.5"], "optim.lr is 0.1 there and 0.5 now"),
        ([], "already holds a run with status 'completed'"),
        (["resume=true", "norm=gn"], "norm.name is 'bn' there and 'gn' now"),
    ],
)
def test_a_refused_run_changes_nothing(completed, extra, says) -> None:
    before = tree_hashes(completed)
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", "results.json", "checkpoint.pt"} <= set(before)
    done = normbench("run", *SMALL, *extra, f"hydra.run.dir={completed}", cwd=completed.parent)
    assert says in _ok(done, EXIT_BAD_INPUT)
    assert tree_hashes(completed) == before


@pytest.mark.parametrize("content", ['{"status": "comp', "null", "[]", '{"steps": 3}'])
def test_an_unreadable_record_is_a_refusal_not_an_empty_directory(tmp_path, content) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(content)
    before = tree_hashes(run_dir)
    said = _ok(normbench("run", *SMALL, f"hydra.run.dir={run_dir}", cwd=tmp_path), EXIT_BAD_INPUT)
    assert "cannot be read as a normbench record" in said and "hydra.run.dir=DIR" in said
    assert tree_hashes(run_dir) == before and len(list(run_dir.iterdir())) == 1  # not even a lock file

    shown = normbench("report", str(tmp_path), "--no-figures", cwd=tmp_path)  # nothing readable at all
    assert "none readable" in _ok(shown, EXIT_BAD_INPUT)


def test_two_processes_on_one_directory(tmp_path) -> None:
    run_dir = tmp_path / "run"
    long = [*SLOW, "epochs=1000", "log.x_axis=steps"]  # trains until the test stops it
    first = subprocess.Popen([EXE, "run", *long, f"hydra.run.dir={run_dir}"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)  # fmt: skip
    _wait(lambda: (run_dir / "results.json").exists(), first)  # the first epoch is recorded: it holds the lock
    second = normbench("run", *long, "resume=true", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert "is in use: another normbench process" in _ok(second, EXIT_BAD_INPUT)
    assert first.poll() is None  # still training: the refusal was the lock's
    first.send_signal(signal.SIGINT)
    output, _ = first.communicate(timeout=60)
    assert first.returncode == EXIT_INTERRUPTED, output
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    steps = [e.step for e in events(run_dir).Scalars("train/loss")]
    assert steps == list(range(1, RunRecord.read(run_dir).steps + 1))


def test_a_lock_dies_with_its_process(tmp_path) -> None:
    """kill -9 leaves no stale lock: the run resumes from its checkpoint at once."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([EXE, "run", *SLOW, f"hydra.run.dir={run_dir}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    _wait(lambda: (run_dir / "checkpoint.pt").exists(), proc)
    proc.kill()
    proc.communicate()
    resumed = normbench("run", *SLOW, "resume=true", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert "Resuming from step" in _ok(resumed, 0)


def _sweep(sweep_dir: Path, *extra: str) -> list[str]:
    return [EXE, "sweep", "norm=bn,ln,rms", *SLOW, *extra, f"hydra.sweep.dir={sweep_dir}"]


@pytest.mark.parametrize(
    ("launcher", "sig"),
    [("hydra/launcher=basic", signal.SIGINT), ("hydra/launcher=parallel", signal.SIGTERM)],
)
def test_a_signal_stops_the_whole_sweep_and_its_printed_command_finishes_it(tmp_path, launcher, sig) -> None:
    reference_dir = tmp_path / "reference"
    _ok(subprocess.run(_sweep(reference_dir, launcher), capture_output=True, text=True, timeout=300), 0)
    reference = {d.name: RunRecord.read(d) for d in reference_dir.iterdir() if d.is_dir()}

    sweep_dir = tmp_path / "sweep dir"  # a space: the printed command must quote it
    proc = subprocess.Popen(_sweep(sweep_dir, launcher), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait(lambda: any(sweep_dir.glob("*/checkpoint.pt")), proc)
    workers = _descendants(proc.pid)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=60)
    said = " ".join(output.split())
    assert proc.returncode == EXIT_INTERRUPTED, output
    assert "Traceback" not in output
    deadline = time.monotonic() + 30
    while _alive(workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(workers), f"left behind: {_alive(workers)}"
    records = {d.name: RunRecord.read(d) for d in sweep_dir.iterdir() if (d / "results.json").exists()}
    assert "interrupted" in {r.status for r in records.values()}
    assert all(r.status in ("interrupted", "completed") for r in records.values()), records
    assert len(records) < 3 or any(r.status == "interrupted" for r in records.values())
    command = said.split("Continue it with: ", 1)[1].split(" normbench sweep")[0]
    assert command.startswith("normbench sweep") and "'hydra.sweep.dir=" in command

    again = subprocess.run([EXE, *shlex.split(command)[1:]], capture_output=True, text=True, timeout=300)
    _ok(again, 0)
    final = {d.name: RunRecord.read(d) for d in sweep_dir.iterdir() if d.is_dir()}
    assert set(final) == set(reference)
    for name, record in final.items():
        assert record.status == "completed"
        assert record.metrics == reference[name].metrics, name  # the same numbers as an uninterrupted sweep


def test_a_sweep_rerun_with_other_settings_is_refused_up_front(tmp_path) -> None:
    sweep_dir = tmp_path / "sweep"
    grid = ["norm=bn,gn", *SMALL, f"hydra.sweep.dir={sweep_dir}"]
    _ok(normbench("sweep", *grid, cwd=tmp_path), 0)
    before = tree_hashes(sweep_dir)
    said = _ok(normbench("sweep", *grid, "optim.lr=0.5", cwd=tmp_path), EXIT_BAD_INPUT)
    assert "optim.lr is 0.1 there and 0.5 now" in said
    assert "hydra.sweep.dir=DIR" in said and "earlier settings" in said
    assert tree_hashes(sweep_dir) == before  # multirun.yaml and summary.* included


def test_a_sweep_with_a_diverged_run_exits_with_its_own_code(tmp_path) -> None:
    sweep_dir = tmp_path / "sweep"
    done = normbench("sweep", "optim.lr=0.05,1e9", "norm=none", *SMALL, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    said = _ok(done, EXIT_SWEEP_INCOMPLETE)
    assert "Not every run completed" in said and "(diverged)" in said
    records = {d.name: RunRecord.read(d) for d in sweep_dir.iterdir() if (d / "results.json").exists()}
    by_lr = {r.config["optim"]["lr"]: r for r in records.values()}
    assert set(by_lr) == {0.05, 1e9} and len(records) == 2
    assert by_lr[0.05].status == "completed" and by_lr[0.05].steps == 3
    assert by_lr[1e9].status == "diverged" and 1 <= by_lr[1e9].diverged_step <= 3
    with (sweep_dir / "summary.csv").open() as f:  # the summary written at the end of the sweep, read as CSV
        rows = {row["run"]: row for row in csv.DictReader(f)}
    expected = {n: "diverged" if r.config["optim"]["lr"] == 1e9 else "completed" for n, r in records.items()}
    assert {n: row["status"] for n, row in rows.items()} == expected
    diverged = next(n for n, status in expected.items() if status == "diverged")
    assert f"{diverged} (diverged)" in said
    assert rows[diverged]["val_acc"] == "" and "The training loss became" in rows[diverged]["reason"]


def test_file_system_faults_are_messages(tmp_path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("mine")
    cases = {afile: "is a file, not a directory", afile / "run": "which is a file"}
    for run_dir, says in cases.items():
        assert says in _ok(normbench("run", *SMALL, f"hydra.run.dir={run_dir}", cwd=tmp_path), EXIT_BAD_INPUT)
        sweep = normbench("sweep", "norm=bn,gn", *SMALL, f"hydra.sweep.dir={run_dir}", cwd=tmp_path)
        assert says in _ok(sweep, EXIT_BAD_INPUT)
    assert afile.read_text() == "mine"


@pytest.fixture
def tmpfs(tmp_path):
    """A mounted tmpfs of 512 KiB (root only), unmounted afterwards."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_says_so(tmpfs) -> None:
    run_dir = tmpfs / "run"  # the CNN's checkpoint (~0.8 MB) does not fit in 512 KiB
    done = normbench("run", *SMALL, f"hydra.run.dir={run_dir}", cwd=tmpfs.parent)
    said = _ok(done, EXIT_BAD_INPUT)
    assert "No space left on device" in said and str(run_dir) in said


def test_a_read_only_file_system_is_refused(tmpfs) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    for command in ("run", "sweep"):
        key = "hydra.run.dir" if command == "run" else "hydra.sweep.dir"
        said = _ok(normbench(command, *SMALL, f"{key}={tmpfs / 'x'}", cwd=tmpfs.parent), EXIT_BAD_INPUT)
        assert "read-only file system" in said


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing


def test_a_file_size_limit_is_a_message(tmp_path) -> None:
    run_dir = tmp_path / "run"
    done = subprocess.run([EXE, "run", *SMALL, f"hydra.run.dir={run_dir}"], capture_output=True, text=True,
                          preexec_fn=_limit_file_size, timeout=240)  # fmt: skip
    said = _ok(done, EXIT_BAD_INPUT)
    assert "File too large" in said and "checkpoint.pt" in said


def test_resume_faults(tmp_path) -> None:
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    said = _ok(normbench("run", *SMALL, "resume=true", f"hydra.run.dir={stray}", cwd=tmp_path), EXIT_BAD_INPUT)
    assert "holds no checkpoint" in said and "notes.txt" in said

    fresh = _ok(normbench("run", *SMALL, "resume=true", f"hydra.run.dir={tmp_path / 'new'}", cwd=tmp_path), 0)
    assert "Resuming" not in fresh  # an empty (new) directory: resume=true starts it

    for content in (b"", b"this is no checkpoint"):
        run_dir = tmp_path / f"broken{len(content)}"
        run_dir.mkdir()
        (run_dir / "checkpoint.pt").write_bytes(content)
        said = _ok(normbench("run", *SMALL, "resume=true", f"hydra.run.dir={run_dir}", cwd=tmp_path), EXIT_BAD_INPUT)
        assert "cannot be loaded to resume the run" in said


def test_report_lists_unreadable_records_and_writes_elsewhere(completed, tmp_path) -> None:
    root = tmp_path / "mixed"
    root.mkdir()
    shutil.copytree(completed, root / "good")
    for name, content in {"cut": '{"status": "comp', "list": "[]", "foreign": '{"accuracy": 0.9}'}.items():
        (root / name).mkdir()
        (root / name / "results.json").write_text(content)
    before = tree_hashes(completed)
    out = tmp_path / "out"
    shown = normbench("report", str(root), "--no-figures", "--out", str(out), cwd=tmp_path)
    said = _ok(shown, EXIT_BAD_INPUT)
    assert said.count("unreadable") >= 3 and "--skip-bad" in said
    summary = json.loads((out / "summary.json").read_text())
    assert [r["run"] for r in summary["runs"]] == ["good"]
    assert {r["run"] for r in summary["unreadable"]} == {"cut", "list", "foreign"}
    _ok(normbench("report", str(root), "--no-figures", "--skip-bad", "--out", str(out), cwd=tmp_path), 0)
    assert tree_hashes(completed) == before

    blocked = tmp_path / "afile"
    blocked.write_text("")
    said = _ok(normbench("report", str(completed), "--out", str(blocked / "x"), cwd=tmp_path), EXIT_BAD_INPUT)
    assert "Cannot write the report into" in said and "--out DIR" in said
