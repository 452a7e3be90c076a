"""What TensorBoard shows of a sweep, asked of TensorBoard itself: a real `tensorboard` server on loopback reads an
event tree written through Board, or by a real sweep, and its HParams API answers. Run names come from the
config's own `hydra.sweep.subdir` resolver."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
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
from conftest import events, normbench, planned
from omegaconf import OmegaConf
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from normbench.base import commands
from normbench.launch.compose import compose_unchecked, name_runs_by_swept_keys, sweep_jobs
from normbench.launch.preflight import plan_sweep
from normbench.plan.naming import swept_keys
from normbench.plan.plan import SWEEP_PLAN_FILE, Launch, RunPlan, SweepPlan
from normbench.run import record as R
from normbench.run.board import (
    LAYOUT,
    NORM_OF_RUN,
    PALETTE,
    Board,
    act_tag,
    bn_tag,
    questions,
    run_experiment,
    shown_hparams,
    sweep_hparams,
    tensorboard_command,
    tensorboard_hint,
)


def _run_names(*overrides: str) -> list[str]:
    """Each run's directory name, resolved from the composed config exactly as Hydra resolves it in a job."""
    names = []
    for job in sweep_jobs(name_runs_by_swept_keys(list(overrides))):
        cfg = compose_unchecked(job, with_hydra=True)
        names.append(OmegaConf.select(cfg, "hydra.sweep.subdir"))
    return names


# A small grid's settings (no batch size: the grids give theirs).
SMALL = ["device=cpu", "data.train_size=64", "data.val_size=32", "epochs=1", "max_steps=2", "quiet=true",
         "eval.batch_size=32", "eval.precise_bn_images=16", "log.hist_points=2", "threads=1"]  # fmt: skip


def _plans(sweep_dir: Path, *grid: str) -> dict[str, RunPlan]:
    """The plans `normbench sweep` makes of a grid, written into `sweep_dir` as its pre-flight writes them."""
    args = [*SMALL, *grid, f"hydra.sweep.dir={sweep_dir}"]
    return plan_sweep(args, command=lambda d: f"normbench sweep {' '.join(grid)} hydra.sweep.dir={d}").plans


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> dict[str, RunPlan]:
    """The quick preset's 24 plans (8 cells × 3 seeds), nothing trained."""
    return _plans(tmp_path_factory.mktemp("quick") / "sweep", "sweep=quick")


def test_run_names_sort_by_norm_then_numeric_images_per_worker(quick) -> None:
    names = _run_names("batch_size=16,2", "norm=gn,bn", "epochs=1")
    assert sorted(names) == ["bn_b002", "bn_b016", "gn_b002", "gn_b016"]  # text order: 16 before 2 otherwise
    assert sorted(_run_names("norm=gn", "norm.groups=16,4", "seed=0,1", "batch_size=8")) == [
        "gn_b008_groups004_seed000", "gn_b008_groups004_seed001", "gn_b008_groups016_seed000",
        "gn_b008_groups016_seed001"]  # fmt: skip
    assert _run_names("norm=ln", "batch_size=4") == ["ln_b004"]  # a sweep of one run still gets a directory
    # A preset: images per worker (× workers), then the seed; its `cell` is not repeated; titles say the split.
    assert sorted(quick)[:6] == ["bn_b002x16_seed000", "bn_b002x16_seed001", "bn_b002x16_seed002",
                                 "bn_b004x08_seed000", "bn_b004x08_seed001", "bn_b004x08_seed002"]  # fmt: skip
    assert [n for n in sorted(quick) if n.endswith("seed000")][4:] == ["bn_b032_seed000", "gn_b032_seed000",
                                                                      "in_b032_seed000", "ln_b032_seed000"]  # fmt: skip
    assert quick["bn_b002x16_seed001"].title == "cnn / bn, batch 32 = 16 workers × 2 images"
    assert quick["gn_b032_seed000"].title == "cnn / gn, batch 32"


