"""A run planned once: each fact of a run is computed by one function of the plan layer, and everything that shows
the fact (the record, TensorBoard's HParams row, the report, the run's name and title, the console) follows that
function. Changing the function is the test: every consumer must show the changed value."""

from __future__ import annotations

import io
import json

import pytest
from conftest import events, planned, train
from rich.console import Console
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from normbench.launch import execute
from normbench.parts.optim import OptimConfig
from normbench.plan import naming
from normbench.plan import plan as plan_module
from normbench.run.record import RunRecord
from normbench.run.report import summarize


def hparams_row(run_dir) -> dict[str, object]:
    """The run's HParams row as TensorBoard's reader gets it from its events."""
    sessions = [HParamsPluginData.FromString(c) for c in events(run_dir).PluginTagToContent("hparams").values()]
    start = next(s.session_start_info for s in sessions if s.HasField("session_start_info"))
    return {k: v.number_value if v.HasField("number_value") else v.string_value for k, v in start.hparams.items()}


def shown(record: RunRecord) -> str:
    """What `normbench run` prints at its end."""
    out = io.StringIO()
    original = execute.console
    execute.console = Console(file=out, width=200)
    try:
        execute.print_summary(record)
    finally:
        execute.console = original
    return out.getvalue()


def test_images_per_worker_come_from_one_function(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(naming, "images_per_worker", lambda batch_size, workers: 3)  # not 8 / 2 = 4
    record = train(tmp_path / "run", "workers=2", "model=mlp", "model.width=16", "model.depth=1")
    assert record.images_per_worker == 3 and json.loads((tmp_path / "run" / "results.json").read_text())[
        "images_per_worker"] == 3  # fmt: skip
    assert record.title == "mlp / bn, batch 8 = 2 workers × 3 images" and "× 3 images" in shown(record)
    assert hparams_row(tmp_path / "run")["images_per_worker"] == 3
    assert planned(tmp_path / "x", "workers=2").name == "bn_b003x02"  # the run's name
    assert naming.run_name("bn", 8, 2, ["norm=bn", "seed=1"], []) == "bn_b003x02_seed001"  # a sweep's run name
    (row,) = summarize(tmp_path)["runs"]
    assert row["images_per_worker"] == 3  # the report's x axis


def test_the_effective_lr_comes_from_one_function(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(OptimConfig, "effective_lr", lambda self, batch_size: 0.0125)
    record = train(tmp_path / "run", "log.x_axis=steps")
    assert record.effective_lr == 0.0125 and "0.0125" in shown(record)
    assert hparams_row(tmp_path / "run")["lr"] == pytest.approx(0.0125)
    assert events(tmp_path / "run").Scalars("train/lr")[0].value == pytest.approx(0.0125 * 0.5 * (1 + 0.5))  # cosine
    (row,) = summarize(tmp_path)["runs"]
    assert row["effective_lr"] == 0.0125


def test_the_budget_comes_from_one_function(tmp_path, monkeypatch) -> None:
    original = plan_module.make_budget
    monkeypatch.setattr(plan_module, "make_budget", lambda config, images: original(config, images // 2))
    record = train(tmp_path / "run", "max_steps=null", "data.train_size=64")  # 8 steps an epoch; halved: 4
    assert (record.steps, record.budget.steps_per_epoch) == (4, 4)
    (row,) = summarize(tmp_path)["runs"]
    assert row["budget_total_steps"] == 4


def test_the_hparams_row_comes_from_one_function(tmp_path, monkeypatch) -> None:
    original = plan_module.hparams
    monkeypatch.setattr(plan_module, "hparams", lambda *a, **k: {**original(*a, **k), "marked": "here"})
    record = train(tmp_path / "run")
    assert hparams_row(tmp_path / "run")["marked"] == "here" and record.hparams["marked"] == "here"
