"""Data-parallel worker shares emulated on one device (`workers=W`): BN-family layers take their training
statistics per contiguous share of the batch, checked against float64 formulas written here, against what W
separate processes under DDP compute (separate W=1 copies, one per share, gradients averaged), and against
today's W=1 path bit for bit."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from torch import nn

from normbench.base.errors import ConfigError, NormError
from normbench.launch.compose import compose_config
from normbench.launch.naming import run_name
from normbench.parts.models import build_model, check_norm_shapes
from normbench.parts.models.cnn import CNN
from normbench.parts.norms import build_norm, register_norm
from normbench.parts.norms.layers import set_workers
from normbench.parts.norms.registry import NORMS, on
from normbench.run.board import run_hparams
from normbench.run.record import RunRecord
from normbench.run.train import run

SHAPES = {"vector": (16, 3), "image": (8, 3, 2, 2), "sequence": (8, 2, 3)}  # four shares: 4, 8, 4 values
CASES = [("bn", layout, impl) for layout in SHAPES for impl in ("torch", "reference")]
CASES += [("brn", layout, "reference") for layout in SHAPES]


def channels_last(x: torch.Tensor, layout: str) -> torch.Tensor:
    """(N, C, *) or (N, L, D) as (N, ..., C): the channel axis last, every other axis reduced over."""
    return x if layout == "sequence" else x.movedim(1, -1)


def share_formula(x: torch.Tensor, layout: str, workers: int, eps: float, brn: bool) -> torch.Tensor:
    """BatchNorm (γ = 1, β = 0) with each worker share normalized over itself, in float64: share by share. Batch
    Renorm from fresh running statistics (mean 0, var 1) with its limits fully open (r_max 3, d_max 5)."""
    out = []
    for share in channels_last(x.double(), layout).chunk(workers):
        flat = share.reshape(-1, share.shape[-1])
        mu = flat.mean(0)
        sigma_b = torch.sqrt(((flat - mu) ** 2).mean(0) + eps)
        y = (share - mu) / sigma_b
        if brn:
            sigma = torch.sqrt(torch.tensor(1.0 + eps, dtype=torch.float64))
            r = (sigma_b / sigma).clamp(1 / 3, 3).detach()
            d = (mu / sigma).clamp(-5, 5).detach()
            y = y * r + d
        out.append(y)
    y = torch.cat(out)
    return y if layout == "sequence" else y.movedim(-1, 1)


def layer(name: str, layout: str, impl: str, workers: int) -> nn.Module:
    options = {"warmup_steps": 0} if name == "brn" else {}
    module = build_norm(name, 3, layout, impl=impl, **options)  # type: ignore[arg-type]
    set_workers(module, workers)
    return module.train()


@pytest.mark.parametrize(("name", "layout", "impl"), CASES)
def test_each_share_is_normalized_over_itself_gradients_and_running_stats_from_share_zero(name, layout, impl) -> None:
    torch.manual_seed(0)
    n = SHAPES[layout][0]
    x = torch.randn(SHAPES[layout]) * 3 + torch.arange(float(n)).view(n, *[1] * (len(SHAPES[layout]) - 1))
    bn = layer(name, layout, impl, workers=4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x32 = x.clone().requires_grad_()
    upstream = torch.randn(SHAPES[layout])
    (bn(x32) * upstream).sum().backward()

    x64 = x.double().requires_grad_()
    gamma = bn.weight.detach().double().requires_grad_()
    beta = bn.bias.detach().double().requires_grad_()
    view = (lambda v: v) if layout == "sequence" else (lambda v: v.view(1, 3, *[1] * (x.dim() - 2)))
    x_hat = share_formula(x64, layout, 4, bn.eps, brn=name == "brn")
    y = x_hat * view(gamma) + view(beta)
    (y * upstream.double()).sum().backward()
    assert x32.grad is not None
    torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.weight.grad.double(), gamma.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.bias.grad.double(), beta.grad, rtol=1e-4, atol=1e-5)

    # Outputs, and the running statistics after exactly one update: share 0's alone (rank 0's buffers).
    fresh = layer(name, layout, impl, workers=4)
    with torch.no_grad():
        fresh.weight.copy_(bn.weight)
        fresh.bias.copy_(bn.bias)
        out = fresh(x.clone())
    torch.testing.assert_close(out.double(), y.detach(), rtol=1e-5, atol=1e-5)
    share0 = channels_last(x.double(), layout)[: n // 4].reshape(-1, 3)
    torch.testing.assert_close(fresh.running_mean.double(), 0.1 * share0.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fresh.running_var.double(), 0.9 + 0.1 * share0.var(0, unbiased=True), rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    assert int(fresh.num_batches_tracked) == 1
    assert set(fresh.state_dict()) == set(build_norm(name, 3, layout, impl=impl).state_dict())  # type: ignore[arg-type]


def small_model(name: str, impl: str) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), build_norm(name, 4, "image", impl=impl), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )  # fmt: skip


@pytest.mark.parametrize(("name", "impl"), [("bn", "torch"), ("bn", "reference"), ("brn", "reference")])
def test_emulated_workers_compute_what_ddp_computes_from_separate_shares(name: str, impl: str) -> None:
    """DDP: each of W processes runs the model on its share (W=1 there) and the gradients are averaged; rank 0's
    running statistics survive. Emulated: one forward of the whole batch, the loss its mean."""
    torch.manual_seed(2)
    x, y = torch.randn(8, 2, 4, 4), torch.randint(0, 3, (8,))
    emulated = small_model(name, impl).train()
    set_workers(emulated, 2)
    F.cross_entropy(emulated(x), y).backward()
    ranks = [small_model(name, impl).train() for _ in range(2)]
    for rank, share in zip(ranks, range(2), strict=True):
        F.cross_entropy(rank(x[share * 4 : (share + 1) * 4]), y[share * 4 : (share + 1) * 4]).backward()
    for (key, p), *per_rank in zip(emulated.named_parameters(), *(r.parameters() for r in ranks), strict=True):
        mean = torch.stack([q.grad for q in per_rank]).mean(0)  # type: ignore[misc]
        torch.testing.assert_close(p.grad, mean, rtol=1e-5, atol=1e-6, msg=key)
    for key, value in ranks[0].state_dict().items():
        if "running" in key or "tracked" in key:
            torch.testing.assert_close(emulated.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)


def train_steps(model: nn.Module, steps: int = 3) -> list[torch.Tensor]:
    torch.manual_seed(3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(steps):
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return losses


def test_one_worker_is_todays_batch_norm_bit_for_bit() -> None:
    """workers=1 (the default) runs PyTorch's own BatchNorm2d forward: the same losses and weights, bit for bit,
    as a model built with torch.nn.BatchNorm2d itself."""
    widths = {"widths": [4, 8]}
    torch.manual_seed(4)
    today = CNN(norm_layer=nn.BatchNorm2d, **widths)  # type: ignore[arg-type]
    torch.manual_seed(4)
    ours = build_model({"name": "cnn", **widths}, {"name": "bn"}, workers=1)
    assert all(torch.equal(a, b) for a, b in zip(train_steps(today), train_steps(ours), strict=True))
    mine = ours.state_dict()
    assert mine.keys() == today.state_dict().keys()
    assert all(torch.equal(v, mine[k]) for k, v in today.state_dict().items())


@pytest.mark.parametrize("norm", ["ln", "in", "gn", "rms", "none"])
def test_per_sample_norms_do_not_depend_on_the_workers(norm: str) -> None:
    options = {"groups": 2} if norm == "gn" else {}
    models = []
    for workers in (1, 4):
        torch.manual_seed(5)
        models.append(build_model({"name": "cnn", "widths": [4, 8]}, {"name": norm, **options}, workers=workers))
    losses = [train_steps(m, 2) for m in models]
    assert all(torch.equal(a, b) for a, b in zip(*losses, strict=True))
    first, second = (m.state_dict() for m in models)
    assert first.keys() == second.keys() and all(torch.equal(v, second[k]) for k, v in first.items())


def test_config_refuses_workers_that_do_not_divide_the_batch_or_leave_one_value() -> None:
    with pytest.raises(ConfigError, match=r"workers=3 does not divide batch_size=8.*Allowed workers .*: 1, 2, 4, 8"):
        compose_config([*TINY, "workers=3"])
    with pytest.raises(NormError, match=r"batch_size=8 with workers=8 \(1 image per worker\) with norm=bn on "
                       r"model=mlp.*use batch_size >= 16, fewer workers.*\(syncbn\)"):  # fmt: skip
        compose_config([*TINY, "workers=8", "model=mlp"])
    assert compose_config([*TINY, "workers=4", "model=mlp"]).workers == 4  # 2 images per worker
    assert compose_config([*TINY, "workers=8", "model=mlp", "norm=ln"]).workers == 8  # per sample: any share


class PlainBatchNorm(nn.BatchNorm1d):
    """A plugin's batch norm straight from torch: it has no per-share statistics."""


