"""What TensorBoard shows of a sweep, asked of TensorBoard itself: a real `tensorboard` server on loopback reads an
event tree written through Board, or by a real sweep, and its HParams API answers. Run names come from the
config's own `hydra.sweep.subdir` resolver."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import torch
from conftest import events, normbench
from omegaconf import OmegaConf

from normbench.launch.compose import compose_unchecked, name_runs_by_swept_keys, sweep_jobs
from normbench.launch.naming import swept_keys
from normbench.run import record as R
from normbench.run.board import LAYOUT, Board, bn_tag, run_hparams, tensorboard_hint, write_experiment


def _run_names(*overrides: str) -> list[str]:
    """Each run's directory name, resolved from the composed config exactly as Hydra resolves it in a job."""
    names = []
    for job in sweep_jobs(name_runs_by_swept_keys(list(overrides))):
        cfg = compose_unchecked(job, with_hydra=True)
        names.append(OmegaConf.select(cfg, "hydra.sweep.subdir"))
    return names


def test_run_names_sort_by_norm_then_numeric_batch_size() -> None:
    names = _run_names("batch_size=16,2", "norm=gn,bn", "epochs=1")
    assert sorted(names) == ["bn_b002", "bn_b016", "gn_b002", "gn_b016"]  # text order: 16 before 2 otherwise
    assert sorted(_run_names("norm=gn", "norm.groups=16,4", "seed=0,1", "batch_size=8")) == [
        "gn_b008_groups004_seed000", "gn_b008_groups004_seed001", "gn_b008_groups016_seed000",
        "gn_b008_groups016_seed001"]  # fmt: skip
    assert _run_names("norm=ln", "batch_size=4") == ["ln_b004"]  # a sweep of one run still gets a directory


def test_bn_statistics_sit_side_by_side() -> None:
    tags = sorted(bn_tag("stage2.norm", s, k) for s in ("mean", "var") for k in ("batch", "running", "gap"))
    assert tags[:3] == ["bn/stage2.norm/mean/batch", "bn/stage2.norm/mean/gap", "bn/stage2.norm/mean/running"]


def test_printed_links_filter_loss_and_accuracy_and_one_norm_or_batch_size() -> None:
    runs = ["bn_b002", "bn_b016", "gn_b002", "gn_b016", "gn_b002_seed001"]
    text = tensorboard_hint(Path("multirun/x"), runs)
    assert "tensorboard --logdir multirun/x" in text and "Sweep directory: multirun/x" in text
    queries = [parse_qs(urlsplit(word).query) for word in text.split() if word.startswith("http://")]
    tags = ["train/loss", "val/acc", "val/acc_precise_bn", "act/stage1.norm/pre", "bn/stage1.norm/mean/batch", "lr"]
    assert [t for t in tags if re.search(queries[0]["tagFilter"][0], t)] == [
        "train/loss",
        "val/acc",
        "val/acc_precise_bn",
    ]
    assert [r for r in runs if re.search(queries[1]["runFilter"][0], r)] == ["bn_b002", "bn_b016"]
    assert [r for r in runs if re.search(queries[2]["runFilter"][0], r)] == ["bn_b002", "gn_b002", "gn_b002_seed001"]
    assert "Run directory: runs/y" in tensorboard_hint(Path("runs/y"))


def test_custom_scalar_patterns_match_exactly_one_tag() -> None:
    tags = ["val/acc", "val/acc_batch_stats", "val/acc_precise_bn", "val/loss", "train/acc", "train/loss",
            "train/loss_epoch"]  # fmt: skip
    patterns = [p for charts in LAYOUT.values() for _, (_, ps) in charts.items() for p in ps]
    assert all(len([t for t in tags if re.search(p, t)]) == 1 for p in patterns)


@pytest.fixture
def tensorboard() -> Iterator[callable]:
    """Start `tensorboard` on 127.0.0.1 for a log directory; stopped at the end of the test."""
    servers: list[subprocess.Popen] = []

    def start(logdir: Path) -> callable:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        exe = Path(sys.executable).with_name("tensorboard")
        command = [str(exe), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port), "--load_fast=false"]
        servers.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        def post(path: str, body: dict) -> dict:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}{path}",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read())

        return post

    yield start
    for server in servers:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def _until(ask: callable, ready: callable, seconds: float = 90) -> dict:
    """Ask until the answer is ready (TensorBoard loads event files in the background), for a bounded time."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            answer = ask()
            if ready(answer):
                return answer
        except OSError as error:  # not listening yet
            answer = error
        if time.monotonic() > deadline:
            raise AssertionError(f"TensorBoard did not answer as expected within {seconds} s: {answer}")
        time.sleep(0.5)


def _experiment(post: callable) -> tuple[dict, dict]:
    """TensorBoard's HParams experiment once it lists hyperparameters, and those by name."""
    experiment = _until(lambda: post("/data/plugin/hparams/experiment", {"experimentName": ""}),
                        lambda e: e.get("hparamInfos"))  # fmt: skip
    return experiment, {h["name"]: h for h in experiment["hparamInfos"]}


