"""What an adversarial user tries (issue 29), with real processes and real files: no traceback without --debug
and the documented exit code; no directory written that holds something else (hashes before and after); no
trace of an earlier attempt in TensorBoard; every printed command works when pasted into a shell; no process
left behind when a sweep's main process is killed; no silent replacement of a norm; messages that say what
happened; shared files with the run directory's permissions."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import events, normbench
from test_records import EXE, MOMENTS, SMALL, Sweep, _ok, _stopped_cleanly, _wait, tree_hashes
from test_records import completed as completed  # fixtures: re-exported, pytest finds them by name
from test_records import tmpfs as tmpfs

from normbench.base.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED
from normbench.launch.stop import child_pids
from normbench.launch.summary import unfinished
from normbench.run.record import RunRecord

STRICT_BN = '''
import torch
from torch import nn
from normbench.parts.norms.registry import on, register_norm


class StrictBN(nn.Module):
    """A batch norm that takes its momentum for a number: PreciseBN's momentum=None breaks it."""

    def __init__(self, channels, eps=1e-5):
        super().__init__()
        self.eps, self.momentum = eps, 0.1
        self.weight, self.bias = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0))

    def forward(self, x):
        if self.training:
            mean, var = x.mean([0, 2, 3]), x.var([0, 2, 3], unbiased=False)
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var)
        else:
            mean, var = self.running_mean, self.running_var
        s = (None, slice(None), None, None)
        return (x - mean[s]) / torch.sqrt(var[s] + self.eps) * self.weight[s] + self.bias[s]


@register_norm("strictbn", summary="BN that needs a numeric momentum", batch_statistics=True,
               layouts={"image": on("N,H,W", torch=StrictBN, reference=StrictBN)})
def strict_bn(cls, num_features: int, *, eps: float = 1e-5) -> nn.Module:
    return cls(num_features, eps=eps)