def test_bn_statistics_sit_side_by_side_and_diagnostics_sort_after_loss_and_accuracy() -> None:
    tags = sorted(bn_tag("stage2.norm", s, k) for s in ("mean", "var") for k in ("batch", "running", "gap"))
    assert tags[:3] == [f"watch/bn/stage2.norm/mean/{k}" for k in ("batch", "gap", "running")]
    layer = [act_tag("act", "stage2.norm", k) for k in ("out", "in_std", "in", "out_mean")]
    assert sorted(layer) == ["watch/act/stage2.norm/in", "watch/act/stage2.norm/in_std", "watch/act/stage2.norm/out",
                             "watch/act/stage2.norm/out_mean"]  # fmt: skip
    groups = {t.split("/")[0] for t in ["train/loss", "train/lr", "val/acc", *tags, *layer]}
    assert sorted(groups) == ["train", "val", "watch"]  # TensorBoard sorts groups by name: loss and accuracy first


# TensorBoard 2.x's Time Series, as its webapp does it (runs reducer and selectors): a run filter is
# `new RegExp(filter, "i").test(name)`; `runColorGroup=regex:R` groups runs by JSON.stringify of the capture groups of
# `name.match(new RegExp(R))`, numbers the groups in run order (runs listed by name) and colours group k with palette
# colour k mod 7; a run that does not match gets the grey "inactive" colour. `run`: a group per run.
COLOUR_GROUPS_JS = """
const [regex, names] = JSON.parse(require("fs").readFileSync(0, "utf8"));
const ids = new Map();
console.log(JSON.stringify(names.map((name) => {
  const found = name.match(new RegExp(regex));
  if (!found) return null;
  const key = found.length > 1 ? JSON.stringify(found.slice(1)) : "pseudo_group";
  if (!ids.has(key)) ids.set(key, ids.size);
  return ids.get(key) % 7;
})));
"""


def _colours(group_by: str, names: list[str]) -> dict[str, int | None]:
    """Each run's palette colour (None: grey) under `runColorGroup=group_by`, as TensorBoard computes it (above):
    in node, TensorBoard's own regex engine, where node is installed; else by Python's `re`, which reads these
    patterns alike."""
    names = sorted(names)
    if group_by == "run":
        return {n: i % PALETTE for i, n in enumerate(names)}
    regex = group_by.removeprefix("regex:")
    if shutil.which("node"):
        done = subprocess.run(["node", "-e", COLOUR_GROUPS_JS], input=json.dumps([regex, names]), text=True,
                              capture_output=True, timeout=60, check=True)  # fmt: skip
        return dict(zip(names, json.loads(done.stdout), strict=True))
    ids: dict[tuple, int] = {}
    found = {n: re.search(regex, n) for n in names}
    return {n: None if m is None else ids.setdefault(m.groups(), len(ids)) % PALETTE for n, m in found.items()}


def _links(text: str) -> dict[str, tuple[str, dict[str, list[str]]]]:
    """The printed links: {label: (words in brackets, the link's query)}."""
    found = re.findall(r"^  (.+?) \(([^)]*)\): (http\S+)$", text, re.MULTILINE)
    return {label: (words, parse_qs(urlsplit(url).query)) for label, words, url in found}


def _shown(query: dict[str, list[str]], names: list[str]) -> list[str]:
    """The runs TensorBoard's run filter shows."""
    pattern = query.get("runFilter", [""])[0]
    return sorted(n for n in names if re.search(pattern, n, re.IGNORECASE))


def _same_colour_same(query: dict[str, list[str]], shown: list[str], key) -> bool:
    """Whether, among the shown runs, two share a colour exactly when they share `key`, and none is grey."""
    colour = _colours(query["runColorGroup"][0], shown)
    return None not in colour.values() and all(
        (colour[a] == colour[b]) == (key(a) == key(b)) for a in shown for b in shown
    )


