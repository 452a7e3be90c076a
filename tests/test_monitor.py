"""Activation distributions, BatchNorm's statistics and modes, and HParams, read back with TensorBoard's reader."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import events, planned, saved_model_scores, train
from rich.console import Console
from tensorboard.plugins.hparams.api_pb2 import Status
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch import nn

from normbench.base.errors import DivergedError
from normbench.parts.data.synthetic_images import make_synthetic
from normbench.plan.plan import SweepPlan
from normbench.run import progress
from normbench.run import record as R
from normbench.run.evaluation import frozen_buffers, precise_bn
from normbench.run.monitor import schedule
from normbench.run.record import RunRecord

CNN_NORMS = ("stage1.norm", "stage2.norm", "stage3.norm")


def test_histograms_of_every_norm_layer_at_the_logging_steps(tmp_path) -> None:
    record = train(tmp_path, "max_steps=4", "data.train_size=64", "log.hist_points=2")
    ea = events(tmp_path)
    histograms = set(ea.Tags()["histograms"])
    for layer in CNN_NORMS:
        for kind in ("in", "out"):
            probed = ea.Histograms(f"watch/act/{layer}/{kind}")
            assert [h.step for h in probed] == [8, 16, 32]  # steps 1, 2 (half the run), 4 at batch 8: examples seen
            assert [h.step for h in ea.Histograms(f"watch/act_eval/{layer}/{kind}")] == [32]
            assert f"watch/act/{layer}/{kind}_std" in ea.Tags()["scalars"]
        for statistic in ("mean", "var"):
            assert {f"watch/bn/{layer}/{statistic}/batch", f"watch/bn/{layer}/{statistic}/running"} <= histograms
        assert [e.step for e in ea.Scalars(f"watch/bn/{layer}/mean/gap")] == [8, 16, 32]
        assert [e.step for e in ea.Scalars(f"watch/bn/{layer}/var/ratio")] == [8, 16, 32]
    # stage1.norm sees 8 × 32 × 32 × 32 = 262,144 values: strided down to log.hist_values = 65,536.
    assert ea.Histograms("watch/act/stage1.norm/in")[0].histogram_value.num == 65_536
    # stage3.norm sees 8 × 128 × 8 × 8 = 65,536 values: all of them.
    assert ea.Histograms("watch/act/stage3.norm/out")[0].histogram_value.num == 65_536
    # After BN (γ = 1, β = 0 at the start) the output is standardized per channel.
    post_std = ea.Scalars("watch/act/stage2.norm/out_std")[0].value
    assert abs(post_std - 1.0) < 0.05
    assert record.steps == 4


def test_histograms_come_at_the_same_images_seen_at_every_batch_size(tmp_path) -> None:
    """Two points: half and all of the run, at batch 4 steps 4 and 8, at batch 8 steps 2 and 4, both after 16 and
    32 images; plus the first step of each (4 and 8 images). A cadence in steps would put them at 8/16/32 against
    16/32."""
    x = {}
    for batch, axis in ((4, "examples"), (8, "examples"), (4, "steps")):
        run_dir = tmp_path / f"{batch}_{axis}"
        steps = f"max_steps={32 // batch}"
        train(run_dir, f"batch_size={batch}", steps, "log.hist_points=2", f"log.x_axis={axis}")
        x[batch, axis] = [h.step for h in events(run_dir).Histograms("watch/act/stage2.norm/out")]
    assert x[4, "examples"] == [4, 16, 32] and x[8, "examples"] == [8, 16, 32]
    assert x[4, "steps"] == [1, 4, 8]


def test_the_three_ways_to_evaluate_batch_norm(tmp_path) -> None:
    """Each against the saved model scored here: running statistics; batch statistics of the training batch size
    (8); statistics re-estimated by torch's own update_bn over PreciseBN's 16 training images."""
    record = train(tmp_path, "max_steps=6", "data.train_size=48", "epochs=2", "data.val_size=256")
    ea = events(tmp_path)
    for tag in ("val/acc", "val/acc_running_stats", "val/acc_batch_stats", "val/acc_precise_bn"):
        assert [e.step for e in ea.Scalars(tag)] == [48]  # 6 steps of 8 examples
    assert ea.Scalars("val/acc_running_stats")[0].value == ea.Scalars("val/acc")[0].value  # for BN's chart alone
    scores = saved_model_scores(tmp_path, batch_stats=True, precise_bn=16)
    assert len({scores["acc"], scores["batch_stats"], scores["precise_bn"]}) == 3  # the test tells them apart
    m = record.metrics
    for tag, recorded, key in (("val/acc", m.val_acc, "acc"), ("val/acc_batch_stats", m.val_acc_batch_stats,
                               "batch_stats"), ("val/acc_precise_bn", m.val_acc_precise_bn, "precise_bn")):  # fmt: skip
        assert recorded == pytest.approx(scores[key], abs=1e-9), tag
        assert ea.Scalars(tag)[0].value == pytest.approx(scores[key], abs=1e-6), tag  # float32 in the event file


def test_bn_modes_follow_eval_bn_modes_not_activation_logging(tmp_path) -> None:
    without_histograms = train(tmp_path / "a", "log.activations=false").metrics
    assert without_histograms.val_acc_batch_stats is not None and without_histograms.val_acc_precise_bn is not None
    off = train(tmp_path / "b", "eval.bn_modes=false")
    assert off.metrics.val_acc_batch_stats is None and off.metrics.val_acc_precise_bn is None
    assert [(h.val_acc_batch_stats, h.val_acc_precise_bn) for h in off.history] == [(None, None)]
    assert off.precise_bn_images is None
    scalars = set(events(tmp_path / "b").Tags()["scalars"])
    assert "val/acc" in scalars and not {"val/acc_running_stats", "val/acc_batch_stats", "val/acc_precise_bn"} & scalars


def test_norm_none_is_probed_at_the_same_places_and_has_no_bn_extras(tmp_path) -> None:
    record = train(tmp_path, "norm=none")
    ea = events(tmp_path)
    assert {f"watch/act/{layer}/in" for layer in CNN_NORMS} <= set(ea.Tags()["histograms"])
    assert not any(t.startswith("watch/bn/") for t in ea.Tags()["histograms"])
    assert record.metrics.val_acc_batch_stats is None and "val/acc_batch_stats" not in ea.Tags()["scalars"]


def test_every_run_shows_its_starting_and_final_distributions(tmp_path) -> None:
    train(tmp_path, "max_steps=3", "log.hist_points=1", "log.x_axis=steps")
    ea = events(tmp_path)
    assert [h.step for h in ea.Histograms("watch/act/stage1.norm/in")] == [1, 3]  # the first and last steps
    assert [e.step for e in ea.Scalars("watch/bn/stage1.norm/mean/gap")] == [1, 3]
    assert [h.step for h in ea.Histograms("watch/act_eval/stage1.norm/in")] == [3]
    assert schedule(4, 10) == {1, 3, 5, 8, 10} and schedule(0, 10) == set() and schedule(16, 3) == {1, 2, 3}


def test_activation_logging_can_be_turned_off(tmp_path) -> None:
    train(tmp_path, "log.activations=false")
    assert events(tmp_path).Tags()["histograms"] == []


def test_hparams_session_and_custom_scalars_in_the_run_directory(tmp_path) -> None:
    train(tmp_path, "norm=gn", "norm.groups=4", "batch_size=16", "data.train_size=64")
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []  # no timestamped subfolder
    ea = events(tmp_path)
    content = ea.PluginTagToContent("hparams")
    sessions = [HParamsPluginData.FromString(c) for c in content.values()]
    start = next(s.session_start_info for s in sessions if s.HasField("session_start_info"))
    assert start.hparams["norm"].string_value == "gn"
    assert start.hparams["batch_size"].number_value == 16
    assert start.hparams["lr"].number_value == 0.1 * 16 / 128
    # Every run has the same columns; outside a sweep nothing is swept besides them.
    assert set(start.hparams) == {"model", "norm", "data", "image", "classes", "batch_size", "workers",
                                  "images_per_worker", "lr", "seed"}  # fmt: skip
    end = next(s.session_end_info for s in sessions if s.HasField("session_end_info"))
    assert end.status == Status.STATUS_SUCCESS
    experiment = next(s.experiment for s in sessions if s.HasField("experiment"))
    assert [m.name.tag for m in experiment.metric_infos] == ["val/acc", "val/loss", "train/acc", "train/loss_epoch"]
    assert not any(tag.startswith("hparam/") for tag in ea.Tags()["scalars"])  # metrics read the existing tags
    assert ea.PluginTagToContent("custom_scalars")


def test_a_diverged_run_has_its_hparams_row_with_a_failure_status(tmp_path) -> None:
    with pytest.raises(DivergedError):
        train(tmp_path, "norm=none", "optim.lr=1e9", "max_steps=30", "epochs=4", "log.every=5")
    sessions = [HParamsPluginData.FromString(c) for c in events(tmp_path).PluginTagToContent("hparams").values()]
    start = next(s.session_start_info for s in sessions if s.HasField("session_start_info"))
    assert start.hparams["norm"].string_value == "none" and start.hparams["lr"].number_value == 1e9 * 8 / 128
    assert [s.session_end_info.status for s in sessions if s.HasField("session_end_info")] == [Status.STATUS_FAILURE]


def test_batch_statistic_evaluation_leaves_running_statistics_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    model(torch.randn(8, 3, 8, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with frozen_buffers(model):
        model(torch.randn(8, 3, 8, 8) + 5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_precise_bn_is_the_cumulative_average_over_training_batches() -> None:
    from normbench.parts.data.batches import Batches
    from normbench.run.evaluation import PRECISE_BN_DRAW

    data = make_synthetic(64, 8)
    batches = Batches(data.train_images, data.train_labels, 16, data.mean, data.std, torch.device("cpu"), train=True)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    precise = precise_bn(model, batches, num_batches=3)
    conv = precise[0]
    outs = [conv(x) for x, _ in list(batches.epoch(PRECISE_BN_DRAW))[:3]]
    with torch.no_grad():
        means = torch.stack([o.mean(dim=(0, 2, 3)) for o in outs]).mean(0)
        variances = torch.stack([o.var(dim=(0, 2, 3), unbiased=True) for o in outs]).mean(0)
    torch.testing.assert_close(precise[1].running_mean, means)
    torch.testing.assert_close(precise[1].running_var, variances)
    assert model[1].momentum == 0.1 and int(model[1].num_batches_tracked) == 0  # the original is untouched


def test_histograms_are_binned_like_numpy_and_skip_non_finite_values(tmp_path) -> None:
    import numpy as np

    from normbench.run.board import Board

    values = torch.tensor([0.0, 1, 1, 2, 3, 3, 3, 4, float("nan"), float("inf")])
    board = Board(tmp_path)
    board.histogram("h", values, 1, bins=4)
    board.histogram("constant", torch.ones(5), 1)
    board.histogram("empty", torch.tensor([float("nan")]), 1)
    board.close()
    ea = events(tmp_path)
    h = ea.Histograms("h")[0].histogram_value
    finite = values[torch.isfinite(values)].numpy()
    counts, edges = np.histogram(finite, bins=4, range=(0, 4))
    assert (h.min, h.max, h.num, h.sum, h.sum_squares) == (0, 4, 8, 17, 49)
    assert list(h.bucket) == counts.tolist() and list(h.bucket_limit) == edges[1:].tolist()
    c = ea.Histograms("constant")[0].histogram_value
    assert (c.num, list(c.bucket), list(c.bucket_limit)) == (5, [5.0], [1.0])
    assert "empty" not in ea.Tags()["histograms"]


def test_channel_statistics_for_each_layout() -> None:
    from normbench.run.monitor import channel_stats

    torch.manual_seed(0)
    x = torch.randn(4, 6, 5, 5) * 2 + 3
    mean, var = channel_stats(x, 1)
    torch.testing.assert_close(mean, x.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(var, x.var(dim=(0, 2, 3), unbiased=False), atol=1e-4, rtol=1e-4)
    tokens = torch.randn(3, 7, 6)  # (N, L, D): BN's channels are last
    mean, var = channel_stats(tokens, -1)
    torch.testing.assert_close(var, tokens.var(dim=(0, 1), unbiased=False), atol=1e-5, rtol=1e-4)


def test_a_sweep_job_prints_named_status_lines_with_phase_and_runs_ended(tmp_path, monkeypatch) -> None:
    """No live bar in a sweep: lines that start with the run's name, say its phase, and count the runs whose
    records under the sweep directory have ended, of the grid's size."""
    sweep = SweepPlan(0.0, "normbench sweep ...")
    for batch in (4, 32):
        sweep.add(planned(tmp_path / f"bn_b{batch:03d}", f"batch_size={batch}"))
    sweep.write(tmp_path)
    RunRecord.of(planned(tmp_path / "bn_b032", "batch_size=32"), R.COMPLETED, None).write(tmp_path / "bn_b032")
    out = io.StringIO()
    monkeypatch.setattr(progress, "STATUS_EVERY_S", 0.0)  # a line at every update
    with progress.progress(Console(file=out, width=300), "x", 10, 0, True, tmp_path, tmp_path / "bn_b004") as lines:
        lines.update(4, 2.5, 100.0)
        lines.phase(progress.VALIDATION)  # shows in the next line only
        lines.print("epoch 1/1")
        lines.update(10, 2.25, 100.0)
        lines.phase(progress.BN_EVALUATIONS)
    text = out.getvalue().splitlines()
    assert all(line.startswith("bn_b004 | ") for line in text), text
    assert "training" in text[0] and "step 0/10" in text[0] and text[0].endswith("1/2 runs of the sweep ended")
    assert "step 4/10 (40%)  loss 2.5000  100 img/s" in text[1] and "left" in text[1]
    assert text[2] == "bn_b004 | epoch 1/1"
    assert text[3].startswith("bn_b004 | validation") and "training done" in text[3]
    assert text[4].startswith("bn_b004 | BN evaluations") and len(text) == 5


def test_a_run_alone_keeps_its_live_bar_labelled_with_the_phase(tmp_path) -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160)
    with progress.progress(console, "cnn/bn b=8", 10, 0, True, None, tmp_path) as bar:
        bar.update(10, 2.0, 50.0)
        bar.phase(progress.BN_EVALUATIONS)
        bar.progress.refresh()
    assert "cnn/bn b=8 · BN evaluations" in out.getvalue() and "10/10" in out.getvalue()