def test_a_plugin_batch_norm_without_per_share_statistics_is_refused_by_name() -> None:
    register_norm("plainbn", summary="plugin BN", layouts={"vector": on("N", torch=PlainBatchNorm)},
                  batch_statistics=True)(lambda cls, num_features: cls(num_features))  # fmt: skip
    try:
        check_norm_shapes({"name": "mlp", "width": 8, "depth": 1}, {"name": "plainbn"}, batch_size=8)  # W=1: fine
        with pytest.raises(NormError, match=r"workers=2 with norm=plainbn: its layer 'layer1.norm' \(PlainBatchNorm\)"
                           r" takes batch statistics but cannot take them per worker share"):  # fmt: skip
            check_norm_shapes({"name": "mlp", "width": 8, "depth": 1}, {"name": "plainbn"}, batch_size=8, workers=2)
    finally:
        del NORMS["plainbn"]


def test_record_run_name_and_hparams_say_workers_and_images_per_worker(tiny, tmp_path) -> None:
    cfg = tiny("workers=2", "model=mlp", "model.width=16", "model.depth=1")
    record = run(cfg, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert (saved["batch_size"], saved["workers"], saved["images_per_worker"]) == (8, 2, 4)
    assert RunRecord.read(tmp_path).workers == 2 and record.effective_lr == pytest.approx(0.1 * 8 / 128)
    assert record.budget is not None and record.budget.steps_per_epoch == 64 // 8  # the total batch
    hparams = run_hparams(cfg, 0.1)
    assert (hparams["batch_size"], hparams["workers"], hparams["images_per_worker"]) == (8, 2, 4)
    assert "workers" not in run_hparams(tiny(), 0.1)  # one worker, not swept: no columns
    assert run_name("bn", 16, ["norm=bn", "seed=1", "workers=8", "batch_size=16"], []) == "bn_b016_w008_seed001"


def test_precise_bn_and_copies_keep_the_per_share_setting_apart() -> None:
    model = build_model({"name": "mlp", "width": 8, "depth": 1}, {"name": "bn"}, workers=2)
    assert copy.deepcopy(model).layer1.norm.workers == 2  # type: ignore[union-attr]
    assert "workers" not in str(model.state_dict().keys())
