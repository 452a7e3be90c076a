"""Data-parallel worker shares emulated on one device (`workers=W`): BN-family layers take their training
statistics per contiguous share of the batch, checked against float64 formulas written here, against what W
separate processes under DDP compute (separate W=1 copies, one per share, gradients averaged), and against
today's W=1 path bit for bit."""

from __future__ import annotations

import itertools
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import TINY, planned, train
from torch import nn

from normbench.base.errors import ConfigError, NormError
from normbench.launch.compose import compose_run
from normbench.launch.preflight import without_hydra
from normbench.parts.data.batches import Batches
from normbench.parts.data.synthetic_images import make_synthetic
from normbench.parts.models import build_model as build
from normbench.parts.models.cnn import CNN
from normbench.parts.norms import build_norm, register_norm
from normbench.parts.norms.registry import NORMS, on
from normbench.parts.norms.shares import forward_in_shares, worker_shares
from normbench.plan.naming import run_name
from normbench.plan.plan import Launch, plan_run
from normbench.run.board import Board
from normbench.run.distributed import Ranks
from normbench.run.evaluation import PRECISE_BN_DRAW, batch_stats_accuracy, frozen_buffers, precise_bn
from normbench.run.monitor import Monitor
from normbench.run.record import RunRecord
from normbench.run.setup import build_model, set_up


def built(model_cfg: dict, norm_cfg: dict, workers: int = 1) -> nn.Module:
    """A model for CIFAR-shaped images (3×32×32, 10 classes)."""
    return build(model_cfg, norm_cfg, 3, (32, 32), 10, per_share=workers > 1)


def in_shares(module: nn.Module, workers: int, reorder: bool = True) -> Any:
    """`module` as a callable whose per-share layers take their statistics over `workers` shares: through the
    reordered batch (`forward_in_shares`: shares a view) or as contiguous shares of the batch as it is."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        if reorder:
            return forward_in_shares(module, x, workers)
        with worker_shares(workers):
            return module(x)

    return forward


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


def layer(name: str, layout: str, impl: str) -> nn.Module:
    options = {"warmup_steps": 0} if name == "brn" else {}
    return build_norm(name, 3, layout, impl=impl, **options).train()  # type: ignore[arg-type]


@pytest.mark.parametrize("reorder", [True, False])
@pytest.mark.parametrize(("name", "layout", "impl"), CASES)
def test_each_share_is_normalized_over_itself_gradients_and_running_stats_from_share_zero(
    name, layout, impl, reorder
) -> None:
    torch.manual_seed(0)
    n = SHAPES[layout][0]
    x = torch.randn(SHAPES[layout]) * 3 + torch.arange(float(n)).view(n, *[1] * (len(SHAPES[layout]) - 1))
    bn = layer(name, layout, impl)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x32 = x.clone().requires_grad_()
    upstream = torch.randn(SHAPES[layout])
    (in_shares(bn, 4, reorder)(x32) * upstream).sum().backward()

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
    fresh = layer(name, layout, impl)
    with torch.no_grad():
        fresh.weight.copy_(bn.weight)
        fresh.bias.copy_(bn.bias)
        out = in_shares(fresh, 4, reorder)(x.clone())
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
    F.cross_entropy(in_shares(emulated, 2)(x), y).backward()
    ranks = [small_model(name, impl).train() for _ in range(2)]
    for rank, share in zip(ranks, range(2), strict=True):
        F.cross_entropy(rank(x[share * 4 : (share + 1) * 4]), y[share * 4 : (share + 1) * 4]).backward()
    for (key, p), *per_rank in zip(emulated.named_parameters(), *(r.parameters() for r in ranks), strict=True):
        mean = torch.stack([q.grad for q in per_rank]).mean(0)  # type: ignore[misc]
        torch.testing.assert_close(p.grad, mean, rtol=1e-5, atol=1e-6, msg=key)
    for key, value in ranks[0].state_dict().items():
        if "running" in key or "tracked" in key:
            torch.testing.assert_close(emulated.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)


def train_steps(model: nn.Module, steps: int = 3, workers: int = 1) -> list[torch.Tensor]:
    torch.manual_seed(3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(steps):
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
        loss = F.cross_entropy(in_shares(model, workers)(x), y)
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
    today = CNN(norm_layer=lambda c, act=True: nn.BatchNorm2d(c), act_layer=lambda: nn.ReLU(inplace=True),
                conv_layer=nn.Conv2d, in_channels=3, num_classes=10, **widths)  # type: ignore[arg-type]  # fmt: skip
    torch.manual_seed(4)
    ours = built({"name": "cnn", **widths}, {"name": "bn"})
    assert all(torch.equal(a, b) for a, b in zip(train_steps(today), train_steps(ours), strict=True))
    mine = ours.state_dict()
    assert mine.keys() == today.state_dict().keys()
    assert all(torch.equal(v, mine[k]) for k, v in today.state_dict().items())


@pytest.mark.parametrize("norm", ["ln", "in", "gn", "rms", "none"])
def test_per_sample_norms_do_not_depend_on_the_workers(norm: str, tmp_path) -> None:
    """Their plans take no shares (the batch is not even reordered), so the runs are the same bit for bit."""
    options = {"groups": 2} if norm == "gn" else {}
    models = []
    for workers in (1, 4):
        plan = planned(tmp_path, f"norm={norm}", *(f"norm.{k}={v}" for k, v in options.items()), f"workers={workers}")
        assert plan.shares == 1
        torch.manual_seed(5)
        models.append(built({"name": "cnn", "widths": [4, 8]}, {"name": norm, **options}, workers))
    losses = [train_steps(m, 2) for m in models]
    assert all(torch.equal(a, b) for a, b in zip(*losses, strict=True))
    first, second = (m.state_dict() for m in models)
    assert first.keys() == second.keys() and all(torch.equal(v, second[k]) for k, v in first.items())


def test_config_refuses_workers_that_do_not_divide_the_batch_or_leave_one_value(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"workers=3 does not divide batch_size=8.*Allowed workers .*: 1, 2, 4, 8"):
        planned(tmp_path, "workers=3")
    with pytest.raises(NormError, match=r"batch_size=8 with workers=8 \(1 image per worker\) with norm=bn on "
                       r"model=mlp.*a larger batch_size, fewer workers.*\(syncbn\)"):  # fmt: skip
        build_model(planned(tmp_path, "workers=8", "model=mlp"))
    assert build_model(planned(tmp_path, "workers=4", "model=mlp"))  # 2 images per worker
    assert build_model(planned(tmp_path, "workers=8", "model=mlp", "norm=ln"))  # per sample: any share


class PlainBatchNorm(nn.BatchNorm1d):
    """A plugin's batch norm straight from torch: it has no per-share statistics."""


