"""The norm-activation layers (frn, evonorm_s0, evonorm_b0) and Weight Standardization (`model.ws`): each against a
float64 formula written here and against timm's implementation (the test oracle: a dev dependency that normbench
itself never imports), forward and gradients, every layout it supports, train and eval, and EvoNorm-B0 per worker
share; then how they sit in the models, the evaluations, the monitor, the names and the reports.

Tolerances: the float64 layer against the float64 formula to 1e-10 (the same arithmetic, another order); the float32
layer against the formula and against timm to float32's 1e-5 (outputs) and 1e-4 (gradients, sums over a batch)."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
import torch
from conftest import ROOT, events, train
from torch import Tensor, nn

from normbench.base.errors import ConfigError, NormError
from normbench.parts.models import MODELS, NORM_SLOT, build_model
from normbench.parts.models.convs import CONVS, compared, conv_layer, register_conv
from normbench.parts.models.ws import StdConv2d, standardized
from normbench.parts.norms import NORMS, build_norm, explain, get_norm, on, register_norm
from normbench.parts.norms.shares import PerShare, worker_shares
from normbench.plan.naming import run_name, split_label
from normbench.run.evaluation import PRECISE_BN_DRAW, frozen_buffers, groupable, has_running_stats, precise_bn

NORM_ACT = [name for name, spec in NORMS.items() if spec.activation]
SHAPE = (4, 16, 5, 3)  # (N, C, H, W): 15 positions, 16 channels
GROUPS = 4  # evonorm_s0's groups in these tests: 4 channels per group


def options(name: str) -> dict[str, object]:
    return {"groups": GROUPS} if "groups" in get_norm(name).options else {}


def randomized(layer: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial parameters (v and γ around 1, β and τ around 0), so that each one's effect and gradient show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if name in ("weight", "v") else 0.0))
    return layer


# --- float64 formulas, written from the papers ----------------------------------------------------------------


def view(v: Tensor) -> Tensor:
    return v.double().view(1, -1, 1, 1)


def frn_formula(x: Tensor, layer: nn.Module) -> Tensor:
    """FRN: ν² = mean of x² over H, W; y = γ x / sqrt(ν² + eps) + β; TLU z = max(y, τ)."""
    nu2 = (x * x).mean(dim=(2, 3), keepdim=True)
    y = view(layer.weight) * x / torch.sqrt(nu2 + layer.eps) + view(layer.bias)
    return y if layer.tau is None else torch.maximum(y, view(layer.tau))


def s0_formula(x: Tensor, layer: nn.Module) -> Tensor:
    """EvoNorm-S0: x · sigmoid(v x) / sqrt(var over (C/G, H, W) + eps) · γ + β; without its activation γ x + β."""
    if layer.v is None:
        return view(layer.weight) * x + view(layer.bias)
    n, c, h, w = x.shape
    grouped = x.reshape(n, layer.groups, c // layer.groups * h * w)
    centred = grouped - grouped.mean(dim=2, keepdim=True)
    std = torch.sqrt((centred * centred).mean(dim=2) + layer.eps).repeat_interleave(c // layer.groups, dim=1)
    return x * torch.sigmoid(view(layer.v) * x) / std.view(n, c, 1, 1) * view(layer.weight) + view(layer.bias)


def b0_formula(x: Tensor, layer: nn.Module, batch_var: Tensor) -> Tensor:
    """EvoNorm-B0: x / max(sqrt(var_b + eps), v x + sqrt(var_s + eps)) · γ + β, var_s per sample and channel over
    H, W; `batch_var` is var_b (the batch's in training, the running one in eval). Without its activation γ x + β."""
    if layer.v is None:
        return view(layer.weight) * x + view(layer.bias)
    centred = x - x.mean(dim=(2, 3), keepdim=True)
    instance_std = torch.sqrt((centred * centred).mean(dim=(2, 3), keepdim=True) + layer.eps)
    denominator = torch.maximum(torch.sqrt(view(batch_var) + layer.eps), view(layer.v) * x + instance_std)
    return x / denominator * view(layer.weight) + view(layer.bias)


def biased_var(x: Tensor) -> Tensor:
    centred = x - x.mean(dim=(0, 2, 3), keepdim=True)
    return (centred * centred).mean(dim=(0, 2, 3))


def check_against(
    layer: nn.Module, formula: Callable[[Tensor], Tensor], x: Tensor, atol: float, grad_atol: float
) -> None:
    """The layer's output and its gradients (input and every parameter) against the formula's, through autograd on
    both sides with the same upstream gradient; the formula runs in float64 on float64 copies of the parameters."""
    x1 = x.clone().requires_grad_()
    x2 = x.double().clone().requires_grad_()
    shadow = copy.deepcopy(layer).double()  # the formula's parameters: float64 leaves of their own
    y1, y2 = layer(x1), formula(x2, shadow)
    torch.testing.assert_close(y1.double(), y2, atol=atol, rtol=atol)
    upstream = torch.randn(y2.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    y1.backward(upstream.to(y1.dtype))
    y2.backward(upstream)
    torch.testing.assert_close(x1.grad.double(), x2.grad, atol=grad_atol, rtol=grad_atol)
    for (name, p1), (_, p2) in zip(layer.named_parameters(), shadow.named_parameters(), strict=True):
        torch.testing.assert_close(p1.grad.double(), p2.grad, atol=grad_atol, rtol=grad_atol, msg=name)
        p1.grad = None


def inputs(seed: int, shape: tuple[int, ...] = SHAPE, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 + 0.5


PRECISION = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-4)}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("act", [True, False], ids=["act", "no_act"])
@pytest.mark.parametrize("name", ["frn", "evonorm_s0"])
def test_per_sample_norm_act_layers_match_their_formulas(name: str, act: bool, dtype: torch.dtype) -> None:
    """No batch statistic: train and eval compute the same formula, and nothing is kept between calls."""
    formula = {"frn": frn_formula, "evonorm_s0": s0_formula}[name]
    layer = randomized(build_norm(name, 16, "image", act=act, **options(name))).to(dtype)
    assert dict(layer.named_buffers()) == {}
    for step, mode in enumerate((True, False, True)):
        check_against(layer.train(mode), formula, inputs(step, dtype=dtype), *PRECISION[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_evonorm_b0_matches_its_formula_in_training_and_evaluation(momentum: float | None, dtype: torch.dtype) -> None:
    """Training: var_b is the batch's biased variance, and the running variance moves by PyTorch's momentum with the
    unbiased one (momentum=None: the cumulative average). Evaluation: var_b is the running variance, unchanged."""
    layer = randomized(build_norm("evonorm_b0", 16, "image", momentum=momentum)).to(dtype)
    running, seen = torch.ones(16, dtype=torch.float64), []
    n = SHAPE[0] * SHAPE[2] * SHAPE[3]
    for step in range(3):
        x = inputs(step, dtype=dtype) * (1 + step)
        check_against(layer.train(), lambda x, s: b0_formula(x, s, biased_var(x)), x, *PRECISION[dtype])
        seen.append(biased_var(x.double()) * n / (n - 1))
        running = torch.stack(seen).mean(0) if momentum is None else 0.9 * running + 0.1 * seen[-1]
        torch.testing.assert_close(layer.running_var.double(), running, atol=1e-6, rtol=1e-6)
        assert int(layer.num_batches_tracked) == step + 1
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    check_against(layer.eval(), lambda x, s: b0_formula(x, s, running), inputs(5, dtype=dtype), *PRECISION[dtype])
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())


@pytest.mark.parametrize("interleaved", [False, True], ids=["contiguous", "interleaved"])
def test_evonorm_b0_takes_its_batch_variance_per_worker_share(interleaved: bool) -> None:
    """With 4 worker shares of 2 images, each share is normalized with its own batch variance (the formula on the
    share), and the running variance follows share 0 alone, as normbench's BatchNorm does. Shares are contiguous
    rows, or rows r, r + 4 when the batch comes interleaved (shares.py)."""
    layer = randomized(build_norm("evonorm_b0", 16, "image")).double()
    assert isinstance(layer, PerShare)
    x = inputs(3, (8, 16, 5, 3), torch.float64)
    rows = [torch.arange(r, 8, 4) if interleaved else torch.arange(2 * r, 2 * r + 2) for r in range(4)]

    def formula(x: Tensor, shadow: nn.Module) -> Tensor:
        out = torch.empty_like(x)
        for share in rows:
            out[share] = b0_formula(x[share], shadow, biased_var(x[share]))
        return out

    with worker_shares(4, interleaved):
        check_against(layer.train(), formula, x, 1e-10, 1e-10)
    n = 2 * 5 * 3
    torch.testing.assert_close(layer.running_var, 0.9 + 0.1 * biased_var(x[rows[0]]) * n / (n - 1))


# --- timm, the test oracle ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oracle() -> dict[str, type[nn.Module]]:
    layers = pytest.importorskip("timm.layers", reason="timm is the test oracle (pip install -e '.[dev]')")
    return {"frn": layers.FilterResponseNormTlu2d, "evonorm_s0": layers.EvoNorm2dS0, "evonorm_b0": layers.EvoNorm2dB0}


def timm_twin(oracle: dict[str, type[nn.Module]], name: str, layer: nn.Module, act: bool) -> nn.Module:
    """timm's layer with `layer`'s options and parameters (timm's keys are a subset of normbench's: B0 adds
    num_batches_tracked, and keeps no unused running variance without its activation)."""
    kwargs = {"apply_act": act, "eps": layer.eps, **options(name)}
    if hasattr(layer, "momentum"):
        kwargs["momentum"] = layer.momentum
    twin = oracle[name](16, **kwargs)
    missing, unexpected = twin.load_state_dict(layer.state_dict(), strict=False)
    assert set(unexpected) <= {"num_batches_tracked"} and set(missing) <= ({"running_var"} if not act else set())
    return twin


def test_every_norm_act_layer_has_its_oracle(oracle) -> None:
    assert set(oracle) == set(NORM_ACT)


@pytest.mark.parametrize("act", [True, False], ids=["act", "no_act"])
@pytest.mark.parametrize("name", NORM_ACT)
def test_norm_act_layers_match_timm(oracle, name: str, act: bool) -> None:
    """Forward, the input's and every parameter's gradients, and the running statistics, over training and
    evaluation steps on every layout the norm supports (timm's classes take (N, C, H, W) only, as these)."""
    assert list(get_norm(name).layouts) == ["image"]
    layer = randomized(build_norm(name, 16, "image", act=act, **options(name)))
    twin = timm_twin(oracle, name, layer, act)
    for step, mode in enumerate((True, True, False, True, False)):
        layer.train(mode), twin.train(mode)
        x = inputs(step) * (1 + step) + step
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = layer(x1), twin(x2)
        torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-5)
        upstream = torch.randn(y1.shape, generator=torch.Generator().manual_seed(step))
        y1.backward(upstream), y2.backward(upstream)
        torch.testing.assert_close(x1.grad, x2.grad, atol=1e-4, rtol=1e-4)
        theirs = dict(twin.named_parameters())
        for key, p in layer.named_parameters():
            torch.testing.assert_close(p.grad, theirs[key].grad, atol=1e-4, rtol=1e-4, msg=key)
            p.grad = theirs[key].grad = None
        if act and hasattr(twin, "running_var"):
            torch.testing.assert_close(layer.running_var, twin.running_var, atol=1e-6, rtol=1e-6)


def test_evonorm_b0_per_worker_share_matches_timm_on_each_share(oracle) -> None:
    """4 shares of 2 images in one forward = timm's layer on each share alone (gradients summed over the shares);
    the running variance = timm's after share 0 alone."""
    layer = randomized(build_norm("evonorm_b0", 16, "image")).train()
    twins = [timm_twin(oracle, "evonorm_b0", layer, True).train() for _ in range(4)]
    x = inputs(4, (8, 16, 5, 3))
    x1 = x.clone().requires_grad_()
    with worker_shares(4):
        y1 = layer(x1)
    parts = [x[2 * r : 2 * r + 2].clone().requires_grad_() for r in range(4)]
    y2 = torch.cat([twin(part) for twin, part in zip(twins, parts, strict=True)])
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-5)
    upstream = torch.randn(y1.shape, generator=torch.Generator().manual_seed(1))
    y1.backward(upstream), y2.backward(upstream)
    torch.testing.assert_close(x1.grad, torch.cat([p.grad for p in parts]), atol=1e-4, rtol=1e-4)
    for key, p in layer.named_parameters():
        theirs = sum(dict(twin.named_parameters())[key].grad for twin in twins)
        torch.testing.assert_close(p.grad, theirs, atol=1e-4, rtol=1e-4, msg=key)
    torch.testing.assert_close(layer.running_var, twins[0].running_var, atol=1e-6, rtol=1e-6)