@pytest.mark.process
def test_printed_links_follow_what_a_preset_varies_a_colour_per_cell(quick) -> None:
    """The quick preset (total batch 32; BN at 2 … 32 images per worker; ln, in, gn at one worker; 3 seeds): every
    norm at 2 and at 32 images per worker (the one-worker norms standing in at both, as in the report), BN at every
    value; a cell's seeds share a colour and the cells of a link have colours of their own."""
    runs = {name: plan.hparams for name, plan in quick.items()}
    names = sorted(runs)
    text = tensorboard_hint(Path("multirun/x"), runs)
    links = _links(text)
    assert list(links) == ["loss and accuracy of every run", "every norm at 2 images per worker",
                           "every norm at 32 images per worker", "bn at every images-per-worker value",
                           "HParams"]  # fmt: skip
    seeds = ("seed000", "seed001", "seed002")
    cells = {
        "every norm at 2 images per worker": ["bn_b002x16", "gn_b032", "in_b032", "ln_b032"],
        "every norm at 32 images per worker": ["bn_b032", "gn_b032", "in_b032", "ln_b032"],
        "bn at every images-per-worker value": ["bn_b002x16", "bn_b004x08", "bn_b008x04", "bn_b016x02", "bn_b032"],
    }
    for label, wanted in cells.items():
        words, query = links[label]
        assert _shown(query, names) == sorted(f"{c}_{s}" for c in wanted for s in seeds), label
        assert words == "a colour per cell: its seeds share one"
        assert _same_colour_same(query, _shown(query, names), lambda n: n.rsplit("_", 1)[0]), label
    # Every run: 8 cells, more than TensorBoard's 7 colours, so a colour per norm (4).
    words, query = links["loss and accuracy of every run"]
    assert "runFilter" not in query and words == "a colour per norm"
    assert _same_colour_same(query, names, lambda n: runs[n]["norm"])
    tags = ["train/loss", "val/acc", "val/acc_precise_bn", "watch/act/stage1.norm/in", "train/lr",
            "watch/bn/stage1.norm/mean/batch"]  # fmt: skip
    assert all([t for t in tags if re.search(q["tagFilter"][0], t)] == tags[:3] for _, q in links.values() if q)


@pytest.mark.process
def test_printed_links_of_a_plain_grid_of_norms_and_batch_sizes(tmp_path) -> None:
    """`norm=bn,gn batch_size=4,32 seed=0,1`: one worker, so images per worker is the batch; each norm at each."""
    runs = {name: plan.hparams for name, plan in _plans(tmp_path / "s", "norm=bn,gn", "batch_size=4,32",
                                                          "seed=0,1").items()}  # fmt: skip
    names = sorted(runs)
    links = _links(tensorboard_hint(Path("multirun/x"), runs))
    shown = {label: _shown(query, names) for label, (_, query) in links.items() if query}
    assert shown == {
        "loss and accuracy of every run": names,
        "every norm at 4 images per worker": [n for n in names if "_b004_" in n],
        "every norm at 32 images per worker": [n for n in names if "_b032_" in n],
        "bn at every images-per-worker value": [n for n in names if n.startswith("bn_")],
        "gn at every images-per-worker value": [n for n in names if n.startswith("gn_")],
    }
    for label, (words, query) in links.items():
        if query:  # 4 cells: a colour per cell in every link
            assert words.startswith("a colour per cell") and _same_colour_same(
                query, shown[label], lambda n: n.rsplit("_", 1)[0]
            ), label
    # A grid of one images-per-worker value: its "every norm" link would be every run, so it is not printed.
    same = {n: {**h, "images_per_worker": 8, "batch_size": 8} for n, h in runs.items()}
    assert [label for label, _ in questions(same)] == []


def test_a_run_alone_and_names_that_do_not_tell_cells_apart(tmp_path) -> None:
    text = tensorboard_hint(Path("runs/y"))
    lines = text.splitlines()
    assert lines[0] == "Run directory: runs/y" and len(lines) == 3 and lines[2].startswith("  loss and accuracy: http")
    # A grid whose names hide its cells (two runs named alike but planned apart): a colour per norm, then per run.
    runs = {"bn_b004_seed000": {"norm": "bn", "images_per_worker": 4, "workers": 1, "batch_size": 4, "seed": 0,
                                "optim.lr": 0.1},
            "bn_b004_seed001": {"norm": "bn", "images_per_worker": 4, "workers": 1, "batch_size": 4, "seed": 1,
                                "optim.lr": 0.2}}  # fmt: skip
    words, query = _links(tensorboard_hint(Path("m"), runs))["loss and accuracy of every run"]
    assert words == "a colour per norm" and query["runColorGroup"] == [f"regex:{NORM_OF_RUN}"]


