"""PreciseBN by images, the cadence of the BN-mode validations, one GPU per parallel sweep job, the bench's timing, and
where a run's time went."""

from __future__ import annotations

import pytest
import torch
from conftest import events, planned, setup, train
from omegaconf import OmegaConf
from torch import nn

from normbench.launch.jobs import assign_job_gpu, job_gpu
from normbench.run.evaluation import plan_precise_bn, precise_bn


@pytest.mark.parametrize("batch", [2, 32])
def test_precise_bn_sees_the_same_images_at_every_training_batch_size(tmp_path, batch) -> None:
    record = train(
        tmp_path, f"batch_size={batch}", "eval.precise_bn_images=48", "eval.precise_bn_batch_size=16", "max_steps=2"
    )
    assert record.precise_bn_images == 48 and record.warnings == []
    assert record.metrics.val_acc_precise_bn is not None


def test_precise_bn_says_when_the_training_set_is_too_small(tmp_path) -> None:
    # 64 training images, 4096 asked for, batch 128 asked for: one batch of all 64.
    record = train(tmp_path, "eval.precise_bn_images=4096", "eval.precise_bn_batch_size=128")
    assert record.precise_bn_images == 64
    assert len(record.warnings) == 1 and "eval.precise_bn_images=4096" in record.warnings[0]
    off = train(tmp_path / "off", "eval.precise_bn_images=0")
    assert off.precise_bn_images is None and off.metrics.val_acc_precise_bn is None
    assert off.metrics.val_acc_batch_stats is not None


def test_precise_bn_plan() -> None:
    assert (plan_precise_bn(4096, 128, 10_000).batch_size, plan_precise_bn(4096, 128, 10_000).batches) == (128, 32)
    assert plan_precise_bn(4096, 128, 2048).images == 2048
    assert plan_precise_bn(16, 128, 64).images == 16  # one batch of 16: never more than asked when there is enough
    assert plan_precise_bn(1, 128, 64).batch_size == 2  # BN needs two images for a variance
    assert plan_precise_bn(0, 128, 64) is None


def test_precise_bn_estimate_equals_an_independent_computation() -> None:
    """The same images at training batch 2 and 32; the statistics are the mean of per-batch means and of
    unbiased per-batch variances over exactly those images (momentum=None averages batches equally)."""
    seen = {}
    for batch in (2, 32):
        built = setup(f"batch_size={batch}", "eval.precise_bn_images=48", "eval.precise_bn_batch_size=16")
        assert built.precise_bn is not None and built.precise_bn_batches is not None
        plan, batches = built.precise_bn, built.precise_bn_batches
        probe = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        estimated = precise_bn(probe, batches, plan.batches)
        from normbench.run.evaluation import PRECISE_BN_DRAW

        images = torch.cat([x for x, _ in batches.epoch(PRECISE_BN_DRAW)])[: plan.images]
        assert len(images) == 48
        seen[batch] = images
        with torch.no_grad():
            outs = probe[0](images).split(16)
        means = torch.stack([o.mean(dim=(0, 2, 3)) for o in outs]).mean(0)
        variances = torch.stack([o.var(dim=(0, 2, 3), unbiased=True) for o in outs]).mean(0)
        torch.testing.assert_close(estimated[1].running_mean, means)
        torch.testing.assert_close(estimated[1].running_var, variances)
    torch.testing.assert_close(seen[2], seen[32])


@pytest.mark.parametrize(
    ("every", "with_bn_modes"), [(0, [False, False, True]), (1, [True] * 3), (2, [False, True, True])]
)
def test_bn_modes_run_at_the_end_and_every_n_epochs(tmp_path, every, with_bn_modes) -> None:
    record = train(tmp_path, "epochs=3", "max_steps=null", "data.train_size=32", "log.activations=false",
                   f"eval.bn_modes_every={every}", "log.x_axis=steps")  # fmt: skip
    assert [e.val_acc_batch_stats is not None for e in record.history] == with_bn_modes
    assert [e.val_acc_precise_bn is not None for e in record.history] == with_bn_modes
    steps = [e.step for e, due in zip(record.history, with_bn_modes, strict=True) if due]
    ea = events(tmp_path)
    assert [e.step for e in ea.Scalars("val/acc_batch_stats")] == steps
    assert [e.step for e in ea.Scalars("val/acc_precise_bn")] == steps
    assert record.metrics.val_acc_batch_stats == record.history[-1].val_acc_batch_stats is not None
    assert record.metrics.val_acc_precise_bn is not None