def test_weight_standardization_matches_its_formula_and_timm(oracle) -> None:
    """Ŵ = (W - mean) / sqrt(biased var + 1e-6) per output filter; the conv with Ŵ, forward and gradients, against
    timm's StdConv2d (same convention)."""
    from timm.layers import StdConv2d as TimmStdConv2d

    torch.manual_seed(0)
    conv = StdConv2d(3, 8, 3, padding=1)
    w = conv.weight.detach().double()
    mean = w.mean(dim=(1, 2, 3), keepdim=True)
    hand = (w - mean) / torch.sqrt(((w - mean) ** 2).mean(dim=(1, 2, 3), keepdim=True) + 1e-6)
    torch.testing.assert_close(standardized(conv.weight.detach().double()), hand, atol=1e-12, rtol=1e-12)
    twin = TimmStdConv2d(3, 8, 3, padding=1, bias=True, eps=1e-6)
    twin.load_state_dict(conv.state_dict())
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(conv(x), twin(x), atol=1e-5, rtol=1e-5)
    conv, twin = conv.double(), twin.double()  # gradients in float64: the same arithmetic, to 1e-10
    x1 = x.double().requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = conv(x1), twin(x2)
    y1.square().sum().backward(), y2.square().sum().backward()
    for mine, theirs in ((x1, x2), (conv.weight, twin.weight), (conv.bias, twin.bias)):
        torch.testing.assert_close(mine.grad, theirs.grad, atol=1e-10, rtol=1e-10)


