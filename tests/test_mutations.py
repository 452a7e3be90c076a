"""Promises that an audit could break without a test failing, each checked against an independent oracle:
labels against the images they belong to, BatchNorm's batch-statistics validation against a hand-written
train-mode forward, the monitor's BN scalars against float64 statistics of the captured batch, and a resumed
run's TensorBoard events after a kill that came after its last checkpoint."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import events, normbench, train
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from normbench.parts.data.batches import Batches
from normbench.parts.models import NORM_SLOT, build_model
from normbench.run import record as R
from normbench.run.board import Board
from normbench.run.checkpoint import CHECKPOINT_FILE
from normbench.run.evaluation import bn_mode_accuracies, evaluate
from normbench.run.monitor import Monitor

CPU = torch.device("cpu")


def bn_scalar(ea: EventAccumulator, layer: str, statistic: str) -> list[tuple[int, float]]:
    """(x, value) of a BN layer's `gap` (of the means) or `ratio` (of the variances), under the tag names of
    either version of the monitor: `watch/bn/<layer>/mean/gap` or `watch/bn/<layer>/mean_gap`."""
    names = {"gap": ("mean/gap", "mean_gap"), "ratio": ("var/ratio", "var_ratio")}[statistic]
    tags = [f"watch/bn/{layer}/{n}" for n in names if f"watch/bn/{layer}/{n}" in ea.Tags()["scalars"]]
    assert len(tags) == 1, ea.Tags()["scalars"]
    return [(e.step, e.value) for e in ea.Scalars(tags[0])]


# --- Labels belong to their images ---------------------------------------------------------------------


def test_training_batches_keep_each_label_with_its_image() -> None:
    """Every image is one flat grey level that encodes its label; the crop never leaves the image's centre."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(10, (40,), generator=g)
    images = (20 * labels + 10).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 32, 32).contiguous()
    batches = Batches(images, labels, 8, mean=(0.0,) * 3, std=(1 / 255,) * 3, device=CPU, train=True, augment=True)
    seen = 0
    for epoch in range(2):
        for x, y in batches.epoch(epoch):
            grey = x[:, 0, 16, 16]  # standardized with mean 0, std 1/255: the pixel value itself
            assert torch.equal(((grey - 10) / 20).round().long(), y)
            seen += len(y)
    assert seen == 2 * 40


# --- Validation with batch statistics ------------------------------------------------------------------