def _session_groups(post: callable, count: int) -> list[dict]:
    """HParams' table rows, every status allowed, once TensorBoard has loaded `count` of them."""
    request = {"experimentName": "", "startIndex": 0, "sliceSize": 100, "colParams": [],
               "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]}  # fmt: skip
    return _until(lambda: post("/data/plugin/hparams/session_groups", request),
                  lambda g: len(g.get("sessionGroups", [])) == count)["sessionGroups"]  # fmt: skip


def test_hparams_show_the_swept_keys_and_every_run_with_its_status(tiny, tmp_path, tensorboard) -> None:
    statuses = {"bn_b002": R.COMPLETED, "bn_b016": R.DIVERGED, "gn_b002": R.INTERRUPTED, "gn_b016": None}
    runs = {}
    for name in statuses:
        norm, batch = name.split("_b")
        runs[name] = run_hparams(tiny(f"norm={norm}", f"batch_size={int(batch)}"), 0.1 * int(batch) / 128)
    write_experiment(tmp_path, list(runs.values()))  # as the sweep's callback does at the root
    for name, status in statuses.items():
        board = Board(tmp_path / name)
        board.start_session(runs[name])
        board.scalar("val/acc", 0.25, x=64)  # x: examples seen, the same for every batch size
        board.histogram("act/stage1.norm/pre", torch.randn(100), x=64)
        if status is not None:  # gn_b016 is still running (or died without a word)
            board.end_session(status)
        board.close()
    resumed = Board(tmp_path / "gn_b002", resumed_at=64)  # the interrupted run resumed, then completed
    resumed.start_session(runs["gn_b002"])
    resumed.end_session(R.COMPLETED)
    resumed.close()

    post = tensorboard(tmp_path)
    experiment, infos = _experiment(post)
    assert infos["norm"]["differs"] and infos["norm"]["domainDiscrete"] == ["bn", "gn"]
    assert infos["batch_size"]["differs"] and infos["batch_size"]["domainDiscrete"] == [2, 16]
    assert infos["lr"]["differs"] and not infos["model"]["differs"] and not infos["seed"]["differs"]
    assert [m["name"]["tag"] for m in experiment["metricInfos"]][:2] == ["val/acc", "val/loss"]

    groups = _session_groups(post, 4)
    sessions = {s["name"]: s for g in groups for s in g["sessions"]}
    assert {n: s["status"] for n, s in sessions.items()} == {
        "bn_b002": "STATUS_SUCCESS", "bn_b016": "STATUS_FAILURE", "gn_b002": "STATUS_SUCCESS",
        "gn_b016": "STATUS_UNKNOWN"}  # fmt: skip
    values = {g["name"]: (g["hparams"]["norm"], g["hparams"]["batch_size"]) for g in groups}
    assert values == {"bn_b002": ("bn", 2), "bn_b016": ("bn", 16), "gn_b002": ("gn", 2), "gn_b016": ("gn", 16)}
    metric = sessions["gn_b016"]["metricValues"][0]
    assert (metric["name"]["tag"], metric["value"], metric["trainingStep"]) == ("val/acc", 0.25, 64)


def test_a_sweep_of_one_run_gets_its_directory_experiment_and_command(tmp_path) -> None:
    sweep_dir = tmp_path / "sweep"
    done = normbench("sweep", "norm=choice(gn)", "batch_size=8", "max_steps=1", "epochs=1", "data.train_size=16",
                     "data.val_size=8", "log.activations=false", "quiet=true", f"hydra.sweep.dir={sweep_dir}",
                     cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (sweep_dir / "gn_b008" / "results.json").exists()
    assert f"tensorboard --logdir {sweep_dir}" in " ".join(done.stdout.split())
    content = events(sweep_dir).PluginTagToContent("hparams")  # the root: the experiment only
    assert list(content) == ["_hparams_/experiment"]
    assert swept_keys(["norm=gn", "batch_size=8", "hydra.x=1", "seed=1"], ["seed"]) == ["norm", "batch_size"]


def test_a_real_sweep_lines_up_its_batch_sizes_and_shows_norm_and_batch_size(tmp_path, tensorboard) -> None:
    """2 norms × 2 batch sizes, one epoch of 32 examples: 8 steps at batch 4, 4 at batch 8, the same 32 examples."""
    sweep_dir = tmp_path / "sweep"
    done = normbench("sweep", "norm=bn,gn", "batch_size=4,8", "epochs=1", "data.train_size=32", "data.val_size=16",
                     "eval.precise_bn_images=16", "log.hist_every_images=800", "threads=1", "quiet=true",
                     f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    names = ["bn_b004", "bn_b008", "gn_b004", "gn_b008"]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) == names
    for name in names:
        ea = events(sweep_dir / name)
        assert ea.Scalars("val/acc")[-1].step == 32  # examples seen, whatever the batch size
        batch = int(name[-3:])
        assert [e.step for e in ea.Scalars("train/loss")] == list(range(batch, 33, batch))
        assert [h.step for h in ea.Histograms("act/stage1.norm/pre")] == [batch]  # the first step, x = B
        assert json.loads((sweep_dir / name / "results.json").read_text())["steps"] == 32 // batch

    post = tensorboard(sweep_dir)
    _, infos = _experiment(post)
    assert infos["norm"]["differs"] and infos["norm"]["domainDiscrete"] == ["bn", "gn"]
    assert infos["batch_size"]["differs"] and infos["batch_size"]["domainDiscrete"] == [4, 8]
    groups = _session_groups(post, 4)
    sessions = {s["name"]: s for g in groups for s in g["sessions"]}
    assert sorted(sessions) == names and {s["status"] for s in sessions.values()} == {"STATUS_SUCCESS"}
    assert {g["name"]: (g["hparams"]["norm"], g["hparams"]["batch_size"]) for g in groups} == {
        "bn_b004": ("bn", 4), "bn_b008": ("bn", 8), "gn_b004": ("gn", 4), "gn_b008": ("gn", 8)}  # fmt: skip
    val_acc = {
        s["name"]: next(m for m in s["metricValues"] if m["name"]["tag"] == "val/acc") for s in sessions.values()
    }
    assert {n: m["trainingStep"] for n, m in val_acc.items()} == dict.fromkeys(names, 32)