# --- in the models ----------------------------------------------------------------------------------------------

IMAGE_MODELS = [name for name, spec in MODELS.items() if spec.layout == "image"]


@pytest.mark.parametrize("model", IMAGE_MODELS)
@pytest.mark.parametrize("name", NORM_ACT)
def test_a_norm_act_layer_takes_the_place_of_norm_and_activation(model: str, name: str) -> None:
    """Every norm slot holds the layer, with its activation where the model has one after the norm (the model's
    own activation is then an identity) and without it where it has none (a ResNet block's second norm)."""
    net = build_model({"name": model}, {"name": name}, 3, (8, 8), 10)
    slots = {where: m for where, m in net.named_modules() if getattr(m, NORM_SLOT, False)}
    assert slots and all(type(m).__name__ == type(next(iter(slots.values()))).__name__ for m in slots.values())
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())  # F.relu after a residual sum is not a module
    without = {where for where, m in slots.items() if not m.act}
    assert without == {w for w in slots if w.endswith("norm2")}  # cnn: none; resnets: each block's second norm
    spec = get_norm(name)
    for m in slots.values():
        assert sum(p.numel() for p in m.parameters()) == spec.params(m.num_features, act=m.act)
    net(torch.randn(2, 3, 8, 8)).sum().backward()


@pytest.mark.parametrize("name", NORM_ACT)
def test_norm_act_layers_are_refused_where_the_registry_refuses_them_with_its_reason(name: str) -> None:
    spec = get_norm(name)
    refused = [layout for layout in ("vector", "sequence") if layout not in spec.layouts]
    assert refused and set(refused) <= set(spec.refused)
    for layout in refused:
        with pytest.raises(NormError) as error:
            build_norm(name, 16, layout)
        assert spec.refused[layout] in str(error.value)
    for model, spec_ in MODELS.items():
        if spec_.layout in refused:
            with pytest.raises(NormError, match=f"norm={name} cannot normalize {spec_.layout} features"):
                build_model({"name": model}, {"name": name}, 3, (16, 16), 10)