def test_a_plugin_batch_norm_without_per_share_statistics_is_refused_by_name() -> None:
    register_norm("plainbn", summary="plugin BN", layouts={"vector": on("N", torch=PlainBatchNorm)},
                  batch_statistics=True)(lambda cls, num_features: cls(num_features))  # fmt: skip
    try:
        built({"name": "mlp", "width": 8, "depth": 1}, {"name": "plainbn"}, workers=1)  # one worker: fine
        refused = r"workers > 1 with norm=plainbn: its layer 'layer1.norm' \(PlainBatchNorm\) takes batch statistics"
        with pytest.raises(NormError, match=refused + " but cannot take them per worker share"):
            built({"name": "mlp", "width": 8, "depth": 1}, {"name": "plainbn"}, workers=2)
    finally:
        NORMS.unregister("plainbn")


def test_record_run_name_and_hparams_say_workers_and_images_per_worker(tmp_path) -> None:
    overrides = ("workers=2", "model=mlp", "model.width=16", "model.depth=1")
    record = train(tmp_path, *overrides)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert (saved["batch_size"], saved["workers"], saved["images_per_worker"]) == (8, 2, 4)
    assert saved["title"] == "mlp / bn, batch 8 = 2 workers × 4 images"
    assert RunRecord.read(tmp_path).workers == 2 and record.effective_lr == pytest.approx(0.1 * 8 / 128)
    assert record.budget is not None and record.budget.steps_per_epoch == 64 // 8  # the total batch
    hparams = planned(tmp_path, *overrides).hparams
    assert (hparams["batch_size"], hparams["workers"], hparams["images_per_worker"]) == (8, 2, 4)
    assert planned(tmp_path).hparams["workers"] == 1  # one worker: the same columns, every run alike
    assert run_name("bn", 16, 8, ["norm=bn", "seed=1", "workers=8", "batch_size=16"], []) == "bn_b002x08_seed001"