@pytest.mark.process
def test_the_printed_tensorboard_command_runs_where_normbench_was_started(tmp_path, monkeypatch) -> None:
    """Not `tensorboard` unless the shell finds the one installed with normbench: its whole path, else Python's
    module. The printed command runs with the environment not active."""
    here = Path(sys.executable).with_name("tensorboard")
    inactive = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != here.parent.resolve()
    )
    monkeypatch.setenv("PATH", inactive)
    monkeypatch.chdir(tmp_path)
    command = tensorboard_command()
    assert command == str(here)  # not below the working directory: its whole path
    done = subprocess.run(f"{command} --version_tb", shell=True, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": inactive})  # fmt: skip
    assert done.returncode == 0 and re.fullmatch(r"\d+\.\d+\S*", done.stdout.strip()), done.stdout + done.stderr
    monkeypatch.chdir(here.parents[2])
    assert tensorboard_command() == str(here)  # also below the working directory: pasted elsewhere, it still runs
    monkeypatch.setenv("PATH", f"{here.parent}{os.pathsep}{inactive}")
    assert tensorboard_command() == "tensorboard"  # the environment is active: its name alone
    monkeypatch.setattr(sys, "executable", str(tmp_path / "my python" / "python"))
    assert tensorboard_command() == f"'{tmp_path}/my python/python' -m tensorboard.main"
    assert commands.program("normbench", "normbench").endswith("python' -m normbench")


def test_custom_scalar_patterns_match_exactly_one_tag() -> None:
    tags = ["val/acc", "val/acc_running_stats", "val/acc_batch_stats", "val/acc_precise_bn", "val/loss", "train/acc",
            "train/loss", "train/loss_epoch"]  # fmt: skip
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


def _write_run(plan: RunPlan, status: str | None, value: float = 0.25) -> None:
    """What a run of a sweep writes to TensorBoard, without training: its experiment and HParams row (from its
    plan), every metric once at 64 examples seen, a histogram, and its end (none: still running, or died)."""
    experiment, first_event = run_experiment(plan)
    board = Board(plan.directory, first_event=first_event)
    board.start_session(plan.hparams, experiment)
    for tag in plan.metrics:
        board.scalar(tag, value, x=64)  # x: examples seen, the same for every batch size
    board.histogram("watch/act/stage1.norm/in", torch.randn(100), x=64)
    if status is not None:
        board.end_session(status)
    board.close()


def _displayed(experiment: dict) -> tuple[list[str], list[str]]:
    """The columns of HParams' table and parallel coordinates as TensorBoard's dashboard first shows them: it sorts
    hparams marked `differs` first (the API answers in that order) and ticks the first five, and the first five
    metrics."""
    hparams = experiment["hparamInfos"]
    assert hparams == sorted(hparams, key=lambda h: (not h.get("differs", False), h["name"]))
    return [h["name"] for h in hparams[:5]], [m["name"]["tag"] for m in experiment["metricInfos"][:5]]


def _drawn(groups: list[dict], hparams: list[str], metrics: list[str]) -> list[str]:
    """The session groups parallel coordinates draw: those with a value for every displayed column."""
    return sorted(g["name"] for g in groups
                  if set(hparams) <= set(g["hparams"]) and set(metrics) <= {m["name"]["tag"] for m in
                                                                            g["metricValues"]})  # fmt: skip


@pytest.mark.process
def test_hparams_show_the_split_and_every_run_with_its_status(tmp_path, tensorboard) -> None:
    statuses = {"bn_b002": R.COMPLETED, "bn_b016": R.DIVERGED, "gn_b002": R.INTERRUPTED, "gn_b016": None}
    plans = _plans(tmp_path, "norm=bn,gn", "batch_size=2,16")  # writes the sweep's plans, as its start does
    assert sorted(plans) == sorted(statuses)
    assert plans["bn_b002"].metrics[-2:] == ("val/acc_batch_stats", "val/acc_precise_bn")
    assert len(plans["gn_b002"].metrics) == 4
    for name, status in reversed(statuses.items()):  # started in reverse name order
        _write_run(plans[name], status)
    resumed = Board(tmp_path / "gn_b002", resumed_at=64)  # the interrupted run resumed, then completed
    resumed.start_session(plans["gn_b002"].hparams, run_experiment(plans["gn_b002"])[0])
    resumed.end_session(R.COMPLETED)
    resumed.close()

    post = tensorboard(tmp_path)
    experiment, infos = _experiment(post)
    assert infos["norm"]["differs"] and infos["norm"]["domainDiscrete"] == ["bn", "gn"]
    assert infos["batch_size"]["differs"] and infos["batch_size"]["domainDiscrete"] == [2, 16]
    assert infos["workers"]["differs"] and infos["workers"]["domainDiscrete"] == [1]  # shown, though one value
    assert infos["lr"]["differs"]  # scaled with the batch (optim.lr_scaling=linear): the fifth column
    assert not infos["model"]["differs"] and not infos["seed"]["differs"]
    # TensorBoard's parallel coordinates show the first five metrics and drop a run that lacks one: only the
    # metrics every run has, so the BN-only ones are not among them.
    hparams, metrics = _displayed(experiment)
    assert hparams == ["batch_size", "images_per_worker", "lr", "norm", "workers"]
    assert metrics == ["val/acc", "val/loss", "train/acc", "train/loss_epoch"]
    assert post("/data/runs", None) == sorted(statuses)  # name order, though started in reverse; no "." run

    groups = _session_groups(post, 4)
    assert _drawn(groups, hparams, metrics) == sorted(statuses)
    sessions = {s["name"]: s for g in groups for s in g["sessions"]}
    assert {n: s["status"] for n, s in sessions.items()} == {
        "bn_b002": "STATUS_SUCCESS", "bn_b016": "STATUS_FAILURE", "gn_b002": "STATUS_SUCCESS",
        "gn_b016": "STATUS_UNKNOWN"}  # fmt: skip
    values = {g["name"]: (g["hparams"]["norm"], g["hparams"]["batch_size"]) for g in groups}
    assert values == {"bn_b002": ("bn", 2), "bn_b016": ("bn", 16), "gn_b002": ("gn", 2), "gn_b016": ("gn", 16)}
    metric = sessions["gn_b016"]["metricValues"][0]
    assert (metric["name"]["tag"], metric["value"], metric["trainingStep"]) == ("val/acc", 0.25, 64)


@pytest.mark.process
def test_a_presets_parallel_coordinates_draw_every_run_by_norm_and_split(quick, tensorboard) -> None:
    """The quick preset's 24 runs (the total batch never varies; its `cell` says again what norm and workers say):
    HParams shows norm, images per worker, workers, total batch and seed, and draws every run."""
    sweep_dir = next(iter(quick.values())).sweep_dir
    for i, plan in enumerate(quick.values()):
        _write_run(plan, R.COMPLETED, value=i / 100)
    post = tensorboard(sweep_dir)
    experiment, infos = _experiment(post)
    hparams, metrics = _displayed(experiment)
    assert hparams == ["batch_size", "images_per_worker", "norm", "seed", "workers"]
    assert infos["batch_size"]["domainDiscrete"] == [32] and infos["images_per_worker"]["domainDiscrete"] == [
        2, 4, 8, 16, 32]  # fmt: skip
    assert infos["workers"]["domainDiscrete"] == [1, 2, 4, 8, 16] and infos["seed"]["domainDiscrete"] == [0, 1, 2]
    assert not infos["cell"]["differs"] and len(infos["cell"]["domainDiscrete"]) == 8  # there, not shown
    assert metrics == ["val/acc", "val/loss", "train/acc", "train/loss_epoch"]
    groups = _session_groups(post, 24)
    assert _drawn(groups, hparams, metrics) == sorted(quick)
    by_name = {g["name"]: g["hparams"] for g in groups}
    assert by_name["bn_b002x16_seed001"] | {"lr": 0.02} == {
        "norm": "bn", "images_per_worker": 2, "workers": 16, "batch_size": 32, "lr": 0.02, "model": "cnn",
        "data": "synthetic", "image": "3×32×32", "classes": 10, "seed": 1, "cell": "bn_w16"}  # fmt: skip
    assert sweep_hparams(sweep_dir) == {name: plan.hparams for name, plan in sorted(quick.items())}


def test_the_columns_shown_are_the_split_then_what_the_sweep_varies() -> None:
    row = {"norm": "bn", "images_per_worker": 8, "workers": 1, "batch_size": 8, "lr": 0.1, "model": "cnn",
           "data": "synthetic", "seed": 0}  # fmt: skip
    grid = [row | {"batch_size": b, "images_per_worker": b, "lr": 0.1 * b / 8, "seed": s} for b in (8, 32)
            for s in (0, 1)]  # fmt: skip
    assert shown_hparams(grid) == ["norm", "images_per_worker", "workers", "batch_size", "seed"]  # lr follows b
    swept = [r | {"optim.lr": lr} for r in grid for lr in (0.05, 0.1)]
    assert shown_hparams(swept) == ["norm", "images_per_worker", "workers", "batch_size", "seed"]  # five at most
    assert shown_hparams([row | {"optim.lr": 0.05}], domains=False)[-1] == "optim.lr"  # a study's key


@pytest.mark.process
def test_a_sweep_of_one_run_gets_its_directory_experiment_and_command(tmp_path) -> None:
    sweep_dir = tmp_path / "sweep"
    done = normbench("sweep", "norm=choice(gn)", "batch_size=8", "max_steps=1", "epochs=1", "data.train_size=16",
                     "data.val_size=8", "log.activations=false", "quiet=true", f"hydra.sweep.dir={sweep_dir}",
                     cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (sweep_dir / "gn_b008" / "results.json").exists()
    printed = re.search(rf"TensorBoard: (\S+) --logdir {re.escape(str(sweep_dir))}\n", done.stdout)
    assert printed and Path(printed.group(1)).name == "tensorboard", done.stdout
    assert not list(sweep_dir.glob("events.out.tfevents.*"))  # no "." run in TensorBoard
    assert (sweep_dir / SWEEP_PLAN_FILE).exists()
    assert "_hparams_/experiment" in events(sweep_dir / "gn_b008").PluginTagToContent("hparams")
    assert swept_keys(["norm=gn", "batch_size=8", "hydra.x=1", "seed=1"], ["seed"]) == ["norm", "batch_size"]


@pytest.mark.process
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
    assert "  every norm at 4 images per worker (a colour per cell: its seeds share one): http" in done.stdout
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
    hparams, metrics = _displayed(experiment)
    assert hparams == ["batch_size", "images_per_worker", "lr", "norm", "workers"] and len(metrics) == 4
    assert infos["norm"]["domainDiscrete"] == ["bn", "gn"] and infos["batch_size"]["domainDiscrete"] == [4, 8]
    groups = _session_groups(post, 4)
    assert _drawn(groups, hparams, metrics) == names  # the metrics gn has too: all four runs drawn
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
    alone = planned(tmp_path / "0", "norm=gn")
    trial = dataclasses.replace(alone, launch=Launch("basic", sweep_dir=str(tmp_path)), name="0",
                                hparams={**alone.hparams, "optim.lr": 0.05})  # fmt: skip
    summary, first_event = run_experiment(trial)
    experiment = HParamsPluginData.FromString(summary.value[0].metadata.plugin_data.content).experiment
    assert first_event is None and [m.name.tag for m in experiment.metric_infos] == list(trial.metrics)
    assert not any(i.HasField("domain_discrete") for i in experiment.hparam_infos)
    assert [i.name for i in experiment.hparam_infos if i.differs] == ["norm", "images_per_worker", "workers",
                                                                      "batch_size", "optim.lr"]  # fmt: skip
    summary, first_event = run_experiment(alone)
    experiment = HParamsPluginData.FromString(summary.value[0].metadata.plugin_data.content).experiment
    assert first_event is None and all(i.HasField("domain_discrete") for i in experiment.hparam_infos)
    assert SweepPlan.read(tmp_path) is None


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


def test_a_failed_event_write_is_raised_by_the_run_and_not_printed_by_the_writer_thread(tmp_path, monkeypatch) -> None:
    """A full disk during a TensorBoard write: the run's own write or flush raises the OSError (normbench's one
    paragraph); the writer thread, which re-raises it too, leaves it unprinted (issue: ENOSPC)."""
    import errno
    import threading

    from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread
    from tensorboard.summary.writer.record_writer import RecordWriter

    def full(self: RecordWriter, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    printed: list[BaseException | None] = []
    monkeypatch.setattr(RecordWriter, "write", full)
    monkeypatch.setattr(threading, "excepthook", lambda args: printed.append(args.exc_value))
    with pytest.raises(OSError, match="No space left on device"):
        board = Board(tmp_path)
        board.scalar("train/loss", 1.0, 8)
        board.flush()
    for thread in threading.enumerate():
        if isinstance(thread, _AsyncWriterThread):
            thread.join(timeout=10)
    assert printed == []
