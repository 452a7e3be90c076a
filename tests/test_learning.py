"""Every model × norm pair the registry allows learns a small fixed problem: broken labels, a broken optimizer or
a norm wired wrongly cannot pass a test that only checks that a run completes."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import planned

from normbench.base.errors import ConfigError
from normbench.parts.data import ImageData
from normbench.parts.models import MODELS
from normbench.parts.norms import NORMS
from normbench.run.setup import build_model
from normbench.run.train import run

CLASSES, TRAIN, VAL, BATCH = 10, 1536, 256, 32  # one epoch of 48 steps, one validation
# Small widths: the wiring is what is tested, not capacity. A model missing here trains at its default size.
SMALL = {
    "mlp": ["model.width=64", "model.depth=2"],
    "cnn": ["model.widths=[8,16]"],
    "transformer": ["model.dim=32", "model.depth=1", "model.heads=2", "model.patch_size=8"],
}
# IN at widths 8/16 stays near chance for longer (each map loses its own mean and scale): wider, still seconds.
WIDER = {("cnn", "in"): ["model.widths=[16,32]"]}


def gratings(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class is the orientation (5) and frequency (2) of a grating at a random phase, under noise.

    Labels are drawn at random, so labels moved to other images are noise: nothing can be learned from them.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(CLASSES, (n,), generator=g)
    angle = (labels % 5).double() * math.pi / 5
    cycles = 2.0 + 3.0 * (labels // 5).double()
    phase = torch.rand(n, generator=g, dtype=torch.float64) * 2 * math.pi
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    along = xx * angle.cos()[:, None, None] + yy * angle.sin()[:, None, None]
    wave = torch.sin(2 * math.pi * cycles[:, None, None] / 32 * along + phase[:, None, None])
    images = wave[:, None].float() + 0.5 * torch.randn(n, 3, 32, 32, generator=g)
    return (128 + 50 * images).round().clamp(0, 255).to(torch.uint8), labels


def _pairs() -> list[object]:
    pairs = []
    for model, spec_model in MODELS.items():
        for norm, spec in NORMS.items():
            if spec_model.layout not in spec.axes:
                continue
            marks = []
            if model.startswith("resnet"):
                # 0.7 s per step at batch 32 on one core here: minutes per pair. The norms' placement in the
                # ResNets is tested in test_science, and every pair completes a few steps in test_run.
                marks.append(pytest.mark.skip(reason="ResNets take about 0.7 s per training step on CPU"))
            pairs.append(pytest.param(model, norm, marks=marks, id=f"{model}-{norm}"))
    return pairs


@pytest.fixture(scope="module")
def data() -> ImageData:
    (train_x, train_y), (val_x, val_y) = gratings(TRAIN, 1), gratings(VAL, 2)
    return ImageData("gratings", train_x, train_y, val_x, val_y, mean=(0.5,) * 3, std=(0.25,) * 3)


@pytest.mark.parametrize(("model", "norm"), _pairs())
def test_every_allowed_pair_beats_chance_within_48_steps(model, norm, data, tmp_path) -> None:
    try:
        plan = planned(
            tmp_path, f"model={model}", f"norm={norm}", *SMALL.get(model, []), *WIDER.get((model, norm), []),
            f"batch_size={BATCH}", "epochs=1", "max_steps=null", f"data.train_size={TRAIN}", f"data.val_size={VAL}",
            "data.augment=false", f"eval.batch_size={VAL}", "eval.bn_modes=false", "log.activations=false",
            "optim=adamw", "optim.lr=1e-2", "optim.lr_scaling=none",
        )  # fmt: skip
    except ConfigError as error:
        pytest.fail(f"model={model} norm={norm} does not compose: {error}")
    record = run(plan, build_model(plan), data=data)
    assert record.steps == TRAIN // BATCH
    assert record.metrics.val_acc >= 0.3, record.metrics  # chance is 0.1
