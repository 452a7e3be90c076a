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
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from normbench.launch.compose import compose_unchecked, name_runs_by_swept_keys, sweep_jobs
from normbench.launch.naming import swept_keys
from normbench.run import record as R
from normbench.run.board import (
    EXPERIMENT_FILE,
    LAYOUT,
    Board,
    SweepExperiment,
    act_tag,
    bn_tag,
    run_experiment,
    run_hparams,
    run_metrics,
    tensorboard_hint,
)


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


def test_bn_statistics_sit_side_by_side_and_diagnostics_sort_after_loss_and_accuracy() -> None:
    tags = sorted(bn_tag("stage2.norm", s, k) for s in ("mean", "var") for k in ("batch", "running", "gap"))
    assert tags[:3] == [f"watch/bn/stage2.norm/mean/{k}" for k in ("batch", "gap", "running")]
    layer = [act_tag("act", "stage2.norm", k) for k in ("out", "in_std", "in", "out_mean")]
    assert sorted(layer) == ["watch/act/stage2.norm/in", "watch/act/stage2.norm/in_std", "watch/act/stage2.norm/out",
                             "watch/act/stage2.norm/out_mean"]  # fmt: skip
    groups = {t.split("/")[0] for t in ["train/loss", "train/lr", "val/acc", *tags, *layer]}
    assert sorted(groups) == ["train", "val", "watch"]  # TensorBoard sorts groups by name: loss and accuracy first


def test_printed_links_filter_loss_and_accuracy_and_one_norm_or_batch_size() -> None:
    runs = ["bn_b002", "bn_b016", "gn_b002", "gn_b016", "gn_b002_seed001"]
    text = tensorboard_hint(Path("multirun/x"), runs)
    assert "tensorboard --logdir multirun/x" in text and "Sweep directory: multirun/x" in text
    queries = [parse_qs(urlsplit(word).query) for word in text.split() if word.endswith("#timeseries")]
    tags = ["train/loss", "val/acc", "val/acc_precise_bn", "watch/act/stage1.norm/in", "train/lr",
            "watch/bn/stage1.norm/mean/batch"]  # fmt: skip
    assert all([t for t in tags if re.search(q["tagFilter"][0], t)] == tags[:3] for q in queries)
    # Every run: a colour each. The norms at one batch size: a colour per norm (its seeds share it).
    assert "runFilter" not in queries[0] and queries[0]["runColorGroup"] == ["run"]
    assert [r for r in runs if re.search(queries[1]["runFilter"][0], r)] == ["bn_b002", "gn_b002", "gn_b002_seed001"]
    colour = re.compile(queries[1]["runColorGroup"][0].removeprefix("regex:"))
    assert {r: colour.match(r).group(1) for r in runs}["gn_b002_seed001"] == "gn"
    # One norm at every batch size: a colour per run, so each batch size is its own line.
    assert [r for r in runs if re.search(queries[2]["runFilter"][0], r)] == ["bn_b002", "bn_b016"]
    assert queries[2]["runColorGroup"] == ["run"]
    assert "every norm at b002" in text and "bn at every batch size" in text
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

        def post(path: str, body: dict | None) -> dict:
            """POST `body` to `path`; GET it when `body` is None."""
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}{path}",
                data=None if body is None else json.dumps(body).encode(),
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
    runs, metrics = {}, {}
    for name in statuses:
        norm, batch = name.split("_b")
        cfg = tiny(f"norm={norm}", f"batch_size={int(batch)}")
        runs[name], metrics[name] = run_hparams(cfg, 0.1 * int(batch) / 128), run_metrics(cfg)
    assert metrics["bn_b002"][-2:] == ["val/acc_batch_stats", "val/acc_precise_bn"] and len(metrics["gn_b002"]) == 4
    SweepExperiment(time.time(), runs, metrics).write(tmp_path)  # as the sweep's callback does at its start
    for name, status in reversed(statuses.items()):  # started in reverse name order
        experiment, first_event = run_experiment(runs[name], metrics[name], tmp_path / name, tmp_path)
        board = Board(tmp_path / name, first_event=first_event)
        board.start_session(runs[name], experiment)
        for tag in metrics[name]:
            board.scalar(tag, 0.25, x=64)  # x: examples seen, the same for every batch size
        board.histogram("watch/act/stage1.norm/in", torch.randn(100), x=64)
        if status is not None:  # gn_b016 is still running (or died without a word)
            board.end_session(status)
        board.close()
    resumed = Board(tmp_path / "gn_b002", resumed_at=64)  # the interrupted run resumed, then completed
    resumed.start_session(runs["gn_b002"], run_experiment(runs["gn_b002"], metrics["gn_b002"], tmp_path / "gn_b002",
                                                          tmp_path)[0])  # fmt: skip
    resumed.end_session(R.COMPLETED)
    resumed.close()

    post = tensorboard(tmp_path)
    experiment, infos = _experiment(post)
    assert infos["norm"]["differs"] and infos["norm"]["domainDiscrete"] == ["bn", "gn"]
    assert infos["batch_size"]["differs"] and infos["batch_size"]["domainDiscrete"] == [2, 16]
    assert infos["lr"]["differs"] and not infos["model"]["differs"] and not infos["seed"]["differs"]
    # TensorBoard's parallel coordinates show the first five metrics and drop a run that lacks one: only the
    # metrics every run has, so the BN-only ones are not among them.
    assert [m["name"]["tag"] for m in experiment["metricInfos"]] == ["val/acc", "val/loss", "train/acc",
                                                                     "train/loss_epoch"]  # fmt: skip
    assert post("/data/runs", None) == sorted(statuses)  # name order, though started in reverse; no "." run

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
    assert not list(sweep_dir.glob("events.out.tfevents.*"))  # no "." run in TensorBoard
    assert (sweep_dir / EXPERIMENT_FILE).exists()
    assert "_hparams_/experiment" in events(sweep_dir / "gn_b008").PluginTagToContent("hparams")
    assert swept_keys(["norm=gn", "batch_size=8", "hydra.x=1", "seed=1"], ["seed"]) == ["norm", "batch_size"]