'''


def _plugin(root: Path, name: str, source: str) -> Path:
    """A plugin module and its norm config in a --config-dir of their own."""
    (root / "norm").mkdir(parents=True)
    (root / "norm" / f"{name}.yaml").write_text(f"defaults: [/schema/norm/{name}@_here_]\n")
    (root / f"{name}.py").write_text(source)
    return root


# --- 1. No traceback without --debug, exit codes as documented ------------------------------------------------


@pytest.mark.process
def test_bad_input_is_one_paragraph_with_exit_code_2_and_changes_nothing(completed, tmp_path) -> None:
    # report: a record whose fields have the wrong types is listed as unreadable, with or without --skip-bad.
    sweep = tmp_path / "sweep"
    shutil.copytree(completed, sweep / "good")
    shutil.copytree(completed, sweep / "typed")
    for key, value in (("metrics", {"val_acc": "high"}), ("steps", "3"), ("batch_size", [8]), ("history", [{}])):
        data = json.loads((completed / "results.json").read_text())
        data[key] = value
        (sweep / "typed" / "results.json").write_text(json.dumps(data))
        said = _ok(normbench("report", str(sweep), "--no-figures", cwd=tmp_path), EXIT_BAD_INPUT)
        assert "unreadable typed" in said and f"{key}" in said and "B=8" in said  # the good run in the table
        _ok(normbench("report", str(sweep), "--no-figures", "--skip-bad", cwd=tmp_path), 0)

    # Numbers torch or Python's RNG cannot take: refused at config time, with the allowed range; nothing written.
    before = tree_hashes(tmp_path)
    for overrides, says in (
        (["optim.lr=1e400"], "optim.lr=inf is not valid: it must be finite"),
        (["optim.lr=inf"], "optim.lr=inf is not valid: it must be finite"),
        (["optim.weight_decay=1e300"], "optim.weight_decay=1e+300 is not valid: it must be finite, within float32"),
        (["optim.lr=3e38", "optim.base_batch_size=1"], "optim.lr=3e+38 is not valid: scaled to batch_size=8"),
        ([f"seed={2**64}"], f"seed={2**64} is not valid: it must be a whole number > -4294967296 and < 4294967296"),
        ([f"data.seed={-(2**63)}"], "data.seed=-9223372036854775808 is not valid: it must be a whole number >"),
    ):
        done = normbench("run", *SMALL, *overrides, f"hydra.run.dir={tmp_path / 'new'}", cwd=tmp_path)
        assert says in _ok(done, EXIT_BAD_INPUT)
    assert tree_hashes(tmp_path) == before and not (tmp_path / "new").exists()

    # A checkpoint of another run (other norm, other model) on resume=true: exit 2 naming the file, nothing changed.
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(completed / "checkpoint.pt", other)
    before = tree_hashes(other)
    for extra in ("norm=gn", "model=mlp"):
        done = normbench("run", *SMALL, extra, "resume=true", f"hydra.run.dir={other}", cwd=tmp_path)
        said = _ok(done, EXIT_BAD_INPUT)
        assert f"{other / 'checkpoint.pt'} cannot be loaded" in said and "another run's model" in said
        assert tree_hashes(other) == before

    # Hydra's own error paths: --cfg checks like a run, a missing --config-dir, a flag without its value.
    for args, says in (
        (["--cfg", "job", "optim.lr=abc"], "optim.lr=abc is not valid: it must be a number > 0"),
        (["--cfg", "job", "optim.lr=-1"], "optim.lr=-1 is not valid"),
        (["--config-dir", str(tmp_path / "none"), "--cfg", "job"], "is not a directory"),
        (["--config-dir", str(tmp_path / "none"), *SMALL], "is not a directory"),
        (["--cfg"], "expected one argument"),
    ):
        assert says in _ok(normbench("run", *args, cwd=tmp_path), EXIT_BAD_INPUT)
    for args, says in (
        (["--cfg", "job", "norm=bn,gn", "optim.lr=-1"], "in the run norm=bn optim.lr=-1: optim.lr=-1 is not valid"),
        (["--config-dir", str(tmp_path / "none"), "norm=bn,gn"], "is not a directory"),
    ):
        assert says in _ok(normbench("sweep", *args, cwd=tmp_path), EXIT_BAD_INPUT)
    assert "name: bn" in _ok(normbench("sweep", "--cfg", "job", "norm=bn,gn", cwd=tmp_path), 0)


@pytest.mark.process
def test_a_primary_config_of_your_own_that_cannot_be_composed_is_one_paragraph(tmp_path) -> None:
    """--config-name goes to Hydra unchecked: a YAML error, defaults in a circle (a 2,500-line traceback) or a
    missing file is still one paragraph, exit 2, and nothing is written."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "broken.yaml").write_text("batch_size: [8\n")
    (mine / "a.yaml").write_text("defaults:\n  - b\n")
    (mine / "b.yaml").write_text("defaults:\n  - a\n")
    before = tree_hashes(tmp_path)
    for command, name, says in (
        ("run", "broken", "A YAML config file could not be read at line 2, column 1: expected ',' or ']'"),
        ("run", "a", "The config's defaults lists refer to each other in a circle"),
        ("run", "none", "Cannot find primary config 'none'"),
        ("sweep", "a", "The config's defaults lists refer to each other in a circle"),
    ):
        said = _ok(normbench(command, "--config-dir", str(mine), "--config-name", name, cwd=tmp_path), EXIT_BAD_INPUT)
        assert says in said
    assert tree_hashes(tmp_path) == before and [p.name for p in tmp_path.iterdir()] == ["mine"]


@pytest.mark.process
def test_an_interpolation_that_cannot_resolve_is_one_paragraph_and_one_that_can_resumes(tmp_path) -> None:
    """`normbench run` resolves its config lazily: an override that refers to itself or to nothing is one
    paragraph, exit 2, as in a sweep's pre-flight; one that resolves keeps the user's text in the resume command."""
    for value, says in (("${optim.lr}", "Recursive interpolation detected full_key: optim.lr"),
                        ("${oc.env:NORMBENCH_NO_SUCH_VARIABLE}", "NORMBENCH_NO_SUCH_VARIABLE' not found")):  # fmt: skip
        for command in ("run", "sweep"):
            grid = ["norm=bn,gn"] if command == "sweep" else []
            done = normbench(command, *SMALL, "model=mlp", *grid, f"optim.lr={value}", cwd=tmp_path)
            assert says in _ok(done, EXIT_BAD_INPUT)
    assert list(tmp_path.iterdir()) == []
    run_dir = tmp_path / "run"
    _ok(normbench("run", *SMALL, "model=mlp", "optim.lr=${optim.weight_decay}", f"hydra.run.dir={run_dir}",
                  cwd=tmp_path), 0)  # fmt: skip
    record = RunRecord.read(run_dir)
    assert "'optim.lr=${optim.weight_decay}'" in record.resume_command and record.config["optim"]["lr"] == 0.0005


@pytest.mark.process
def test_a_comma_in_a_setting_of_hydras_is_text_to_quote_not_a_sweep(tmp_path) -> None:
    """Hydra sweeps none of its own settings: `run` does not send such a comma list to `sweep`, and `sweep` refuses
    it before it makes a sweep directory (it stopped with Hydra's message, exit 1, after making one)."""
    for command in ("run", "sweep"):
        said = _ok(normbench(command, *SMALL, f"hydra.run.dir={tmp_path / 'a,b'}", cwd=tmp_path), EXIT_BAD_INPUT)
        assert "Hydra's own settings (hydra.*, hydra/*) cannot be swept" in said and "\"key='a,b'\"" in said
        assert "normbench sweep" not in said
    assert list(tmp_path.iterdir()) == []


@pytest.mark.process
def test_a_plugin_norm_that_breaks_the_contract_is_named_with_its_step(tmp_path) -> None:
    plugins = _plugin(tmp_path / "mine", "strictbn", STRICT_BN)
    env = {"NORMBENCH_PLUGINS": str(plugins / "strictbn.py")}
    run_dir = tmp_path / "run"
    done = normbench("run", "--config-dir", str(plugins), *SMALL, "norm=strictbn", f"hydra.run.dir={run_dir}",
                     cwd=tmp_path, **env)  # fmt: skip
    said = _ok(done, EXIT_BAD_INPUT)
    assert "norm=strictbn failed at step 3 in PreciseBN" in said and "momentum=None" in said
    assert "What normbench asks of a norm" in said and "docs/plugins.md" in said
    record = json.loads((run_dir / "results.json").read_text())
    assert record["status"] == "failed" and "norm=strictbn failed at step 3" in record["reason"]
    docs = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    assert "## What normbench asks of a norm" in docs and "momentum=None" in docs
    # Without the BN-mode validations the same norm trains to the end.
    done = normbench("run", "--config-dir", str(plugins), *SMALL, "norm=strictbn", "eval.bn_modes=false",
                     f"hydra.run.dir={tmp_path / 'run2'}", cwd=tmp_path, **env)  # fmt: skip
    _ok(done, 0)


HALF_IN_TRAINING = """
from torch import nn
from normbench.parts.norms.registry import on, register_norm


class Half(nn.Module):
    \"\"\"Half its channels in train mode: the eval-mode check alone passes it.\"\"\"

    def forward(self, x):
        return x[:, : x.shape[1] // 2] if self.training else x


@register_norm("half", summary="the wrong shape in training", layouts={"vector": on("C", torch=Half)})
def half(cls, num_features: int, *, eps: float = 1e-5) -> nn.Module:
    return cls()
"""


@pytest.mark.process
def test_a_plugin_norm_of_the_wrong_shape_in_training_is_refused_before_it_trains(tmp_path) -> None:
    (tmp_path / "half.py").write_text(HALF_IN_TRAINING)
    run_dir = tmp_path / "run"
    done = normbench("run", *SMALL, "model=mlp", "norm=half", f"hydra.run.dir={run_dir}", cwd=tmp_path,
                     NORMBENCH_PLUGINS=str(tmp_path / "half.py"))  # fmt: skip
    said = _ok(done, EXIT_BAD_INPUT)
    assert "its layer 'layer1.norm' (Half) returned (2, 256) for an input of (2, 512) in train mode" in said
    assert "What normbench asks of a norm" in said and not run_dir.exists()


# --- 2. Never write into a directory that holds something else -------------------------------------------------


@pytest.mark.process
def test_no_directory_that_holds_something_else_is_written(completed, tmp_path) -> None:
    sweep = tmp_path / "sweep"
    _ok(normbench("sweep", *SMALL, "norm=bn,gn", f"hydra.sweep.dir={sweep}", cwd=tmp_path), 0)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "paper.tex").write_text("mine")
    broken = tmp_path / "broken"
    shutil.copytree(sweep, broken)
    (broken / "gn_b008" / "results.json").write_text('{"status": "comp')
    before = {root: tree_hashes(root) for root in (completed, tmp_path)}
    entries = sorted(p.name for p in tmp_path.iterdir())
    for command, key, where, says in (
        ("sweep", "hydra.sweep.dir", completed, "is a run's directory (it holds .hydra, checkpoint.pt, results.json)"),
        ("run", "hydra.run.dir", sweep, "is a sweep's directory: it holds bn_b008"),
        ("run", "hydra.run.dir", notes, "is not a run's directory: it holds notes.txt"),
        ("sweep", "hydra.sweep.dir", notes, "is not a sweep's directory: it holds notes.txt"),
        ("run", "hydra.run.dir", "", "hydra.run.dir is empty, which would write into the current directory"),
        ("sweep", "hydra.sweep.dir", "", "hydra.sweep.dir is empty"),
    ):
        grid = ["norm=bn,gn"] if command == "sweep" else []
        said = _ok(normbench(command, *SMALL, *grid, f"{key}={where}", cwd=cwd), EXIT_BAD_INPUT)
        assert says in said and ("Nothing was changed" in said or "empty" in says)
    # A sweep refused by its checks leaves no (empty) sweep directory behind.
    new = tmp_path / "new"
    _ok(normbench("sweep", *SMALL, "norm=bn,gn", "optim.lr=-1", f"hydra.sweep.dir={new}", cwd=tmp_path), 2)
    _ok(normbench("run", *SMALL, "optim.lr=-1", f"hydra.run.dir={new}", cwd=tmp_path), 2)
    # report refuses a sweep with an unreadable record: its summary files stay as they were.
    said = _ok(normbench("report", str(broken), "--no-figures", cwd=tmp_path), EXIT_BAD_INPUT)
    assert "unreadable gn_b008" in said and "Nothing was written" in said
    assert {root: tree_hashes(root) for root in (completed, tmp_path)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == entries and sorted(p.name for p in cwd.iterdir()) == [
        "paper.tex"
    ]
    # The same sweep into its own directory still continues it.
    said = _ok(normbench("sweep", *SMALL, "norm=bn,gn", f"hydra.sweep.dir={sweep}", cwd=tmp_path), 0)
    assert said.count("already completed") == 2


@pytest.mark.process
def test_a_directory_name_the_file_system_cannot_hold_or_a_subdir_of_ones_own_is_refused(tmp_path) -> None:
    """A name over 255 bytes (the run's, the sweep's, or one a swept key makes) and a hydra.sweep.subdir of the
    user's (one name for every run, or one too long: a traceback after the first run) are refused before anything
    is written."""
    long = "x" * 300
    milestones = "[" + ",".join(["0.01"] * 60) + "]"  # bn_b008_milestones0.01-0.01-…: over 255 bytes
    sweep = f"hydra.sweep.dir={tmp_path / 's'}"
    for command, args, says in (
        ("run", [f"hydra.run.dir={tmp_path / long}"], "is 300 bytes long; the file system takes names of at most 255"),
        ("sweep", [f"optim.milestones=[0.5],{milestones}", sweep], "bytes long"),
        ("sweep", ["norm=bn,gn", "hydra.sweep.subdir=x", sweep], "hydra.sweep.subdir=x:"),
        ("sweep", ["norm=bn,gn", f"hydra.sweep.subdir={long}", sweep], "Leave hydra.sweep.subdir out"),
    ):
        said = _ok(normbench(command, *SMALL, "model=mlp", *args, cwd=tmp_path), EXIT_BAD_INPUT)
        assert says in said and "Traceback" not in said
    assert list(tmp_path.iterdir()) == []


# --- 3. A run started again from scratch leaves no trace of its earlier attempt in TensorBoard --------------------


@pytest.mark.process
def test_a_run_killed_before_its_first_checkpoint_starts_again_without_a_trace(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    one_epoch = ["device=cpu", "model=mlp", "data.train_size=2048", "data.val_size=32", "batch_size=8", "epochs=1",
                 "threads=1", "quiet=true", "log.every=1", "log.activations=false"]  # fmt: skip
    command = [EXE, "sweep", *one_epoch, "norm=bn,ln", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = sweep / "bn_b008"
    _wait(lambda: first.is_dir() and "train/loss" in events(first).Tags()["scalars"], proc)  # on disk
    proc.kill()  # SIGKILL: no handler runs, no record, no checkpoint
    proc.communicate(timeout=30)
    assert not (first / "checkpoint.pt").exists() and not (first / "results.json").exists()
    trained = [e.step for e in events(first).Scalars("train/loss")]
    assert trained and trained == list(range(8, 8 * len(trained) + 1, 8))  # the killed attempt's steps
    assert unfinished(sweep, ["bn_b008", "ln_b008"]) == {"bn_b008": "started, no checkpoint", "ln_b008": "not started"}

    _ok(normbench("sweep", *one_epoch, "norm=bn,ln", f"hydra.sweep.dir={sweep}", cwd=tmp_path), 0)
    assert RunRecord.read(first).steps == 256
    logged = [e.step for e in events(first).Scalars("train/loss")]
    assert logged == list(range(8, 8 * 256 + 1, 8))  # each step once: the earlier attempt's events purged
    assert [e.step for e in events(first).Scalars("val/acc")] == [8 * 256]
    assert len(list(first.glob("events.out.tfevents.*"))) == 2  # the earlier file kept, as it was written


# --- 4. Every recovery command normbench prints works when pasted ------------------------------------------------

EPOCH = ["device=cpu", "model=mlp", "data.train_size=1024", "data.val_size=32", "batch_size=8", "epochs=2", "threads=1",
         "quiet=true", "log.activations=false", "eval.precise_bn_images=16"]  # fmt: skip


def _paste(said: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The command between backticks that starts with `normbench run` or `normbench sweep` (the program's path where
    the shell would not find it), run through a real shell."""
    (command,) = set(re.findall(r"`(\S*normbench (?:run|sweep) [^`]*)`", said))
    path = f"{Path(EXE).parent}:{os.environ['PATH']}"
    return subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PATH": path, "COLUMNS": "200"})  # fmt: skip


def _stop_mid_run(command: list[str], run_dir: Path) -> str:
    """Start `command`, SIGTERM it once its run has written events, return what it printed."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    _wait(lambda: any(run_dir.glob("events.out.tfevents.*")), proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, output
    return output


@pytest.mark.process
def test_every_printed_recovery_command_works_when_pasted(tmp_path, tmpfs) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # An interrupted run with its own overrides, in a directory whose name has a space.
    run_dir = tmp_path / "my run"
    said = _stop_mid_run([EXE, "run", *EPOCH, "optim.lr=0.05", f"hydra.run.dir={run_dir}"], run_dir)
    assert RunRecord.read(run_dir).status == "interrupted"
    done = _paste(said, elsewhere)
    assert done.returncode == 0, done.stdout + done.stderr
    record = RunRecord.read(run_dir)
    assert record.status == "completed" and record.config["optim"]["lr"] == 0.05 and record.attempt == 2

    # A sweep's run, as `report` prints it when interrupted: its record's command continues the sweep it belongs to.
    sweep = tmp_path / "sweep"
    _stop_mid_run([EXE, "sweep", *EPOCH, "norm=bn,ln", f"hydra.sweep.dir={sweep}"], sweep / "bn_b008")
    said = _ok(normbench("report", str(sweep), "--no-figures", cwd=tmp_path), 0)
    assert "interrupted bn_b008" in said and "not started ln_b008" in said  # the grid, from the sweep's plans
    assert RunRecord.read(sweep / "bn_b008").resume_command in said
    done = _paste(said, elsewhere)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [RunRecord.read(sweep / n).status for n in ("bn_b008", "ln_b008")] == ["completed", "completed"]

    # A full disk: the run had no checkpoint yet, so the command starts it again in a new directory.
    said = _ok(normbench("run", *SMALL, "optim.lr=0.05", f"hydra.run.dir={tmpfs / 'run'}", cwd=tmp_path), 2)
    assert "No space left on device" in said
    done = _paste(said, elsewhere)
    assert done.returncode == 0, done.stdout + done.stderr
    (again,) = [RunRecord.read(d.parent) for d in elsewhere.rglob("results.json")]
    assert again.status == "completed" and again.config["optim"]["lr"] == 0.05


@pytest.mark.process
def test_a_full_disk_during_a_tensorboard_write_is_one_paragraph(tmpfs) -> None:
    """TensorBoard writes from a thread of its own: the disk filling up there is normbench's paragraph, exit 2,
    with no thread traceback before it (the histograms of log.every=1 fill the 40 KiB left)."""
    (tmpfs / "fill").write_bytes(bytes(512 * 1024 - 40 * 1024))
    run_dir = tmpfs / "run"
    done = normbench("run", *SMALL, "model=mlp", "log.activations=true", "log.every=1", f"hydra.run.dir={run_dir}",
                     cwd=tmpfs.parent)  # fmt: skip
    said = _ok(done, EXIT_BAD_INPUT)
    assert "Exception in thread" not in said and f"No space left on device while writing {run_dir}" in said
    assert any(run_dir.glob("events.out.tfevents.*"))  # it failed writing events, not earlier


# --- 5. The sweep's main process killed outright: its parallel workers stop and go ---------------------------------


def _alive(pid: int) -> bool:
    """Whether `ps` lists `pid` (a zombie is gone: it runs nothing)."""
    shown = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return bool(shown) and not shown.startswith("Z")


@pytest.mark.process
def test_workers_of_a_killed_sweep_stop_with_a_checkpoint_and_leave_nothing_running(tmp_path) -> None:
    sweep = tmp_path / "sweep"
    long = [*EPOCH, "epochs=50", "norm=bn,ln", "hydra/launcher=parallel", f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen([EXE, "sweep", *long], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    _wait(lambda: len(list(sweep.glob("*/events.out.tfevents.*"))) == 2, proc)  # both workers train
    children = child_pids(proc.pid)  # loky's workers and its resource trackers
    listed = subprocess.run(
        ["ps", "-ww", "-o", "args=", "-p", ",".join(map(str, children))], capture_output=True, text=True
    )
    assert listed.stdout.count("LokyProcess") == 2 and "resource_tracker" in listed.stdout
    proc.kill()  # SIGKILL: the main process runs no handler and forwards nothing
    killed = time.monotonic()
    while any(_alive(pid) for pid in children):
        assert time.monotonic() - killed < 60, subprocess.run(["ps", "-f", "-p", ",".join(map(str, children))],
                                                              capture_output=True, text=True).stdout  # fmt: skip
        time.sleep(0.5)
    assert time.monotonic() - killed < 30 + 20  # noticed within 30 s, then one step and a checkpoint
    proc.communicate(timeout=30)
    for run in ("bn_b008", "ln_b008"):
        record = RunRecord.read(sweep / run)
        assert record.status == "interrupted" and 0 < record.steps < 50 * 128, record
        assert (sweep / run / "checkpoint.pt").exists()
    assert not subprocess.run(["pgrep", "-f", str(sweep)], capture_output=True).stdout  # nothing left in ps


# --- 6. Plugins cannot silently replace a built-in norm ----------------------------------------------------------

MY_BN = """
from torch import nn
from normbench.parts.norms.registry import on, register_norm


@register_norm("{name}", summary="my own batch norm", batch_statistics=True,{replace}
               layouts={{"image": on("N,H,W", torch=nn.BatchNorm2d)}})
def my_bn(cls, num_features: int, *, eps: float = 1e-5) -> nn.Module:
    return cls(num_features, eps=eps)
"""


@pytest.mark.process
def test_a_plugin_cannot_silently_replace_a_registered_norm(tmp_path) -> None:
    for file, name, replace in (("bn.py", "bn", ""), ("bn_on_purpose.py", "bn", " replace=True,"),
                                ("one.py", "mine", ""), ("two.py", "mine", "")):  # fmt: skip
        (tmp_path / file).write_text(MY_BN.format(name=name, replace=replace))
    catalog = Path(__file__).resolve().parents[1] / "normbench" / "parts" / "norms" / "catalog.py"
    plugins = {"NORMBENCH_PLUGINS": str(tmp_path / "bn.py")}
    said = _ok(normbench("run", *SMALL, cwd=tmp_path, **plugins), EXIT_BAD_INPUT)
    assert f"The norm 'bn' in normbench_plugin_bn ({tmp_path / 'bn.py'}:" in said
    assert f"already registered by normbench.parts.norms.catalog ({catalog}:" in said and "replace=True" in said
    said = _ok(normbench("list", cwd=tmp_path, NORMBENCH_PLUGINS=str(tmp_path / "bn_on_purpose.py")), 0)
    assert "my own batch norm" in said
    both = {"NORMBENCH_PLUGINS": f"{tmp_path / 'one.py'},{tmp_path / 'two.py'}"}
    said = _ok(normbench("list", cwd=tmp_path, **both), EXIT_BAD_INPUT)
    assert (
        f"({tmp_path / 'two.py'}:" in said
        and f"already registered by normbench_plugin_one ({tmp_path / 'one.py'}:" in said
    )


# --- 7. Messages that say what happened --------------------------------------------------------------------------


@pytest.mark.process
def test_messages_say_what_happened(tmp_path) -> None:
    said = _ok(normbench("run", *SMALL, "norm=bn,ln", cwd=tmp_path), EXIT_BAD_INPUT)
    assert "`normbench run` trains one run" in said and "`normbench sweep" in said and "norm=bn,ln" in said
    said = _ok(normbench("sweep", *SMALL, "norm=bn,ln", "optim.lr=-1", cwd=tmp_path), EXIT_BAD_INPUT)
    assert "in the run " in said and "hydra." not in said  # no internal keys
    said = _ok(normbench("explain", "bn", "--shape", "1,256", cwd=tmp_path), 0)
    assert "Warning: In training, norm=bn takes each statistic over N, which gives 1 value" in said
    assert "Warning" not in _ok(normbench("explain", "bn", "--shape", "2,256", cwd=tmp_path), 0)
    # A path with a space, quoted in the printed TensorBoard command.
    run_dir = tmp_path / "my run"
    said = _ok(normbench("run", *SMALL, f"hydra.run.dir={run_dir}", cwd=tmp_path), 0)
    assert f"tensorboard --logdir '{run_dir}'" in said


@pytest.mark.process
def test_a_validation_too_small_for_batch_statistics_is_refused_with_advice_that_applies(tmp_path) -> None:
    """BN's batch-statistics validation over 1 validation image cannot work: refused before anything is written,
    with advice about that validation (not the batch_size the run already has), which then works."""
    tiny = [*SMALL, "model=mlp", "data.val_size=1"]
    said = _ok(normbench("run", *tiny, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path), EXIT_BAD_INPUT)
    assert "at most the 1 validation images" in said and "eval.bn_modes=false" in said
    assert "batch_size >= 2" not in said and not (tmp_path / "run").exists()
    _ok(normbench("run", *tiny, "eval.bn_modes=false", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path), 0)


# --- 8. Shared files get the run directory's permissions ------------------------------------------------------


@pytest.mark.process
def test_shared_files_follow_the_umask(tmp_path) -> None:
    for umask, mode in ((0o022, 0o644), (0o002, 0o664)):
        run_dir = tmp_path / f"run{umask:o}"
        done = subprocess.run([EXE, "run", *SMALL, f"hydra.run.dir={run_dir}"], capture_output=True, text=True,
                              preexec_fn=lambda umask=umask: os.umask(umask), timeout=300)  # fmt: skip
        _ok(done, 0)
        done = subprocess.run([EXE, "report", str(run_dir), "--no-figures"], capture_output=True, text=True,
                              preexec_fn=lambda umask=umask: os.umask(umask), timeout=300)  # fmt: skip
        _ok(done, 0)
        for name in ("results.json", "checkpoint.pt", "summary.csv", "summary.json", ".hydra/config.yaml"):
            assert (run_dir / name).stat().st_mode & 0o777 == mode, name


@pytest.mark.process
def test_a_ctrl_c_while_torch_imports_is_held_until_the_import_ends(tmp_path) -> None:
    """A real SIGINT to this very process inside `signals.deferred()` raises nothing there (in torch's C++ callbacks
    it would abort the process); Python's own handler gets it when the block ends: KeyboardInterrupt, there."""
    code = (
        "import os, signal\n"
        "from normbench.base.signals import deferred\n"
        "try:\n"
        "    with deferred():\n"
        "        os.kill(os.getpid(), signal.SIGINT)\n"
        "        import torch  # a second or two in which the signal is held\n"
        "        print('inside: nothing raised', flush=True)\n"
        "except KeyboardInterrupt:\n"
        "    print('after: KeyboardInterrupt', flush=True)\n"
        "with deferred():\n"
        "    pass\n"
        "print('no signal: nothing', flush=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["inside: nothing raised", "after: KeyboardInterrupt", "no signal: nothing"]


@pytest.mark.process
def test_a_ctrl_c_at_any_moment_of_start_up_says_interrupted_and_never_aborts(tmp_path) -> None:
    """Ctrl-C while torch imports (the command's imports, torch._dynamo at the first optimizer) or the run is set up:
    exit 130 with one line, never SIGABRT from a KeyboardInterrupt raised inside torch's C++ (it was, once in a
    suite run, 1 s after the start); the delays span the command's imports, Hydra and the run's set-up."""
    for i, delay in enumerate((0.8, 1.6, 2.4, 3.2)):
        proc = subprocess.Popen([EXE, "run", *SMALL, f"hydra.run.dir={tmp_path / str(i)}"], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode in (EXIT_INTERRUPTED, 0), (delay, proc.returncode, output)  # 0: done before it
        assert "Traceback" not in output and "terminate called" not in output, output
        if proc.returncode == EXIT_INTERRUPTED:
            assert "Interrupted" in output and "second Ctrl-C" not in output, output


@pytest.mark.process
def test_an_early_ctrl_c_or_one_while_workers_start_says_interrupted(tmp_path) -> None:
    sweep_dir = tmp_path / "sweep"
    sweep = Sweep(sweep_dir, "hydra/launcher=parallel")
    sweep.wait_for(lambda: MOMENTS["launch"](sweep_dir, sweep))  # the workers are starting
    sent = time.time_ns()
    os.killpg(sweep.proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole process group
    said, _ = _stopped_cleanly(sweep, sweep_dir, sent)
    assert "died" not in said and "out-of-memory" not in said

    proc = subprocess.Popen([EXE, "run", *SMALL, f"hydra.run.dir={tmp_path / 'run'}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    time.sleep(1)  # Python is still importing: no handler of normbench's is in place yet
    os.killpg(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED and "Traceback" not in output, output
    assert "Interrupted" in output