def test_monitor_shows_share_zero_and_precise_bn_takes_whole_batches(tmp_path) -> None:
    """The monitor's BN batch statistics are share 0's (the ones the running statistics follow); PreciseBN
    re-estimates population statistics over whole batches on a copy, the model keeping its shares."""
    torch.manual_seed(8)
    model = built({"name": "mlp", "width": 8, "depth": 1}, {"name": "bn"}, workers=2).train()
    monitor = Monitor(model, Board(tmp_path), points=1, most=100, total_steps=1, layout="vector")
    monitor.attach()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        forward_in_shares(model, x, 2)
        h = model.layer1.fc(x.flatten(1)).double()  # type: ignore[operator]
    _, _, (mean, var) = monitor.captured["layer1.norm"]
    monitor.close()
    torch.testing.assert_close(mean.double(), h[:4].mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var.double(), h[:4].var(0, unbiased=False), rtol=1e-4, atol=1e-5)
    data = make_synthetic(32, 8)
    batches = Batches(data.train_images, data.train_labels, 8, data.mean, data.std, torch.device("cpu"), train=True)
    precise = precise_bn(model, batches, 1)
    with torch.no_grad():
        h = precise.layer1.fc(next(batches.epoch(PRECISE_BN_DRAW))[0].flatten(1))  # type: ignore[operator]
    torch.testing.assert_close(precise.layer1.norm.running_mean, h.mean(0))  # type: ignore[union-attr]
    assert "workers" not in str(model.state_dict().keys())


# --- syncbn across real processes ---------------------------------------------------------------------------

SYNC_SHAPES = {"vector": (8, 3), "image": (4, 3, 3, 3), "sequence": (4, 3, 3)}  # the total batch: two shares
WORLD = 2