def test_a_real_sweep_lines_up_its_batch_sizes_and_shows_norm_and_batch_size(tmp_path, tensorboard) -> None:
    """2 norms × 2 batch sizes, one epoch of 32 examples: 8 steps at batch 4, 4 at batch 8, the same 32 examples.
    Histograms at 4 points: after 8, 16, 24 and 32 examples at both batch sizes (and at each one's first step)."""
    sweep_dir = tmp_path / "sweep"
    done = normbench("sweep", "norm=bn,gn", "batch_size=4,8", "epochs=1", "data.train_size=32", "data.val_size=16",
                     "eval.precise_bn_images=16", "log.hist_points=4", "threads=1", "quiet=true",
                     f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    names = ["bn_b004", "bn_b008", "gn_b004", "gn_b008"]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) == names
    lines = done.stdout.splitlines()  # each job's lines start with its run's name; no live bar
    assert any(line.startswith("bn_b004 | epoch 1/1  step 8  train loss") for line in lines)
    assert any(line.startswith("bn_b004 | BN evaluations") for line in lines)
    assert any(line.startswith("gn_b008 | done") and line.endswith("4/4 runs of the sweep ended") for line in lines)
    for name in names:
        ea = events(sweep_dir / name)
        assert ea.Scalars("val/acc")[-1].step == 32  # examples seen, whatever the batch size
        batch = int(name[-3:])
        assert [e.step for e in ea.Scalars("train/loss")] == list(range(batch, 33, batch))
        for tag in ("watch/act/stage1.norm/in", "watch/act/stage3.norm/out"):
            x = [h.step for h in ea.Histograms(tag)]
            assert x == sorted({batch, 8, 16, 24, 32})  # the first step, then 1/4 ... 4/4 of the run: the last step
        assert json.loads((sweep_dir / name / "results.json").read_text())["steps"] == 32 // batch

    post = tensorboard(sweep_dir)
    experiment, infos = _experiment(post)
    assert post("/data/runs", None) == names  # no "." run; name order in every tab
    assert len(experiment["metricInfos"]) == 4  # the metrics gn has too: all four runs in parallel coordinates
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


def test_a_run_of_a_sweep_without_a_grid_writes_its_experiment_without_domains(tmp_path) -> None:
    """An optimizing sweeper's runs are not known up front: each run's experiment names its hparams and metrics
    but no domains (TensorBoard would hide the runs outside a domain) and no place in the run lists."""
    hparams = {"norm": "gn", "batch_size": 8, "lr": 0.05}
    summary, first_event = run_experiment(hparams, ["val/acc"], tmp_path / "0", tmp_path)
    experiment = HParamsPluginData.FromString(summary.value[0].metadata.plugin_data.content).experiment
    assert first_event is None and [m.name.tag for m in experiment.metric_infos] == ["val/acc"]
    assert all(i.differs and not i.HasField("domain_discrete") for i in experiment.hparam_infos)
    alone, first_event = run_experiment(hparams, ["val/acc"], tmp_path / "0", None)
    experiment = HParamsPluginData.FromString(alone.value[0].metadata.plugin_data.content).experiment
    assert first_event is None and not any(i.differs for i in experiment.hparam_infos)


def test_the_order_marker_dates_a_new_run_only(tmp_path) -> None:
    """TensorBoard's run start (its first event) is the marker's time; a run that already has events (resumed)
    gets no marker, so its start stays what it was."""
    board = Board(tmp_path / "new", first_event=1000.5)
    board.scalar("val/acc", 0.5, x=8)
    board.close()
    ea = events(tmp_path / "new")
    assert ea.FirstEventTimestamp() == 1000.5 and [e.step for e in ea.Scalars("val/acc")] == [8]
    Board(tmp_path / "new", resumed_at=1, first_event=2000.0).close()
    assert len(list((tmp_path / "new").glob("events.0.tfevents.*"))) == 1
    assert events(tmp_path / "new").FirstEventTimestamp() == 1000.5
