"""The literature's CIFAR ResNet, the published reference points, and the sweep presets of docs/science.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import ROOT, normbench, planned, setup, train

from normbench.base.errors import ConfigError
from normbench.launch.compose import compose_unchecked
from normbench.launch.preflight import plan_sweep
from normbench.parts.models import NORM_SLOT, count_parameters
from normbench.parts.models import build_model as build
from normbench.parts.norms import NORMS
from normbench.run import record as R


def build_model(model_cfg: dict, norm_cfg: dict) -> torch.nn.Module:
    return build(model_cfg, norm_cfg, 3, (32, 32), 10)


# He et al. 2016, Table 6: parameters of the CIFAR-10 ResNets by depth.
PAPER_PARAMS = {20: 0.27e6, 32: 0.46e6, 56: 0.85e6}
IMAGE_NORMS = [n for n, spec in NORMS.items() if "image" in spec.axes]


def resnet_parameters(depth: int) -> int:
    """Counted by hand from §4.2: bias-free 3×3 convs, γ and β per norm channel, a 64→10 linear layer."""
    n = (depth - 2) // 6
    convs = 3 * 16 + 16 * 16 * 2 * n + 16 * 32 + 32 * 32 * (2 * n - 1) + 32 * 64 + 64 * 64 * (2 * n - 1)
    norms = 16 + 2 * n * (16 + 32 + 64)
    return 9 * convs + 2 * norms + 64 * 10 + 10


@pytest.mark.parametrize("depth", [20, 32, 56])
def test_resnet_parameter_counts_match_the_paper(depth: int) -> None:
    model = build_model({"name": f"resnet{depth}"}, {"name": "bn"})
    assert count_parameters(model) == resnet_parameters(depth)
    assert abs(count_parameters(model) / PAPER_PARAMS[depth] - 1) < 0.02
    assert resnet_parameters(20) == 269_722


@pytest.mark.parametrize("norm", IMAGE_NORMS)
def test_every_image_norm_builds_in_resnet20_at_its_named_places(norm: str) -> None:
    model = build_model({"name": "resnet20"}, {"name": norm})
    slots = [name for name, m in model.named_modules() if getattr(m, NORM_SLOT, False)]
    assert len(slots) == 19  # the stem's norm and two per block, 3 stages × 3 blocks
    assert slots[0] == "norm" and "stage2.block1.norm1" in slots and slots[-1] == "stage3.block3.norm2"
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_option_a_shortcut_is_a_subsampled_zero_padded_identity() -> None:
    block = build_model({"name": "resnet20"}, {"name": "none"}).stage2.block1
    x = torch.randn(2, 16, 32, 32)
    out = block.shortcut(x)
    assert out.shape == (2, 32, 16, 16)
    assert torch.equal(out[:, 8:24], x[:, :, ::2, ::2])
    assert not out[:, :8].any() and not out[:, 24:].any()


def test_resnet_layers_keep_the_map_sizes_of_the_paper() -> None:
    model = build_model({"name": "resnet20"}, {"name": "bn"})
    sizes = {}
    for name in ("stage1", "stage2", "stage3"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: sizes.__setitem__(name, tuple(o.shape)))
    model(torch.randn(2, 3, 32, 32))
    assert sizes == {"stage1": (2, 16, 32, 32), "stage2": (2, 32, 16, 16), "stage3": (2, 64, 8, 8)}


def test_resnet20_completes_a_three_step_run(tmp_path) -> None:
    record = train(tmp_path, "model=resnet20", "norm=gn")
    assert record.status == R.COMPLETED and record.steps == 3 and record.model == "resnet20"


# --- Published references -------------------------------------------------------------------------------


def test_reference_data_are_the_published_numbers() -> None:
    refs = json.loads((ROOT / "normbench" / "run" / "references.json").read_text())
    gn_paper = refs["groupnorm-resnet50"]["points"]
    assert [gn_paper["bn"][b][0] for b in ("32", "16", "8", "4", "2")] == [23.6, 23.7, 24.8, 27.3, 34.7]
    assert [gn_paper["gn"][b][0] for b in ("32", "16", "8", "4", "2")] == [24.1, 24.2, 24.0, 24.2, 24.1]
    cifar = refs["cifar10-resnet20"]["points"]  # 5 seeds per point; their means are the sweep's table
    assert all(len(v) == 5 for norm in cifar.values() for v in norm.values())
    means = {n: [round(sum(cifar[n][b]) / 5, 1) for b in ("32", "16", "8", "4", "2")] for n in cifar}
    assert means == {"bn": [86.4, 86.4, 86.1, 84.8, 80.3], "gn": [86.0, 85.7, 85.8, 86.0, 85.8]}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """Two tiny runs (bn and gn) as a sweep directory holds them."""
    root = tmp_path_factory.mktemp("sweep")
    for norm in ("bn", "gn"):
        train(root / f"norm={norm}", "data.train_size=32", "data.val_size=16", "max_steps=2",
              "eval.precise_bn_images=8", "log.activations=false", f"norm={norm}")  # fmt: skip
    return root


def test_report_draws_the_published_points_with_their_citation(sweep_dir, monkeypatch) -> None:
    import matplotlib.axes

    drawn: list[tuple[list, list]] = []
    original = matplotlib.axes.Axes.errorbar

    def spy(self, x, y, *args, **kwargs):
        drawn.append((list(x), list(y)))
        return original(self, x, y, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    from normbench.run.references import load_reference
    from normbench.run.report import write_report

    _, figures, report = write_report(sweep_dir, load_reference("groupnorm-resnet50"))
    assert ([2, 4, 8, 16, 32], [34.7, 27.3, 24.8, 23.7, 23.6]) in drawn  # BN, as error %, in batch order
    assert ([2, 4, 8, 16, 32], [24.1, 24.2, 24.0, 24.2, 24.1]) in drawn
    assert (sweep_dir / "error_vs_batch.png") in figures and (sweep_dir / "error_vs_batch.png").stat().st_size > 0
    assert "Wu and K. He" in report.read_text() and "arXiv:1803.08494" in report.read_text()

    drawn.clear()
    write_report(sweep_dir, load_reference("cifar10-resnet20"))
    bn_at_2 = next(y[0] for x, y in drawn if len(x) == 5 and y[0] > 19)  # 100 − mean accuracy over 5 seeds
    assert bn_at_2 == pytest.approx(100 - 80.30, abs=0.01)


@pytest.mark.process
def test_report_command_with_a_reference_and_an_unknown_name(sweep_dir, tmp_path) -> None:
    done = normbench("report", str(sweep_dir), "--reference", "cifar10-resnet20", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BeFranke/GroupNorm" in (sweep_dir / "report.md").read_text()
    bad = normbench("report", str(sweep_dir), "--reference", "resnet-paper", cwd=tmp_path)
    assert bad.returncode == 2
    assert "--reference resnet-paper" in bad.stdout and "groupnorm-resnet50" in bad.stdout
    assert "cifar10-resnet20" in bad.stdout and "Traceback" not in bad.stdout + bad.stderr


# --- Presets --------------------------------------------------------------------------------------------


def test_paper_preset_is_the_papers_design_on_eight_workers() -> None:
    cfg = compose_unchecked(["sweep=paper"], with_hydra=True)
    assert (cfg.model.name, cfg.data.name, cfg.epochs, cfg.workers) == ("resnet20", "cifar10", 100, 8)
    assert (cfg.optim.lr, cfg.optim.base_batch_size, cfg.optim.lr_scaling) == (0.1, 256, "linear")
    assert (cfg.optim.schedule, list(cfg.optim.milestones), cfg.optim.gamma) == ("step", [0.3, 0.6, 0.9], 0.1)
    params = dict(cfg.hydra.sweeper.params)
    assert params == {"norm": "bn,gn", "batch_size": "16,32,64,128,256", "seed": "0,1,2,3,4"}
    optim = typed_optim(cfg.optim)
    for total in (16, 256):  # lr = 0.1 · images per worker / 32: the public sweep's per-GPU rule
        assert optim.effective_lr(total) == pytest.approx(0.1 * (total // 8) / 32)


PRESETS = sorted(p.stem for p in (ROOT / "configs" / "sweep").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_passes_the_real_preflight(preset, tmp_path, monkeypatch) -> None:
    """Every run of every preset composed and validated by the pre-flight `normbench sweep` runs; the run names
    are distinct. CIFAR-10 (sweep=paper) is faked by an empty archive directory: its presence is what is checked."""
    extra = []
    if preset == "paper":
        (tmp_path / "data" / "cifar-10-batches-py").mkdir(parents=True)
        for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                     "batches.meta"):  # fmt: skip
            (tmp_path / "data" / "cifar-10-batches-py" / name).write_bytes(b"")
        extra = [f"data.root={tmp_path / 'data'}"]
    if preset == "tune_lr":
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    if preset in ("paper", "converged"):  # ResNet-20 checks take a second per run: one seed (it changes no shape)
        extra.append("seed=0")
    args = [f"sweep={preset}", f"hydra.sweep.dir={tmp_path / 'sweep'}", *extra]
    names = plan_sweep(args, lambda directory: "normbench sweep ...", create=False).runs
    grid = dict(compose_unchecked([f"sweep={preset}"], with_hydra=True).hydra.sweeper.params)
    grid |= {"seed": "0"} if "seed=0" in extra else {}
    expected = 0 if preset == "tune_lr" else math.prod(len(str(v).split(",")) for v in grid.values())
    assert len(names) == len(set(names)) == expected


def test_converged_preset_runs_at_a_tiny_scale(tmp_path) -> None:
    cfg = compose_unchecked(["sweep=converged"], with_hydra=True)
    assert (cfg.model.name, cfg.data.name) == ("resnet20", "synthetic")
    assert dict(cfg.hydra.sweeper.params) == {"norm": "bn,gn,ln", "batch_size": "2,32", "seed": "0,1"}
    record = train(tmp_path, "sweep=converged", "batch_size=2", "norm=ln", "max_steps=2", "data.train_size=16",
                   "data.val_size=8", "eval.precise_bn_images=8")  # fmt: skip
    assert record.status == R.COMPLETED


def test_the_step_schedule_is_torchs_multistep_at_the_paper_fractions(tmp_path) -> None:
    """optim.schedule=step with milestones 0.3, 0.6, 0.9 of a 20-step budget: PyTorch's MultiStepLR at steps 6, 12,
    18 (÷10 each), the GroupNorm paper's epochs 30/60/90 of 100 scaled to the budget."""
    built = setup("budget=steps", "max_steps=20", "optim.schedule=step", "optim.milestones=[0.3,0.6,0.9]",
                  "optim.lr_scaling=none", "optim.lr=0.1")  # fmt: skip
    oracle = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    multistep = torch.optim.lr_scheduler.MultiStepLR(oracle, milestones=[6, 12, 18], gamma=0.1)
    for _ in range(20):
        assert built.optimizer.param_groups[0]["lr"] == pytest.approx(oracle.param_groups[0]["lr"], rel=1e-12)
        built.optimizer.step(), built.scheduler.step(), oracle.step(), multistep.step()
    assert oracle.param_groups[0]["lr"] == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match=r"optim.milestones=\[0.5,1.5\] is not valid"):
        planned(tmp_path, "optim.milestones=[0.5,1.5]")


def typed_optim(node: object) -> object:
    """A composed optim node as its optimizer's class."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(node)