class BatchNormReLU(nn.BatchNorm2d):
    """A norm-activation layer of the test's own: BatchNorm, then ReLU unless built without its activation."""

    def __init__(self, num_features: int, act: bool = True) -> None:
        super().__init__(num_features)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        return torch.relu(y) if self.act else y


@pytest.fixture
def bn_relu(monkeypatch) -> Iterator[str]:
    monkeypatch.setattr(NORMS, "_entries", dict(NORMS._entries))  # the registration is undone after the test
    monkeypatch.setattr(NORMS, "_origins", dict(NORMS._origins))
    register_norm(
        "bn_relu", summary="BN + ReLU as one layer", layouts={"image": on("N,H,W", torch=BatchNormReLU)},
        batch_statistics=True, activation=True,
    )(lambda cls, num_features, act: cls(num_features, act))  # fmt: skip
    yield "bn_relu"


def test_a_norm_act_layer_is_one_registration(bn_relu: str) -> None:
    """Registered with activation=True, a layer goes into every conv model's norm-act slot: the model's own
    activation becomes an identity, and the layer is built without its activation where the model has none."""
    net = build_model({"name": "resnet20"}, {"name": bn_relu}, 3, (8, 8), 10)
    slots = [m for m in net.modules() if getattr(m, NORM_SLOT, False)]
    assert all(isinstance(m, BatchNormReLU) for m in slots) and not any(isinstance(m, nn.ReLU) for m in net.modules())
    assert sum(not m.act for m in slots) == 9 and get_norm(bn_relu).options == {"impl": "torch"}
    with pytest.raises(NormError, match="bn_relu cannot normalize vector features"):
        build_model({"name": "mlp"}, {"name": bn_relu}, 3, (8, 8), 10)