def test_batch_statistics_validation_normalizes_each_batch_with_its_own_statistics() -> None:
    """Against a hand-written train-mode forward; running statistics set far off, so eval mode gets it wrong."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    bn = model[2]
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(0.01)
    images = torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8)

    def by_hand(x: torch.Tensor) -> torch.Tensor:
        h = model[1](model[0](x)).double()
        z = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + bn.eps)
        return model[4](torch.relu(z * bn.weight.double() + bn.bias.double()).float())

    common = dict(mean=(0.5,) * 3, std=(0.25,) * 3, device=CPU, train=False)
    small = Batches(images, torch.zeros(48, dtype=torch.long), 8, **common)
    with torch.no_grad():
        labels = torch.cat([by_hand(x).argmax(1) for x, _ in small.epoch()])  # hand accuracy is 1 by design
    val, small = Batches(images, labels, 48, **common), Batches(images, labels, 8, **common)
    model.eval()
    running = evaluate(model, val)[1]
    assert running < 0.8  # the running statistics give other predictions: the test can tell the modes apart
    batch_stats, precise = bn_mode_accuracies(model, val, small, None, None)
    assert (batch_stats, precise) == (1.0, None)
    assert not model.training and float(bn.running_mean[0]) == 3.0  # left in eval mode, statistics untouched


# --- The monitor's BN scalars --------------------------------------------------------------------------

MODELS = {
    "mlp": ({"name": "mlp", "width": 12, "depth": 2}, (8, 3, 32, 32), 1),
    "cnn": ({"name": "cnn", "widths": [4, 6]}, (4, 3, 32, 32), 1),
    "transformer": ({"name": "transformer", "dim": 8, "depth": 1, "heads": 2, "patch_size": 8}, (4, 3, 32, 32), -1),
}


@pytest.mark.parametrize("name", MODELS)
def test_bn_gap_and_ratio_match_float64_statistics_of_the_captured_batch(name, tmp_path) -> None:
    """gap = mean over channels of |batch mean − running mean| / sqrt(running var + eps); ratio = mean of batch
    var / running var, with the batch statistics over every dim but the channel one."""
    config, shape, channel_dim = MODELS[name]
    g = torch.Generator().manual_seed(1)
    model = build_model(config, {"name": "bn"}, 3, (32, 32), 10)
    model.eval()  # eval: the forward leaves the running statistics as set
    layers = {n: m for n, m in model.named_modules() if getattr(m, NORM_SLOT, False)}
    inputs: dict[str, torch.Tensor] = {}
    for layer, m in layers.items():
        with torch.no_grad():  # gaps of both signs, variances on both sides of the batch's
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 3 + 0.2)
        m.register_forward_pre_hook(lambda mod, args, layer=layer: inputs.setdefault(layer, args[0].detach()))
    board = Board(tmp_path)
    layout = "sequence" if channel_dim == -1 else "image"
    monitor = Monitor(model, board, points=1, most=10_000, total_steps=1, layout=layout)
    monitor.attach()
    with torch.no_grad():
        model(torch.randn(shape, generator=g))
    monitor.write(5)
    board.close()

    ea = events(tmp_path)
    assert len(layers) >= 2 and set(inputs) == set(layers)
    for layer, m in layers.items():
        x = inputs[layer].double().movedim(channel_dim, -1).reshape(-1, m.num_features)
        mean, var = x.mean(0), x.var(0, unbiased=False)
        rm, rv = m.running_mean.double(), m.running_var.double()
        gap = ((mean - rm).abs() / torch.sqrt(rv + m.eps)).mean().item()
        ratio = (var / rv).mean().item()
        assert bn_scalar(ea, layer, "gap") == [(5, pytest.approx(gap, rel=1e-4))]
        assert bn_scalar(ea, layer, "ratio") == [(5, pytest.approx(ratio, rel=1e-4))]


@pytest.mark.parametrize("model", ["mlp", "transformer"])
def test_the_monitor_probes_every_norm_layer_of_the_mlp_and_the_transformer(model, tmp_path) -> None:
    options = {"mlp": {"width": 16}, "transformer": {"dim": 16, "depth": 1, "heads": 2}}[model]
    overrides = [f"model.{k}={v}" for k, v in options.items()]
    train(tmp_path, f"model={model}", *overrides, "norm=bn", "max_steps=4", "log.hist_points=2", "log.x_axis=steps")
    built = build_model({"name": model, **options}, {"name": "bn"}, 3, (32, 32), 10)
    layers = [n for n, m in built.named_modules() if getattr(m, NORM_SLOT, False)]
    ea = events(tmp_path)
    assert len(layers) >= 3
    for layer in layers:
        for kind in ("in", "out"):
            assert [h.step for h in ea.Histograms(f"watch/act/{layer}/{kind}")] == [1, 2, 4]  # the first step too
            assert [h.step for h in ea.Histograms(f"watch/act_eval/{layer}/{kind}")] == [4]
        assert [x for x, _ in bn_scalar(ea, layer, "ratio")] == [1, 2, 4]
        assert all(0 < v < 100 for _, v in bn_scalar(ea, layer, "ratio"))


# --- Resume after a kill that came after the last checkpoint -------------------------------------------

KILLED = ["device=cpu", "model.widths=[8,16]", "data.train_size=768", "data.val_size=32", "batch_size=16",
          "epochs=2", "quiet=true", "threads=1", "eval.precise_bn_images=16", "log.every=1", "log.hist_points=24",
          "log.x_axis=steps"]  # fmt: skip


@pytest.mark.process
def test_resume_after_sigkill_past_the_checkpoint_shows_each_step_once(tmp_path) -> None:
    """Events written after the last checkpoint by a process that then died are dropped on resume
    (purge_step), as TensorBoard's own reader shows them: steps 1 … N, each once."""
    run_dir = tmp_path / "run"
    exe = Path(sys.executable).with_name("normbench")
    proc = subprocess.Popen([str(exe), "run", *KILLED, f"hydra.run.dir={run_dir}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    per_epoch = 768 // 16  # events grow by about 4 kB a step (histograms every 4): killed a few steps past epoch 1
    deadline = time.monotonic() + 120
    try:
        # Observable events, cheap to poll: epoch 1's checkpoint, then the events file growing past its size then.
        while not (run_dir / CHECKPOINT_FILE).exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else ""
            time.sleep(0.01)
        at_checkpoint = _events_size(run_dir)
        while _events_size(run_dir) < at_checkpoint + 5_000:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    saved = torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)["progress"]["step"]
    written = events(run_dir).Scalars("train/loss")[-1].step
    assert saved == per_epoch < written < 2 * per_epoch  # killed after its last checkpoint, with events beyond it
    assert R.RunRecord.read(run_dir).status == R.RUNNING  # a SIGKILL leaves no chance to write anything else

    resumed = normbench("run", *KILLED, "resume=true", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"Resuming from step {saved}" in resumed.stdout
    ea = events(run_dir)
    assert [e.step for e in ea.Scalars("train/loss")] == list(range(1, 2 * per_epoch + 1))
    assert [e.step for e in ea.Scalars("val/acc")] == [per_epoch, 2 * per_epoch]


def _events_size(run_dir: Path) -> int:
    return sum(p.stat().st_size for p in run_dir.glob("events.out.tfevents.*"))