def _job(num: int) -> OmegaConf:
    return OmegaConf.create({"job": {"num": num}})


def test_parallel_jobs_spread_over_the_gpus(monkeypatch) -> None:
    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    for num in range(7):
        assign_job_gpu(_job(num))
    assert chosen == [0, 1, 2, 0, 1, 2, 0]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # CUDA_VISIBLE_DEVICES=1, or SLURM's one GPU
    assert {job_gpu(_job(num)) for num in range(4)} == {0}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert job_gpu(_job(5)) is None


def test_a_multirun_gives_its_jobs_gpus_by_hydra_job_number(monkeypatch, tmp_path) -> None:
    """Through Hydra's real multirun (the basic launcher runs the jobs in this process, so the fake count holds)."""
    from normbench.launch.task import hydra_main

    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    grid = ["norm=bn,gn", "batch_size=4,8", "device=cpu", "max_steps=1", "threads=1", "data.train_size=16",
            "data.val_size=8", "eval.precise_bn_images=8", "quiet=true", "log.activations=false"]  # fmt: skip
    code = hydra_main(["--multirun", *grid, f"hydra.sweep.dir={tmp_path}", "~hydra.callbacks.sweep_summary"])
    assert code == 0
    assert chosen == [0, 1, 2, 0]


def test_synthetic_data_is_made_once_then_read_from_the_cache(tmp_path, monkeypatch) -> None:
    from normbench.parts.data import DataConfig, synthetic

    monkeypatch.setenv("NORMBENCH_DATA", str(tmp_path))
    monkeypatch.setattr(DataConfig, "CACHE_FROM_IMAGES", 0)
    data = planned(tmp_path / "run").config.data
    made = data.load()
    assert len(list((tmp_path / "cache" / "synthetic").glob("*.pt"))) == 1
    fresh = data.decode()
    monkeypatch.setattr(synthetic.SyntheticData, "decode", lambda self: pytest.fail("made again instead of read"))
    read = data.load()
    for split in ("train_images", "train_labels", "val_images", "val_labels"):
        assert torch.equal(getattr(read, split), getattr(fresh, split)) and torch.equal(
            getattr(made, split), getattr(fresh, split)
        )
    assert (read.mean, read.std, read.name) == (fresh.mean, fresh.std, fresh.name)


def test_the_bench_cancels_drift_and_order_within_its_blocks() -> None:
    """`make bench`'s timing: a loop that really takes half the time of another must measure as 0.5 while the
    machine slows down by 20% per round and the second loop of every pair pays 30% more (both seen here)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "scripts" / "bench.py"
    spec = importlib.util.spec_from_file_location("normbench_bench", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    calls: list[str] = []

    def timer(name: str, cost: float):
        def measure() -> float:
            calls.append(name)
            second_of_pair = len(calls) % 2 == 0
            return cost * 1.2 ** len(calls) * (1.3 if second_of_pair else 1.0)

        return measure

    ratio = bench.paired(3, timer("a", 1.0), timer("b", 2.0))[2]
    assert calls == ["a", "b"] + ["a", "b", "b", "a"] * 3  # warm-up, then blocks
    assert ratio == pytest.approx(0.5)


def test_the_record_says_where_a_runs_time_went(tmp_path, monkeypatch) -> None:
    """wall_s (training), eval_s (validation every epoch), bn_modes_s (the BN-mode validations, at the end here):
    on a clock that moves only inside validation, by 10 s per eval-mode validation and 100 s per BN-mode one."""
    import types

    import normbench.run.train as train_module

    clock = [0.0]
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))

    def taking(seconds: float, function):
        def timed(*args, **kwargs):
            clock[0] += seconds
            return function(*args, **kwargs)

        return timed

    monkeypatch.setattr(train_module, "evaluate", taking(10, train_module.evaluate))
    monkeypatch.setattr(train_module, "bn_mode_accuracies", taking(100, train_module.bn_mode_accuracies))
    record = train(tmp_path, "epochs=2", "max_steps=null", "data.train_size=32", "log.activations=false")
    assert record.epochs == 2
    assert (record.wall_s, record.eval_s, record.bn_modes_s) == (0, 20, 100)
    gn = train(tmp_path / "gn", "norm=gn", "norm.groups=4", "log.activations=false")
    assert (gn.eval_s, gn.bn_modes_s) == (10, 0)  # no running statistics: no BN-mode validations