def sync_inputs(layout: str, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The total batch of a step (mean far from 0, as after a ReLU) and the upstream gradient."""
    torch.manual_seed(10 + step)
    return torch.randn(SYNC_SHAPES[layout]) * 2 + 3, torch.randn(SYNC_SHAPES[layout])


def sync_cases(device: str, impl: str, layout: str, rank: int, world: int) -> dict[str, torch.Tensor]:
    """Two training steps of a syncbn (or, with world=1, a bn) layer on this rank's share; the γ/β gradients
    summed over the ranks, as the gradient of the total batch's summed loss."""
    name = "syncbn" if world > 1 else "bn"
    layer = build_norm(name, 3, layout, impl=impl).to(device).train()  # type: ignore[arg-type]
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    out: dict[str, torch.Tensor] = {}
    for step in range(2):
        x, g = sync_inputs(layout, step)
        k = x.shape[0] // world
        share = x[rank * k : (rank + 1) * k].to(device).requires_grad_()
        layer.zero_grad()
        y = layer(share)
        (y * g[rank * k : (rank + 1) * k].to(device)).sum().backward()
        out |= {f"y{step}": y.detach().cpu(), f"dx{step}": share.grad.cpu()}  # type: ignore[union-attr]
        for key, p in (("dw", layer.weight), ("db", layer.bias)):
            grad = p.grad.detach().clone()  # type: ignore[union-attr]
            if world > 1:
                dist.all_reduce(grad)
            out[f"{key}{step}"] = grad.cpu()
    out |= {k: v.cpu() for k, v in layer.state_dict().items() if k.startswith(("running", "num_batches"))}
    return out


def sync_rank(rank: int, world: int, port: int, out: str) -> None:
    """One process of the gloo group: every (device, impl, layout) case, saved for the test to compare."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
        results = {
            (device, impl, layout): sync_cases(device, impl, layout, rank, world)
            for device in devices
            for impl in ("torch", "reference")
            for layout in SYNC_SHAPES
        }
        results["ddp"] = ddp_steps(rank, world)
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def ddp_batches(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(20 + step)
    return torch.randn(8, 2, 4, 4) * 2 + 1, torch.randint(0, 3, (8,))


def ddp_steps(rank: int, world: int, steps: int = 3) -> dict[str, torch.Tensor]:
    """Three SGD steps of the small bn model under PyTorch's DDP (broadcast_buffers=True, its default), this
    rank training on its contiguous share: each step's loss (the mean over the total batch), then the weights
    and this rank's buffers."""
    model = nn.parallel.DistributedDataParallel(small_model("bn", "torch").train())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for step in range(steps):
        x, y = ddp_batches(step)
        k = len(y) // world
        loss = F.cross_entropy(model(x[rank * k : (rank + 1) * k]), y[rank * k : (rank + 1) * k])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mean = loss.detach().clone() / world
        dist.all_reduce(mean)
        losses.append(mean)
    return {"losses": torch.stack(losses), **{k: v.detach().clone() for k, v in model.module.state_dict().items()}}


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> list[dict[Any, dict[str, torch.Tensor]]]:
    """The results of each of two gloo processes on localhost (a free port), each given half of the batch."""
    out = tmp_path_factory.mktemp("syncbn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(sync_rank, args=(WORLD, port, str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def assert_rank_matches_one_process(result: dict[str, torch.Tensor], one: dict[str, torch.Tensor], rank: int) -> None:
    for key, value in result.items():
        expected = one[key]
        if key.startswith(("y", "dx")):  # this rank's rows of the total batch
            expected = expected.chunk(WORLD)[rank]
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5, msg=key)


@pytest.mark.process
@pytest.mark.parametrize("impl", ["torch", "reference"])
@pytest.mark.parametrize("layout", list(SYNC_SHAPES))
def test_syncbn_across_two_gloo_processes_is_bn_over_the_total_batch(synced, impl: str, layout: str) -> None:
    """Outputs, input gradients, γ/β gradients (summed over the ranks) and running statistics after two steps
    equal those of bn in one process over the total batch (impl=torch here: PyTorch's own BatchNorm)."""
    one = sync_cases("cpu", "torch", layout, rank=0, world=1)
    for rank in range(WORLD):
        assert_rank_matches_one_process(synced[rank][("cpu", impl, layout)], one, rank)


@pytest.mark.process
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("layout", list(SYNC_SHAPES))
def test_syncbn_formula_version_equals_torch_sync_batch_norm_on_cuda(synced, layout: str) -> None:
    """On CUDA impl=torch is nn.SyncBatchNorm itself; impl=reference is the formula version: they agree."""
    for rank in range(WORLD):
        formula, torch_sync = synced[rank][("cuda", "reference", layout)], synced[rank][("cuda", "torch", layout)]
        for key, value in formula.items():
            torch.testing.assert_close(value, torch_sync[key], rtol=1e-5, atol=1e-5, msg=key)
        assert_rank_matches_one_process(formula, sync_cases("cpu", "torch", layout, rank=0, world=1), rank)


@pytest.mark.process
@pytest.mark.parametrize("impl", ["torch", "reference"])
def test_emulated_workers_equal_a_real_two_process_ddp_run(synced, impl: str) -> None:
    """The same three steps with workers=2 emulated in one process: the same per-step losses, weights, and
    running statistics as rank 0's under DDP (the evaluated model). Rank 1's buffers differ: they are the
    broadcast ones updated from share 1, which the next forward would overwrite."""
    model = small_model("bn", impl).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for step in range(3):
        x, y = ddp_batches(step)
        loss = F.cross_entropy(in_shares(model, 2)(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    rank0, rank1 = (synced[r]["ddp"] for r in range(WORLD))
    torch.testing.assert_close(torch.stack(losses), rank0["losses"], rtol=1e-5, atol=1e-6)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, rank0[key], rtol=1e-5, atol=1e-5, msg=key)
    assert not torch.allclose(rank1["1.running_mean"], rank0["1.running_mean"])


def test_syncbn_in_one_process_is_bn_and_ignores_emulated_workers() -> None:
    """Emulated workers on one device: syncbn normalizes the whole batch, as bn at workers=1 does, even inside a
    forward that takes 4 shares."""
    models = []
    for norm, workers in (("bn", 1), ("syncbn", 4)):
        torch.manual_seed(6)
        models.append((built({"name": "cnn", "widths": [4, 8]}, {"name": norm}, workers), workers))
    losses = [train_steps(m, 2, workers) for m, workers in models]
    models = [m for m, _ in models]
    torch.testing.assert_close(torch.stack(losses[0]), torch.stack(losses[1]), rtol=1e-6, atol=1e-6)
    first, second = (m.state_dict() for m in models)
    assert first.keys() == second.keys()
    for key, value in first.items():
        torch.testing.assert_close(value, second[key], rtol=1e-5, atol=1e-6, msg=key)


# --- batch-statistics validation, grouped -------------------------------------------------------------------


def logits_of(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Every forward's output in the batch's order, as the evaluation gets it (it only returns an accuracy)."""
    from normbench.run import evaluation

    seen: list[torch.Tensor] = []

    def recorded(model: Any, x: torch.Tensor, count: int) -> torch.Tensor:
        out = forward_in_shares(model, x, count)
        seen.append(out.detach().clone())
        return out

    monkeypatch.setattr(evaluation, "forward_in_shares", recorded)
    return seen


@pytest.mark.parametrize(
    ("model_cfg", "norm"),
    [
        ({"name": "mlp", "width": 8, "depth": 2}, {"name": "bn"}),
        ({"name": "mlp", "width": 8, "depth": 2}, {"name": "brn", "warmup_steps": 0}),
        ({"name": "cnn", "widths": [4, 8]}, {"name": "bn", "impl": "reference"}),
        ({"name": "mlp", "width": 8, "depth": 2}, {"name": "syncbn"}),
    ],
)
@pytest.mark.parametrize("images", [24, 23, 21, 17])  # whole shares; a last share of 3; of 1 (twice)
def test_grouped_batch_statistics_validation_equals_the_loop_over_shares(
    model_cfg, norm, images: int, monkeypatch
) -> None:
    """One forward per chunk of up to 8 images, statistics per share of 4, against one forward per share of 4
    (each from the trained running statistics). A last image alone joins the share before it."""
    torch.manual_seed(7)
    model = built(model_cfg, norm, workers=2).train()
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if "running" in name:
                buffer.uniform_(0.5, 1.5)
    data = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8)
    common = dict(mean=(0.5,) * 3, std=(0.25,) * 3, device=torch.device("cpu"), train=False)
    shares = Batches(data, torch.zeros(images, dtype=torch.long), 4, **common)
    x = torch.cat([b for b, _ in shares.rebatched(images).epoch()])
    cuts = [*range(0, images, 4), images]
    if images % 4 == 1:
        cuts.remove(images - 1)  # one image left: with the share before it
    loop = []
    with torch.no_grad():
        for start, stop in itertools.pairwise(cuts):
            with frozen_buffers(model):
                loop.append(model(x[start:stop]))
    expected = torch.cat(loop)
    grouped = logits_of(monkeypatch)
    shares.labels = expected.argmax(1)
    assert batch_stats_accuracy(model, shares, most=8) == 1.0
    torch.testing.assert_close(torch.cat(grouped), expected, rtol=1e-5, atol=1e-5)
    if norm["name"] == "syncbn":  # statistics over all shares: the loop itself
        assert len(grouped) == len(cuts) - 1
    else:  # chunks of two shares, and at most one forward more for the last share
        assert len(grouped) <= -(-images // 8) + 1


def test_a_process_emulates_the_workers_it_does_not_leave_to_others(tmp_path) -> None:
    """Under torch.distributed a process emulates workers / processes shares (1 with a process per worker)."""
    cfg = without_hydra(compose_run([*TINY, "workers=4", "model=mlp", "model.width=8", "model.depth=1"]))
    for processes, emulated in ((1, 4), (2, 2), (4, 1)):
        plan = plan_run(cfg, tmp_path, Launch(mode="torchrun", processes=processes))
        assert plan.shares == emulated
        setup = set_up(plan, build_model(plan), ranks=Ranks(rank=0, world=processes))  # no process group: no DDP
        assert setup.optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 8 / 128)  # the optimizer's total batch
        assert setup.val_at_train_batch_size is not None and setup.val_at_train_batch_size.batch_size == 2


@pytest.mark.parametrize(
    "options", [{"affine": False}, {"track_running_stats": False}, {"momentum": None}], ids=lambda o: str(o)
)
@pytest.mark.parametrize("impl", ["torch", "reference"])
def test_the_reordered_batch_and_contiguous_shares_agree_for_every_bn_option(options: dict, impl: str) -> None:
    """Two steps through the reordered batch (`forward_in_shares`: shares a view) and as contiguous shares (checked
    against the formula above): outputs, input gradients, buffers."""
    layers = []
    for reorder in (True, False):
        module = build_norm("bn", 3, "image", impl=impl, **options).train()  # type: ignore[arg-type]
        layers.append((module, in_shares(module, 4, reorder)))
    for step in range(2):
        torch.manual_seed(step)
        x, g = torch.randn(8, 3, 2, 2) + step, torch.randn(8, 3, 2, 2)
        outs = []
        for _, forward in layers:
            xi = x.clone().requires_grad_()
            y = forward(xi)
            (y * g).sum().backward()
            outs.append((y.detach(), xi.grad))
        for a, b in zip(*outs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for (key, a), b in zip(layers[0][0].state_dict().items(), layers[1][0].state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)