def test_explain_reads_formula_axes_and_modes_from_the_registry() -> None:
    for name in NORM_ACT:
        spec = get_norm(name)
        e = explain(name, (2, 16, 4, 4), **options(name))
        assert (e.formula, e.train_vs_eval, e.without_act, e.axes) == (
            spec.formula, spec.train_vs_eval, spec.without_act, spec.layouts["image"].axes)  # fmt: skip
        built = {act: build_norm(name, 16, "image", act=act, **options(name)) for act in (True, False)}
        assert (e.params, e.params_without_act) == tuple(sum(p.numel() for p in built[a].parameters()) for a in (1, 0))
    b0 = explain("evonorm_b0", (32, 16, 4, 4), workers=16)  # per share: 2 images × 4 × 4 positions
    assert (b0.values_per_statistic, b0.num_statistics, b0.statistic) == (32, 16 * 16, "variance")


# --- Weight Standardization in the models ----------------------------------------------------------------------


@pytest.mark.parametrize("model", [name for name, spec in MODELS.items() if "conv_layer" in spec.fixed_args()])
def test_ws_standardizes_every_conv_of_a_conv_model_and_changes_no_parameter(model: str) -> None:
    plain = build_model({"name": model}, {"name": "gn"}, 3, (16, 16), 10)
    ws = build_model({"name": model, "ws": True}, {"name": "gn"}, 3, (16, 16), 10)
    convs = [m for m in ws.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is StdConv2d for m in convs)
    assert not any(isinstance(m, StdConv2d) for m in plain.modules())
    assert plain.state_dict().keys() == ws.state_dict().keys()
    assert MODELS[model].options()["ws"] == (bool, False)


