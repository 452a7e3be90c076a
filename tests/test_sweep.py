"""Sweeps through Hydra's multirun with its launcher plugins, reruns that skip finished runs, failures that
stay local to their run, and the report's numbers against the runs' own records."""

from __future__ import annotations

import copy
import csv
import json
import os

import pytest
import yaml
from conftest import ROOT, events, normbench, planned, saved_model_scores, train
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from typer.testing import CliRunner

from normbench.base.errors import EXIT_SWEEP_INCOMPLETE
from normbench.cli import app
from normbench.launch.compose import compose_unchecked
from normbench.run.record import RunRecord
from normbench.run.report import summarize

GRID = ["norm=bn,gn", "batch_size=4,8", "max_steps=3", "epochs=1", "data.train_size=64", "data.val_size=32",
        "eval.precise_bn_images=16", "quiet=true"]  # fmt: skip
RUNS = {"bn_b004", "gn_b004", "bn_b008", "gn_b008"}


def _records(sweep_dir):
    return {d.name: RunRecord.read(d) for d in sweep_dir.iterdir() if (d / "results.json").exists()}


@pytest.mark.process
def test_joblib_sweep_summary_report_and_rerun(tmp_path) -> None:
    sweep_dir = tmp_path / "sweep"
    first = normbench("sweep", *GRID, "hydra/launcher=parallel", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Sweeping 4 runs." in first.stdout and "Joblib.Parallel" in first.stdout + first.stderr
    records = _records(sweep_dir)
    assert set(records) == RUNS  # one directory per run, named by what varies
    content = events(sweep_dir / "bn_b004").PluginTagToContent("hparams")  # the grid's HParams experiment, in a run
    infos = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment.hparam_infos
    # Shown by default: the split (norm, images per worker, workers, total batch), then what the sweep varies.
    assert {i.name for i in infos if i.differs} == {"norm", "batch_size", "images_per_worker", "workers", "lr"}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()  # macOS: no affinity
    assert all(
        r.status == "completed" and r.threads == max(1, cores // 2) for r in records.values()
    )  # the cores this process may use / 2 jobs

    with (sweep_dir / "summary.csv").open() as f:
        rows = {row["run"]: row for row in csv.DictReader(f)}
    assert set(rows) == RUNS
    for name in records:  # each row against its own run's saved model, scored here
        assert float(rows[name]["val_acc"]) == pytest.approx(saved_model_scores(sweep_dir / name)["acc"], abs=1e-9)
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert len(summary["groups"]) == 4 and all(g["completed"] == 1 for g in summary["groups"])

    report = normbench("report", str(sweep_dir), cwd=tmp_path)
    assert report.returncode == 0, report.stdout + report.stderr
    for name in ("error_vs_batch.png", "curves.png"):
        assert (sweep_dir / name).stat().st_size > 10_000
    assert (sweep_dir / "error_vs_batch.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (sweep_dir / "report.md").read_text()
    bn4 = 100 * (1 - records["bn_b004"].metrics.val_acc)
    assert (
        f"| bn | {bn4:.1f} " in markdown
    )  # then " |", or the run's flag: 3 steps may not learn and "![error_vs_batch](error_vs_batch.png)" in markdown

    stamps = {n: (sweep_dir / n / "results.json").stat().st_mtime_ns for n in RUNS}
    again = normbench("sweep", *GRID, "hydra/launcher=parallel", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("| skipped: already completed") == 4
    assert stamps == {n: (sweep_dir / n / "results.json").stat().st_mtime_ns for n in RUNS}


@pytest.mark.process
def test_a_failing_run_is_recorded_and_the_others_complete(tmp_path) -> None:
    sweep_dir = tmp_path / "sweep"
    broken = sweep_dir / "gn_b004"
    broken.mkdir(parents=True)
    (broken / "checkpoint.pt").write_bytes(b"this is no checkpoint")  # its resume will fail
    done = normbench("sweep", *GRID, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)  # the basic launcher
    assert done.returncode == EXIT_SWEEP_INCOMPLETE, done.stdout + done.stderr
    records = _records(sweep_dir)
    failed = records.pop("gn_b004")
    assert failed.status == "failed" and "checkpoint.pt cannot be loaded" in failed.reason
    assert [r.status for r in records.values()] == ["completed"] * 3
    summary = summarize(sweep_dir)
    assert {r["run"]: r["status"] for r in summary["runs"]}["gn_b004"] == "failed"
    assert "failed" in done.stdout

    (broken / "checkpoint.pt").unlink()  # mended: the rerun redoes only that run
    again = normbench("sweep", *GRID, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)
    assert again.stdout.count("| skipped: already completed") == 3 and again.returncode == 0
    assert all(r.status == "completed" for r in _records(sweep_dir).values())


@pytest.mark.process
def test_seeds_are_aggregated_not_separate_settings(tmp_path) -> None:
    sweep_dir = tmp_path / "sweep"
    done = normbench("sweep", "norm=gn", "batch_size=8", "seed=0,1,2", *GRID[2:], f"hydra.sweep.dir={sweep_dir}",
                     cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = summarize(sweep_dir)
    (group,) = summary["groups"]
    errors = [1 - r.metrics.val_acc for r in _records(sweep_dir).values()]
    assert group["completed"] == 3 and group["seeds"] == [0, 1, 2]
    assert sorted(_records(sweep_dir)) == ["gn_b008_seed000", "gn_b008_seed001", "gn_b008_seed002"]
    assert group["val_err_mean"] == pytest.approx(sum(errors) / 3, abs=1e-12)


@pytest.mark.process
def test_submitit_launcher_runs_jobs_through_its_local_executor(tmp_path) -> None:
    """The SLURM preset uses submitit; its local executor runs the same code path without a cluster."""
    sweep_dir = tmp_path / "sweep"
    done = normbench("sweep", "norm=bn,ln", "batch_size=8", *GRID[2:], "hydra/launcher=submitit_local",
                     f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert {n: r.status for n, r in _records(sweep_dir).items()} == {"bn_b008": "completed", "ln_b008": "completed"}
    shown = normbench("run", "hydra/launcher=slurm", "--cfg", "hydra", cwd=tmp_path)
    assert "normbench_launcher.NormbenchSlurmLauncher" in shown.stdout and "cpus_per_task: 2" in shown.stdout


def test_a_run_is_recognised_by_the_settings_both_configs_have(tmp_path) -> None:
    from normbench.launch.rundir import differing

    def same_run(stored, cfg, volatile):
        return not differing(stored, cfg, volatile)

    cfg = planned(tmp_path).settings()
    stored = copy.deepcopy(cfg)
    del stored["train"]["deterministic"]  # written by an older normbench that lacked this setting
    assert same_run(stored, cfg, ("threads",))
    stored["threads"] = 7
    assert same_run(stored, cfg, ("threads",))
    stored["optim"]["lr"] = 0.5
    assert not same_run(stored, cfg, ("threads",))


def test_report_on_a_single_run_directory(tmp_path) -> None:
    run_dir = tmp_path / "one"
    train(run_dir, "norm=gn", "norm.groups=4", "log.activations=false")
    done = CliRunner().invoke(app, ["report", str(run_dir)], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    with (run_dir / "summary.csv").open() as f:
        (row,) = csv.DictReader(f)
    accuracy = saved_model_scores(run_dir)["acc"]
    assert (row["run"], row["status"], row["norm"], row["batch_size"]) == (".", "completed", "gn", "8")
    assert float(row["val_acc"]) == pytest.approx(accuracy, abs=1e-9)
    for name in ("error_vs_batch.png", "curves.png"):
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"| gn | {100 * (1 - accuracy):.1f} " in (run_dir / "report.md").read_text()  # then its flag, if any


@pytest.mark.process
@pytest.mark.parametrize("preset", ["default", "quick"])
def test_the_default_and_quick_grids_are_the_runs_their_yaml_lists(preset, tmp_path, monkeypatch) -> None:
    """The oracle is the preset's YAML read here: the product of its cells and seeds, each cell's norm and workers
    as configs/cell/ states them, one optimizer for every run. `normbench sweep` without a grid goes through the
    real command and its pre-flight check of every run (only Hydra's multirun is replaced, by a recorder);
    `sweep=quick` through the same grid expansion."""
    import normbench.launch.task
    from normbench.launch.compose import sweep_jobs
    from normbench.plan.schema import EvalConfig

    stated = yaml.safe_load((ROOT / "configs" / "sweep" / f"{preset}.yaml").read_text())
    params = stated["hydra"]["sweeper"]["params"]
    grid = {(c, int(s)) for c in params["cell"].split(",") for s in str(params["seed"]).split(",")}
    assert len(grid) == 24
    args = [f"sweep={preset}"]
    if preset == "default":
        handed: list[list[str]] = []
        monkeypatch.setattr(normbench.launch.task, "hydra_main", lambda args: handed.append(args) or 0)
        done = CliRunner().invoke(app, ["sweep", f"hydra.sweep.dir={tmp_path}"], env={"COLUMNS": "200"})
        assert done.exit_code == EXIT_SWEEP_INCOMPLETE, done.output  # the recorder trains nothing
        assert f"Sweeping {len(grid)} runs." in done.output and done.output.count("(not started)") == len(grid)
        ((multirun, *args),) = handed
        assert multirun == "--multirun" and "sweep=default" in args
    jobs = [dict(o.split("=", 1) for o in job) for job in sweep_jobs(args)]
    assert len(jobs) == len(grid) and {(j["cell"], int(j["seed"])) for j in jobs} == grid
    for job in jobs:  # the preset's settings reach every run; only the cell's norm and workers differ
        cfg = compose_unchecked([f"{k}={v}" for k, v in job.items() if not k.startswith("hydra")])
        cell = yaml.safe_load((ROOT / "configs" / "cell" / f"{job['cell']}.yaml").read_text())
        assert (cfg.norm.name, cfg.workers) == (cell["defaults"][0]["override /norm"], cell["workers"])
        assert (cfg.model.name, cfg.epochs, cfg.batch_size) == ("cnn", stated["epochs"], stated["batch_size"])
        assert (cfg.optim.lr, cfg.optim.lr_scaling) == (stated["optim"]["lr"], "none")
        assert (cfg.data.train_size, cfg.data.subset) == (stated["data"]["train_size"], None)
        default = EvalConfig.precise_bn_images  # the schema's, where the preset states none
        assert cfg.eval.precise_bn_images == stated.get("eval", {}).get("precise_bn_images", default)
    splits = {cfg_split for cfg_split in (stated["batch_size"] // int(c.split("_w")[1]) for c, _ in grid if "_w" in c)}
    assert splits == {2, 4, 8, 16, 32}  # BN at 2 … 32 images per worker


@pytest.mark.parametrize(
    "given",
    [["--multirun"], ["--config-dir", "{conf}", "sweep=mine"], ["hydra.searchpath=[file://{conf}]", "sweep=mine"]],
)
def test_a_grid_from_flags_or_your_own_config_folder_is_every_run(given, tmp_path, monkeypatch) -> None:
    """`sweep --multirun` (a sweep is always one) and a preset from your own config folder (`--config-dir`, or
    Hydra's search path) reach Hydra's multirun with the whole grid, every run checked; the printed command keeps
    the flag. Only Hydra's multirun is replaced, by a recorder."""
    import normbench.launch.task

    conf = tmp_path / "my configs"
    (conf / "sweep").mkdir(parents=True)
    (conf / "sweep" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: mlp\nhydra:\n  sweeper:\n    params:\n      norm: bn,ln\n"
    )
    given = [g.format(conf=conf) for g in given]
    grid = ["norm=bn,gn"] if "--multirun" in given else []
    handed: list[list[str]] = []
    monkeypatch.setattr(normbench.launch.task, "hydra_main", lambda args: handed.append(args) or 0)
    done = CliRunner().invoke(app, ["sweep", *given, *grid, "device=cpu", f"hydra.sweep.dir={tmp_path / 's'}"],
                              env={"COLUMNS": "200"})  # fmt: skip
    assert done.exit_code == EXIT_SWEEP_INCOMPLETE, done.output  # the recorder trains nothing
    said = " ".join(done.output.split())
    assert "Sweeping 2 runs." in said and said.count("(not started)") == 2, said
    assert ("gn_b128" if grid else "ln_b128") in said
    rerun = said.split("Rerun `", 1)[1].split("`", 1)[0]
    assert all(g in rerun.replace("'", "") for g in given if g != "--multirun"), rerun
