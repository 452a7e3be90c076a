"""Runs end to end: every model × norm the registry allows, TensorBoard events, results.json."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace

import pytest
from conftest import events, saved_model_scores, setup, train

import normbench
from normbench.parts.models import MODELS
from normbench.parts.norms import NORMS
from normbench.run import record as R
from normbench.run.record import Budget, RunRecord, UnreadableRecord

ALLOWED = [(m, n) for m, model in MODELS.items() for n, spec in NORMS.items() if model.layout in spec.axes]


def test_the_registry_allows_and_refuses_what_the_notes_say() -> None:
    refused = {(m, n) for m in MODELS for n in NORMS} - set(ALLOWED)
    # gn on vectors: per sample over C/G channels (docs/science.md); the norm-activation layers are defined on
    # feature maps only (docs/norms.md)
    norm_act = {(m, n) for m in ("mlp", "transformer") for n in ("frn", "evonorm_s0", "evonorm_b0")}
    assert refused == {("mlp", "in")} | norm_act


# resnet32/56 are resnet20's class at other depths: resnet20 stands for them (a 56-layer net without a norm also
# diverges within three steps at this lr, which is the net, not the wiring under test).
RUNS = [(m, n, impl) for m, n in ALLOWED for impl in NORMS[n].impls if m not in ("resnet32", "resnet56")]


@pytest.mark.parametrize(("model", "norm", "impl"), RUNS)
def test_every_allowed_pair_completes_a_three_step_run(model, norm, impl, tmp_path) -> None:
    overrides = (f"model={model}", f"norm={norm}", f"norm.impl={impl}", "log.activations=false")
    record = train(tmp_path, *overrides)
    assert record.status == R.COMPLETED
    assert record.steps == 3
    scores = saved_model_scores(tmp_path)  # the saved weights on the validation images, counted here
    assert record.metrics.val_acc == pytest.approx(scores["acc"], abs=1e-9)
    assert record.metrics.val_loss == pytest.approx(scores["loss"], rel=1e-4)
    assert math.isfinite(record.metrics.train_loss)
    assert RunRecord.read(tmp_path) == record


def test_events_have_the_documented_tags_in_step_order(tmp_path) -> None:
    train(tmp_path, "max_steps=7", "epochs=2", "log.every=3", "data.train_size=48")  # 6 steps per epoch
    ea = events(tmp_path)
    scalars = set(ea.Tags()["scalars"])
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "train/lr"} <= scalars
    loss_x = [e.step for e in ea.Scalars("train/loss")]
    assert loss_x == [8 * step for step in range(1, 8)]  # every step, in order, though flushed 3 at a time
    assert [e.step for e in ea.Scalars("val/acc")] == [48, 56]  # end of epoch 1, and of the budget: examples seen
    assert [e.step for e in ea.Scalars("train/lr")] == [24, 48, 56]  # at each flush
    record = RunRecord.read(tmp_path)
    # The last value against the saved model's accuracy counted here (float32 in the event file: a tolerance).
    assert ea.Scalars("val/acc")[-1].value == pytest.approx(saved_model_scores(tmp_path)["acc"], abs=1e-6)
    assert record.steps == 7 and [h.examples for h in record.history] == [48, 56]


def test_the_x_axis_is_examples_seen_for_every_batch_size_or_steps(tmp_path) -> None:
    for axis in ("examples", "steps"):
        for batch in (4, 16):  # one epoch of 64 examples: 16 steps, or 4
            train(tmp_path / axis / str(batch), f"batch_size={batch}", "max_steps=100", f"log.x_axis={axis}",
                  "log.activations=false")  # fmt: skip
    examples = {b: events(tmp_path / "examples" / str(b)) for b in (4, 16)}
    assert {b: ea.Scalars("val/acc")[-1].step for b, ea in examples.items()} == {4: 64, 16: 64}
    assert {b: ea.Scalars("train/loss")[0].step for b, ea in examples.items()} == {4: 4, 16: 16}
    steps = {b: events(tmp_path / "steps" / str(b)) for b in (4, 16)}
    assert {b: ea.Scalars("val/acc")[-1].step for b, ea in steps.items()} == {4: 16, 16: 4}
    assert RunRecord.read(tmp_path / "steps" / "4").steps == RunRecord.read(tmp_path / "examples" / "4").steps == 16


def test_results_record(tmp_path) -> None:
    started = time.perf_counter()
    record = train(tmp_path, "norm=gn", "norm.groups=4", "seed=3")
    elapsed = time.perf_counter() - started
    saved = json.loads((tmp_path / "results.json").read_text())  # the file itself, as other tools read it
    assert saved["status"] == "completed" and saved["reason"] is None
    assert set(saved["metrics"]) >= {"train_loss", "train_acc", "val_loss", "val_acc", "best_val_acc"}
    scores = saved_model_scores(tmp_path)
    assert saved["metrics"]["val_acc"] == pytest.approx(scores["acc"], abs=1e-9)
    assert saved["metrics"]["val_loss"] == pytest.approx(scores["loss"], rel=1e-4)
    assert saved["metrics"]["best_val_acc"] == pytest.approx(scores["acc"], abs=1e-9)  # one validation
    correct = saved["metrics"]["train_acc"] * 24  # a count of the 24 training images seen
    assert correct == pytest.approx(round(correct), abs=1e-6)
    last = saved["history"][-1]
    assert saved["metrics"]["val_acc"] == last["val_acc"] and saved["metrics"]["train_loss"] == last["train_loss"]
    assert saved["params"] == 94_986 and saved["steps"] == 3 and saved["examples"] == 24
    assert 0 < saved["wall_s"] < elapsed  # seconds of training, within the call's own time
    assert saved["images_per_s"] == pytest.approx(24 / saved["wall_s"], rel=0.02)
    assert saved["effective_lr"] == pytest.approx(0.1 * 8 / 128)  # linear scaling from base batch 128
    assert saved["budget"] == {"unit": "epochs", "total_steps": 3, "epochs": 1, "steps_per_epoch": 8}
    assert saved["config"]["norm"] == {"name": "gn", "impl": "torch", "groups": 4, "eps": 1e-5, "affine": True}
    assert saved["config"]["seed"] == 3
    assert saved["normbench_version"] == normbench.__version__ and saved["torch"]
    assert saved["memory_format"] == "contiguous" and saved["hparams"]["norm"] == "gn"
    assert RunRecord.read(tmp_path) == record
    assert record.budget == Budget(unit="epochs", total_steps=3, epochs=1, steps_per_epoch=8)


def test_records_of_older_versions_still_read(tmp_path) -> None:
    """A record without the fields added since (normbench_version, the BN extras) and with one since removed."""
    old = {
        "status": "completed", "reason": None, "metrics": {"val_acc": 0.5, "best_val_acc": 0.6},
        "model": "cnn", "norm": "bn", "batch_size": 8, "seed": 0, "steps": 3,
        "budget": {"unit": "epochs", "total_steps": 3, "epochs": 1, "steps_per_epoch": 8},
        "history": [{"epoch": 1, "step": 3, "examples": 24, "train_loss": 2.0, "train_acc": 0.1, "val_loss": 2.1,
                     "val_acc": 0.5, "lr": 0.01, "wall_s": 0.2}],
        "torch": "2.2.0", "a_key_no_longer_written": 1,
    }  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(old))
    record = RunRecord.read(tmp_path)
    assert record.metrics.val_acc == 0.5 and record.metrics.train_loss is None
    assert record.budget.steps_per_epoch == 8 and record.history[0].val_loss == 2.1
    assert record.history[0].val_acc_batch_stats is None and record.normbench_version is None
    assert record.config == {} and record.curve == []
    (tmp_path / "results.json").write_text('{"status": "comp')  # half a file: refused by name, not a crash
    with pytest.raises(UnreadableRecord, match="not valid JSON"):
        RunRecord.read(tmp_path)


@pytest.mark.parametrize(
    ("model", "norm"),
    [("cnn", "bn"), ("cnn", "ln"), ("cnn", "in"), ("cnn", "gn"), ("cnn", "rms"), ("mlp", "bn"),
     ("transformer", "ln"), ("transformer", "bn")],
)  # fmt: skip
def test_reference_implementation_trains_like_torch(model, norm, tmp_path) -> None:
    """Same seed, same data: the formula code and the fused kernels give the same first losses."""
    runs = [
        train(tmp_path / impl, f"model={model}", f"norm={norm}", f"norm.impl={impl}", "max_steps=5",
              "log.activations=false")
        for impl in ("torch", "reference")
    ]  # fmt: skip
    torch_losses, ref_losses = ([p[1] for p in r.curve] for r in runs)
    assert len(torch_losses) == 5
    assert ref_losses == pytest.approx(torch_losses, rel=1e-3, abs=1e-4)


def test_budget_in_steps_and_lr_scaling(tmp_path) -> None:
    record = train(tmp_path, "budget=steps", "max_steps=12", "optim.lr_scaling=sqrt", "batch_size=32")
    assert record.steps == 12 and record.budget.unit == "steps" and record.epochs == 6
    assert record.effective_lr == pytest.approx(0.1 * (32 / 128) ** 0.5)


def test_same_seed_same_metrics(tmp_path) -> None:
    a = train(tmp_path / "a", "max_steps=4")
    b = train(tmp_path / "b", "max_steps=4")
    c = train(tmp_path / "c", "max_steps=4", "seed=1")
    strip = lambda r: [replace(h, wall_s=0) for h in r.history]  # noqa: E731
    assert strip(a) == strip(b)
    assert strip(a) != strip(c)


def test_channels_last_gives_the_same_outputs_in_another_memory_format(tmp_path) -> None:
    default = train(tmp_path / "default", "max_steps=4", "log.hist_points=2")
    last = train(tmp_path / "last", "max_steps=4", "log.hist_points=2", "train.channels_last=true")
    assert (default.memory_format, last.memory_format) == ("contiguous", "channels_last")
    assert last.status == R.COMPLETED and last.steps == default.steps and len(last.history) == len(default.history)
    assert [p[1] for p in last.curve] == pytest.approx([p[1] for p in default.curve], rel=1e-4)
    a, b = events(tmp_path / "default"), events(tmp_path / "last")
    assert a.Tags()["scalars"] == b.Tags()["scalars"] and a.Tags()["histograms"] == b.Tags()["histograms"]
    for tag in a.Tags()["histograms"]:
        assert [(h.step, h.histogram_value.num) for h in a.Histograms(tag)] == [
            (h.step, h.histogram_value.num) for h in b.Histograms(tag)
        ]


# The suite's one torch.compile test: compilation on CPU takes 20-50 s, so the smallest model (mlp) only.
def test_compiled_training_logs_activations_at_its_training_steps(tmp_path) -> None:
    """dynamo ignores hooks added after compilation: the probed steps must still show up in TensorBoard."""
    record = train(tmp_path, "model=mlp", "train.compile=true", "max_steps=4", "log.hist_points=2")
    assert record.status == R.COMPLETED and math.isfinite(record.metrics.train_loss)
    ea = events(tmp_path)
    for layer in ("layer1.norm", "layer2.norm", "layer3.norm"):  # the mlp's norm layers
        for kind in ("in", "out"):
            assert [h.step for h in ea.Histograms(f"watch/act/{layer}/{kind}")] == [8, 16, 32]  # steps 1, 2, 4
        assert [e.step for e in ea.Scalars(f"watch/bn/{layer}/mean/gap")] == [8, 16, 32]
    assert [e.step for e in ea.Scalars("train/loss")] == [8, 16, 24, 32]


@pytest.mark.parametrize(
    ("given", "mode"), [([], "default"), (["train.compile_mode=reduce_overhead"], "reduce-overhead")]
)
def test_the_compile_mode_reaches_torch_compile(monkeypatch, given, mode) -> None:
    """The mode as torch spells it (reduce-overhead: CUDA graphs on a GPU); compile=false compiles nothing."""
    import torch

    calls: list[dict[str, object]] = []
    monkeypatch.setattr(torch, "compile", lambda model, **options: calls.append(options) or model)
    setup("model=mlp", *given)
    assert calls == []
    setup("model=mlp", "train.compile=true", *given)
    assert calls == [{"mode": mode}]