def test_ws_is_a_setting_of_the_conv_models_only(tmp_path) -> None:
    from conftest import planned

    assert [m for m, s in MODELS.items() if "ws" in s.options()] == ["cnn", "resnet20", "resnet32", "resnet56"]
    with pytest.raises(ConfigError, match=r"Unknown setting 'model.ws'.*It is an option of model=cnn, model=resnet20"):
        planned(tmp_path, "model=mlp", "+model.ws=true")


class CenteredConv2d(nn.Conv2d):
    """A conv option of the test's own: weights centred per filter."""

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        return self._conv_forward(x, w, self.bias)


@pytest.fixture
def centred(monkeypatch) -> Iterator[str]:
    monkeypatch.setattr(CONVS, "_entries", dict(CONVS._entries))
    monkeypatch.setattr(CONVS, "_origins", dict(CONVS._origins))
    register_conv("wc", f"{__name__}.CenteredConv2d", summary="weight centring", formula="Ŵ = W - mean(W)")
    yield "wc"


def test_a_conv_option_is_one_registration(centred: str) -> None:
    assert MODELS["cnn"].options()[centred] == (bool, False) and centred not in MODELS["mlp"].options()
    net = build_model({"name": "cnn", centred: True}, {"name": "gn"}, 3, (16, 16), 10)
    assert all(type(m) is CenteredConv2d for m in net.modules() if isinstance(m, nn.Conv2d))
    assert compared("gn", {centred: True}) == f"gn+{centred}" and split_label("gn", 32, 1, {centred: True}) == (
        f"gn+{centred}_b032")  # fmt: skip
    with pytest.raises(ConfigError, match=f"model.ws and model.{centred} are both true: conv options are alternatives"):
        conv_layer({"ws": True, centred: True})


# --- names, evaluations, monitor, reports --------------------------------------------------------------------


def test_runs_are_named_by_the_norm_as_compared() -> None:
    assert split_label("gn", 32, 16, {"name": "cnn", "ws": True}) == "gn+ws_b002x16"
    assert split_label("gn", 32, 16, {"name": "cnn", "ws": False}) == "gn_b002x16"
    assert split_label("frn", 32, 1, {"name": "mlp"}) == "frn_b032"
    # model.ws swept on the command line: said by the label, not again as a key of its own.
    task = ["norm=gn", "model.ws=true", "seed=1"]
    assert run_name("gn", 32, 1, task, [], {"name": "cnn", "ws": True}) == "gn+ws_b032_seed001"


def test_the_small_batch_preset_plans_24_runs_with_distinct_names(tmp_path) -> None:
    from normbench.launch.preflight import plan_sweep

    check = plan_sweep(["sweep=small_batch", f"hydra.sweep.dir={tmp_path}", "device=cpu"], lambda d: "", create=False)
    names = check.runs
    assert len(names) == len(set(names)) == 24
    cells = {name.rsplit("_seed", 1)[0] for name in names}
    assert cells == {"bn_b002x16", "syncbn_b002x16", "gn_b002x16", "gn+ws_b002x16", "frn_b002x16",
                     "evonorm_s0_b002x16", "evonorm_b0_b002x16", "bn_b032"}  # fmt: skip
    plans = check.plans
    # The default preset's design (sweep=default) at the lr of docs/science.md §13's rule.
    assert all(p.config.optim.lr == 0.005 and p.config.batch_size == 32 and p.budget.total_steps == 1248
               for p in plans.values())  # fmt: skip
    assert plans["gn+ws_b002x16_seed000"].config.model.ws and not plans["gn_b002x16_seed000"].config.model.ws
    assert plans["gn+ws_b002x16_seed000"].hparams["norm"] == "gn+ws" and "/ gn+ws, batch 32" in plans[
        "gn+ws_b002x16_seed000"].title  # fmt: skip
    assert plans["evonorm_b0_b002x16_seed000"].per_statistic == 2  # its batch variance: per worker share
    default = (ROOT / "configs" / "sweep" / "default.yaml").read_text()
    assert all(line in default for line in ("epochs: 4", "train_size: 10000", "val_size: 2000", "schedule: cosine"))


