"""What only a CUDA machine can show: CUDA-graph steps, bf16 autocast, and parallel sweep jobs on their own GPUs.

Skipped without CUDA (this project's CI has none); run them where a GPU is lent: `pytest tests/test_gpu.py`.
The same logic is tested on the CPU elsewhere (the compile mode reaching torch.compile, the GPU of a job by
its number with a faked device count: test_run.py, test_speed.py).
"""

from __future__ import annotations

import pytest
import torch
from conftest import events, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Small batches, where replaying a captured graph instead of launching each kernel from Python pays most.
SMALL = ["device=cuda", "batch_size=2", "max_steps=30", "log.activations=false", "eval.bn_modes=false"]


def _losses(run_dir) -> list[float]:
    return [e.value for e in events(run_dir).Scalars("train/loss")]


def test_cuda_graph_steps_give_the_eager_losses(tmp_path) -> None:
    """train.compile_mode=reduce_overhead (CUDA graphs) against eager on the same seed: the per-step losses agree
    within float tolerance (inductor fuses and reorders reductions, so not bit for bit)."""
    eager = train(tmp_path / "eager", *SMALL)
    graphs = train(tmp_path / "graphs", *SMALL, "train.compile=true", "train.compile_mode=reduce_overhead")
    assert eager.steps == graphs.steps == 30 and eager.device.startswith("cuda")
    torch.testing.assert_close(_losses(tmp_path / "graphs"), _losses(tmp_path / "eager"), rtol=2e-3, atol=2e-3)
    assert graphs.metrics.val_loss == pytest.approx(eager.metrics.val_loss, rel=1e-2)


def test_bf16_autocast_trains_close_to_fp32(tmp_path) -> None:
    train(tmp_path / "fp32", *SMALL)
    bf16 = train(tmp_path / "bf16", *SMALL, "train.amp=true")
    first_fp32, first_bf16 = _losses(tmp_path / "fp32")[0], _losses(tmp_path / "bf16")[0]
    assert first_bf16 != first_fp32  # autocast did run in bf16
    assert first_bf16 == pytest.approx(first_fp32, rel=2e-2)  # bf16 keeps 8 bits of mantissa
    assert bf16.metrics.train_loss is not None and torch.isfinite(torch.tensor(bf16.metrics.train_loss))


@pytest.mark.process
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_parallel_sweep_jobs_train_on_different_gpus(tmp_path) -> None:
    import json

    from conftest import normbench

    done = normbench(
        "sweep", "norm=bn,gn", "device=cuda", "max_steps=2", "data.train_size=64", "data.val_size=32",
        "eval.precise_bn_images=16", "hydra/launcher=parallel", f"hydra.sweep.dir={tmp_path}",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    devices = sorted(json.loads(p.read_text())["device"] for p in tmp_path.glob("*/results.json"))
    assert devices == ["cuda:0", "cuda:1"]