def test_precise_bn_and_frozen_buffers_take_a_running_variance_alone() -> None:
    """PreciseBN restarts EvoNorm-B0's running variance (no running mean to zero) and re-estimates it as the
    cumulative average of the unbiased batch variances; a train-mode pass inside frozen_buffers changes nothing."""
    from normbench.parts.data.batches import Batches
    from normbench.parts.data.synthetic_images import make_synthetic

    data = make_synthetic(64, 8)
    batches = Batches(data.train_images, data.train_labels, 16, data.mean, data.std, torch.device("cpu"), train=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), build_norm("evonorm_b0", 4, "image"))
    assert has_running_stats(model[1]) and groupable(model)
    assert not has_running_stats(build_norm("evonorm_b0", 4, "image", act=False))  # no statistic without its act
    model.train()(torch.randn(8, 3, 8, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with frozen_buffers(model):
        model(torch.randn(8, 3, 8, 8) + 5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    precise = precise_bn(model, batches, num_batches=3)
    with torch.no_grad():
        outs = [precise[0](x) for x, _ in list(batches.epoch(PRECISE_BN_DRAW))[:3]]
        variances = torch.stack([o.var(dim=(0, 2, 3), unbiased=True) for o in outs]).mean(0)
    torch.testing.assert_close(precise[1].running_var, variances)
    assert precise[1].momentum is None and int(precise[1].num_batches_tracked) == 3
    assert model[1].momentum == 0.1 and int(model[1].num_batches_tracked) == 1  # the original is untouched


def test_evonorm_b0_gets_bn_evaluations_and_its_running_variance_is_monitored(tmp_path) -> None:
    record = train(tmp_path, "norm=evonorm_b0", "workers=4", "log.hist_points=1")
    assert record.metrics.val_acc_batch_stats is not None and record.metrics.val_acc_precise_bn is not None
    scalars = set(events(tmp_path).Tags()["scalars"])
    assert "watch/bn/stage1.norm/var/ratio" in scalars and "watch/bn/stage1.norm/mean/gap" not in scalars


def test_reports_tell_gn_from_gn_with_ws(tmp_path) -> None:
    from normbench.run.report import summarize

    for name, extra in (("gn", []), ("gn_ws", ["model.ws=true"]), ("frn", [])):
        norm = name.split("_")[0]
        train(tmp_path / name, f"norm={norm}", "norm.groups=4" if norm == "gn" else "log.every=1", *extra)
    groups = {g["norm"]: g for g in summarize(tmp_path)["groups"]}
    assert list(groups) == ["gn", "gn+ws", "frn"] and all(g["runs"] == 1 for g in groups.values())


def test_explain_and_list_of_the_new_norms_and_conv_options_import_no_torch() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from normbench.cli import app; "
        "r = CliRunner().invoke(app, ['explain', 'evonorm_b0', '--shape', '8,16,4,4', '--workers', '4', '--conv', "
        "'ws']); assert r.exit_code == 0 and 'running variance' in r.output, r.output; "
        "r = CliRunner().invoke(app, ['list']); assert r.exit_code == 0 and 'frn' in r.output; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_the_presets_split_cells_compute_what_one_worker_computes(tmp_path) -> None:
    """sweep=small_batch's syncbn at 16 workers is bn over the total batch, and its per-sample norms do not depend on
    the split: in one process their runs equal the one-worker runs to the last bit (here at 4 workers of 2 images)."""
    for norm, reference in (("syncbn", "bn"), ("gn", "gn"), ("frn", "frn")):
        split = train(tmp_path / f"{norm}_split", f"norm={norm}", "workers=4")
        whole = train(tmp_path / f"{reference}_whole", f"norm={reference}", "workers=1")
        assert split.metrics == whole.metrics and split.curve == whole.curve, norm
