"""Norms against independent computations of their formulas, and the two implementations against each other."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from omegaconf import OmegaConf
from torch import nn
from typer.testing import CliRunner

from normbench.base.errors import NormError
from normbench.cli import app
from normbench.launch.compose import compose_unchecked
from normbench.parts.models import build_model, check_norm_shapes
from normbench.parts.norms import IMPLS, LAYOUTS, NORMS, build_norm, explain, get_norm, on, register_norm
from normbench.parts.norms.layers import BatchRenorm

SHAPES = {"vector": (6, 8), "image": (4, 8, 5, 3), "sequence": (3, 7, 8)}
GROUPS = 2  # grouped norms (gn) in these tests: 4 channels per group
# Every (norm, layout) the registry declares; the norm-activation layers (a norm and its nonlinearity, no "normalize
# over these axes" formula) are checked against theirs in tests/test_normact.py.
PAIRS = [(n, lay) for n, spec in NORMS.items() for lay in spec.axes if spec.axes[lay] and not spec.activation]
WITH_IMPL = [(n, lay, impl) for n, lay in PAIRS for impl in get_norm(n).impls]


def grouped(name: str) -> dict[str, int]:
    return {"groups": GROUPS} if "groups" in get_norm(name).options else {}


def channel_view(v: torch.Tensor, layout: str, ndim: int) -> torch.Tensor:
    """γ/β broadcast: channels at dim 1, except sequences (channels = D, the last dim)."""
    return v.view(-1) if layout == "sequence" else v.view(1, -1, *([1] * (ndim - 2)))


def expected(name: str, layout: str, x: torch.Tensor, eps: float, groups: int = GROUPS) -> torch.Tensor:
    """The norm's formula (γ = 1, β = 0) computed here in float64 over the axes the registry states for it, not by
    its classes: `C/G` (or `D/G`) splits the channel axis into (G, C/G) and averages over the C/G part. A statistic
    that is a mean and a variance standardizes, a mean square divides by its root (registry `statistic`)."""
    spec = get_norm(name)
    letters = list(LAYOUTS[layout])
    axes = spec.layouts[layout].axes.split(",")
    x = x.double()
    shape = list(x.shape)
    split = [a.split("/")[0] for a in axes if "/" in a]
    if split:  # (…, C, …) as (…, G, C/G, …)
        i = letters.index(split[0])
        shape[i : i + 1] = [groups, shape[i] // groups]
        letters[i : i + 1] = ["G", f"{split[0]}/G"]
    g = x.reshape(shape)
    dims = tuple(letters.index(a) for a in axes)
    if spec.statistic == "mean square":
        out = g / torch.sqrt((g * g).mean(dims, keepdim=True) + eps)
    else:
        mu = g.mean(dims, keepdim=True)
        out = (g - mu) / torch.sqrt(((g - mu) ** 2).mean(dims, keepdim=True) + eps)
    return out.reshape(x.shape)


@pytest.mark.parametrize(("name", "layout", "impl"), WITH_IMPL)
def test_output_matches_formula_over_documented_axes(name: str, layout: str, impl: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(SHAPES[layout]) * 3 + 1.5
    layer = build_norm(name, 8, layout, impl=impl, **grouped(name)).train()
    eps = layer.eps
    torch.testing.assert_close(layer(x).double(), expected(name, layout, x, eps), atol=1e-5, rtol=1e-5)


def _pair(name: str, layout: str, **options: object) -> tuple[nn.Module, nn.Module]:
    extra = grouped(name)
    fused = build_norm(name, 8, layout, impl="torch", **extra, **options)
    ref = build_norm(name, 8, layout, impl="reference", **extra, **options)
    torch.manual_seed(1)
    with torch.no_grad():  # non-trivial γ, β so their gradients and effect are tested
        for p in fused.parameters():
            p.copy_(torch.randn_like(p))
    ref.load_state_dict(fused.state_dict())  # same keys: a checkpoint moves between implementations
    return fused, ref


TWO_IMPLS = [p for p in PAIRS if set(IMPLS) <= set(get_norm(p[0]).impls)]  # brn: the formula code only
PARITY = [(*p, {}) for p in TWO_IMPLS] + [("bn", lay, {"momentum": None}) for lay in SHAPES]  # + cumulative BN


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize(("name", "layout", "options"), PARITY)
def test_reference_matches_torch(name: str, layout: str, options: dict, mode: str) -> None:
    fused, ref = _pair(name, layout, **options)
    assert fused.state_dict().keys() == ref.state_dict().keys()
    torch.manual_seed(2)
    for step in range(4):  # several steps: running statistics accumulate the same way
        fused.train(mode == "train" or step < 3)
        ref.train(mode == "train" or step < 3)
        x = torch.randn(SHAPES[layout]) * (1 + step) + step
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = fused(x1), ref(x2)
        torch.testing.assert_close(y2, y1, atol=1e-5, rtol=1e-5)
        grad_out = torch.randn_like(y1)
        y1.backward(grad_out)
        y2.backward(grad_out)
        torch.testing.assert_close(x2.grad, x1.grad, atol=1e-4, rtol=1e-4)
        for (k, p1), (_, p2) in zip(fused.named_parameters(), ref.named_parameters(), strict=True):
            torch.testing.assert_close(p2.grad, p1.grad, atol=1e-4, rtol=1e-4, msg=k)
            p1.grad = p2.grad = None
        for (k, b1), (_, b2) in zip(fused.named_buffers(), ref.named_buffers(), strict=True):
            torch.testing.assert_close(b2, b1, atol=1e-5, rtol=1e-5, msg=k)


def test_state_dict_moves_between_implementations() -> None:
    fused, ref = _pair("bn", "image")  # seeds the inputs below too
    fused.train()(torch.randn(4, 8, 5, 3))
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(4, 8, 5, 3)
    torch.testing.assert_close(ref.eval()(x), fused.eval()(x))


def test_notes_worked_example() -> None:
    """The notes' BatchNorm1d column [1.2, 0.8, -1.0, 0.5]. The notes print variance 0.747 and first value
    0.954; both are arithmetic slips: the biased variance is 0.691875 and the value 0.991829."""
    column = torch.tensor([[1.2], [0.8], [-1.0], [0.5]])
    for impl in ("torch", "reference"):
        bn = build_norm("bn", 1, "vector", impl=impl).train()
        out = bn(column).squeeze(1)
        torch.testing.assert_close(out, torch.tensor([0.991829, 0.510942, -1.653049, 0.150277]), atol=1e-6, rtol=0)
        # PyTorch convention: running = 0.9 * running + 0.1 * batch, unbiased variance 0.9225.
        torch.testing.assert_close(bn.running_mean, torch.tensor([0.0375]))
        torch.testing.assert_close(bn.running_var, torch.tensor([0.99225]))
    assert column.var(unbiased=False).item() == pytest.approx(0.691875)


def test_batch_renorm_is_batch_norm_at_the_start_of_its_warmup() -> None:
    torch.manual_seed(3)
    brn = build_norm("brn", 8, "image", warmup_steps=100)
    bn = build_norm("bn", 8, "image")
    bn.load_state_dict(brn.state_dict())
    with torch.no_grad():
        brn.running_mean.fill_(0.7)  # far from the batch: with r_max=1, d_max=0 it must not matter
        bn.running_mean.fill_(0.7)
    x1 = torch.randn(4, 8, 5, 3).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    y1, y2 = brn(x1), bn(x2)
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-5)
    y1.pow(2).sum().backward()
    y2.pow(2).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(brn.running_mean, bn.running_mean)


def test_batch_renorm_corrects_with_clipped_r_and_d() -> None:
    brn = BatchRenorm(2, eps=0.0, momentum=0.1, r_max=2.0, d_max=0.5, warmup_steps=0)
    with torch.no_grad():
        brn.running_mean.copy_(torch.tensor([0.0, 10.0]))
        brn.running_var.copy_(torch.tensor([1.0, 0.25]))
    x = torch.tensor([[1.0, 1.0], [3.0, 5.0]])  # batch means 2, 3; batch σ 1, 2
    y = brn.train()(x)
    # channel 0: σ_B/σ = 1 → r = 1; (μ_B - μ)/σ = 2 → d = 0.5.  channel 1: 2/0.5 = 4 → r = 2; (3-10)/0.5 → d = -0.5
    x_hat = torch.tensor([[-1.0, -1.0], [1.0, 1.0]])
    torch.testing.assert_close(y, x_hat * torch.tensor([1.0, 2.0]) + torch.tensor([0.5, -0.5]))
    assert [float(v) for v in brn.clip_limits()] == [2.0, 0.5]
    assert [float(v) for v in BatchRenorm(2, r_max=3.0, d_max=5.0, warmup_steps=4).clip_limits()] == [1.0, 0.0]


def test_batch_renorm_mid_warmup_clips_at_the_limits_of_its_step() -> None:
    """warmup_steps=4 after 2 training batches: r_max = 1 + (3 − 1) · 2/4 = 2, d_max = 5 · 2/4 = 2.5 (the limits
    open linearly from BN's r = 1, d = 0). The same batch as above: channel 0 has r = 1 and d = 2 (inside the
    limits), channel 1 r = 4 → 2 and d = −14 → −2.5. Then the running statistics move by momentum 0.1 (unbiased
    variance) and the limits by one more batch: 2.5 and 3.75."""
    brn = BatchRenorm(2, eps=0.0, momentum=0.1, r_max=3.0, d_max=5.0, warmup_steps=4)
    with torch.no_grad():
        brn.running_mean.copy_(torch.tensor([0.0, 10.0]))
        brn.running_var.copy_(torch.tensor([1.0, 0.25]))
        brn.num_batches_tracked.fill_(2)
    y = brn.train()(torch.tensor([[1.0, 1.0], [3.0, 5.0]]))
    torch.testing.assert_close(y, torch.tensor([[-1.0 * 1 + 2, -1.0 * 2 - 2.5], [1.0 * 1 + 2, 1.0 * 2 - 2.5]]))
    torch.testing.assert_close(brn.running_mean, torch.tensor([0.9 * 0 + 0.1 * 2, 0.9 * 10 + 0.1 * 3]))
    torch.testing.assert_close(brn.running_var, torch.tensor([0.9 * 1 + 0.1 * 2, 0.9 * 0.25 + 0.1 * 8]))
    assert int(brn.num_batches_tracked) == 3 and [float(v) for v in brn.clip_limits()] == [2.5, 3.75]


@pytest.mark.parametrize("layout", ["image", "sequence"])
def test_batch_renorm_in_eval_mode_is_batch_norm_with_its_running_statistics(layout: str) -> None:
    """y = γ (x − running mean) / sqrt(running var + eps) + β per channel, whatever the batch and the clip limits,
    and evaluation changes no statistic. Against a float64 formula; channels at dim 1, or last for tokens."""
    g = torch.Generator().manual_seed(6)
    brn = build_norm("brn", 8, layout, warmup_steps=2, eps=1e-3)
    with torch.no_grad():
        for tensor in (brn.weight, brn.bias, brn.running_mean):
            tensor.copy_(torch.randn(8, generator=g))
        brn.running_var.copy_(torch.rand(8, generator=g) + 0.1)
        brn.num_batches_tracked.fill_(1)  # mid-warm-up: must not matter in eval mode
    before = {k: v.clone() for k, v in brn.state_dict().items()}
    x = torch.randn(SHAPES[layout], generator=g) * 3 + 2
    y = brn.eval()(x)
    view = (lambda v: v.double().view(-1)) if layout == "sequence" else (lambda v: v.double().view(1, -1, 1, 1))
    hand = (x.double() - view(brn.running_mean)) / torch.sqrt(view(brn.running_var) + 1e-3)
    torch.testing.assert_close(y.double(), hand * view(brn.weight) + view(brn.bias), atol=1e-5, rtol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in brn.state_dict().items())


AFFINE = [(n, lay, impl) for n, lay, impl in WITH_IMPL if "affine" in get_norm(n).options]


@pytest.mark.parametrize(("name", "layout", "impl"), AFFINE)
def test_affine_false_has_no_parameters_and_gives_the_bare_formula(name: str, layout: str, impl: str) -> None:
    layer = build_norm(name, 8, layout, impl=impl, affine=False, **grouped(name))
    assert list(layer.parameters()) == [] and not {"weight", "bias"} & set(layer.state_dict())
    x = torch.randn(SHAPES[layout], generator=torch.Generator().manual_seed(7)) * 3 + 1.5
    formula = expected(name, layout, x, layer.eps)  # brn at its start (clip limits r = 1, d = 0) is bn
    torch.testing.assert_close(layer.train()(x).double(), formula, atol=1e-5, rtol=1e-5)
    assert get_norm(name).params(8, **{**get_norm(name).options, "affine": False}) == 0


@pytest.mark.parametrize("impl", ["torch", "reference"])
@pytest.mark.parametrize("layout", SHAPES)
def test_bn_without_running_statistics_uses_batch_statistics_in_eval_too(layout: str, impl: str) -> None:
    """track_running_stats=false: no running buffers, and eval mode normalizes with the batch's own statistics."""
    layer = build_norm("bn", 8, layout, impl=impl, track_running_stats=False)
    assert dict(layer.named_buffers()) == {} and layer.running_mean is None and layer.running_var is None
    x = torch.randn(SHAPES[layout], generator=torch.Generator().manual_seed(8)) * 3 + 1.5
    for mode in (True, False, True):  # a training pass in between must leave nothing behind for eval
        torch.testing.assert_close(layer.train(mode)(x).double(), expected("bn", layout, x, layer.eps),
                                   atol=1e-5, rtol=1e-5)  # fmt: skip
    assert dict(layer.named_buffers()) == {}


def test_instance_norm_refuses_vector_features() -> None:
    with pytest.raises(NormError) as error:
        build_norm("in", 256, "vector")
    message = str(error.value)
    assert "norm=in cannot normalize vector features (N, C)" in message
    assert "single value per sample" in message and "image (N, C, H, W)" in message
    usable = sorted(n for n, spec in NORMS.items() if "vector" in spec.layouts and n != "none")
    assert f"Norms for vector features: {', '.join(usable)}." in message and "frn" not in usable


@pytest.mark.parametrize("impl", ["torch", "reference"])
@pytest.mark.parametrize("groups", [1, 4, 32])
def test_group_norm_on_vectors_is_per_sample_over_the_channels_of_a_group(impl: str, groups: int) -> None:
    """GN on (N, C), float64 formula by hand: sample n, group g holds channels g·C/G … (g+1)·C/G − 1; G=1 is LN."""
    torch.manual_seed(3)
    x = torch.randn(5, 64, dtype=torch.float64) * 2 + 0.7
    layer = build_norm("gn", 64, "vector", impl=impl, groups=groups).double().train()
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.5, 2, 64)), layer.bias.copy_(torch.linspace(-1, 1, 64))
    want = torch.empty_like(x)
    size = 64 // groups
    for n in range(5):
        for g in range(groups):
            values = x[n, g * size : (g + 1) * size]
            mean = values.sum() / size
            var = ((values - mean) ** 2).sum() / size
            want[n, g * size : (g + 1) * size] = (values - mean) / torch.sqrt(var + layer.eps)
    want = want * layer.weight + layer.bias
    torch.testing.assert_close(layer(x), want, atol=1e-12, rtol=1e-12)
    if groups == 1:
        ln = build_norm("ln", 64, "vector", impl=impl).double()
        ln.load_state_dict(layer.state_dict())
        torch.testing.assert_close(ln(x), want, atol=1e-12, rtol=1e-12)


def test_group_norm_with_one_channel_per_group_on_vectors_is_refused_as_instance_norm() -> None:
    with pytest.raises(NormError, match=r"gives 1 value per statistic on \(4, 8\).*one channel \(InstanceNorm\)"):
        get_norm("gn").check((4, 8), training=True)  # default groups=8 on 8 channels
    get_norm("gn").check((4, 8), training=True, groups=4)
    e = explain("gn", (4, 256))
    assert (e.groups, e.values_per_statistic, e.num_statistics, e.problem) == (8, 32, 32, None)
    assert "InstanceNorm" in explain("gn", (4, 8)).problem


def test_refusals_name_the_bad_value_and_what_is_allowed() -> None:
    with pytest.raises(
        NormError, match=r"groups=3 does not divide the 32 channels.*Allowed for 32 channels: 1, 2, 4, 8, 16, 32"
    ):
        build_norm("gn", 32, "image", groups=3)
    with pytest.raises(NormError, match=rf"Unknown norm 'batchnorm'. The norm options: {', '.join(NORMS)} "):
        build_norm("batchnorm", 8, "image")
    with pytest.raises(NormError, match=r"norm=bn has no option 'groups'. Its options: eps=1e-05, momentum=0.1"):
        build_norm("bn", 8, "image", groups=2)
    with pytest.raises(NormError, match=r"impl='fast' is not available. Allowed: torch, reference"):
        build_norm("ln", 8, "image", impl="fast")
    with pytest.raises(NormError, match=r"impl='torch' is not available. Allowed: reference"):
        build_norm("brn", 8, "image", impl="torch")


@pytest.mark.parametrize("impl", ["torch", "reference"])
def test_group_norm_paper_identities(impl: str) -> None:
    """GN with one group is LN on feature maps; GN with C groups is IN (both with per-channel affine). Under
    impl=torch, GN(1) and LN are the same class (nn.GroupNorm(1, C)): each side is also checked against the
    float64 formula over the documented axes, with the same non-trivial γ, β."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 8, 4, 4, generator=g) * 2 + 1
    gamma, beta = torch.randn(8, generator=g), torch.randn(8, generator=g)
    layers = {(name, groups): build_norm(name, 8, "image", impl=impl, **({"groups": groups} if name == "gn" else {}))
              for name, groups in (("gn", 1), ("ln", 1), ("gn", 8), ("in", 8))}  # fmt: skip
    out = {}
    for (name, groups), layer in layers.items():
        with torch.no_grad():
            layer.weight.copy_(gamma)
            layer.bias.copy_(beta)
        out[name, groups] = layer(x).double()
        formula = expected("gn", "image", x, layer.eps, groups) * gamma.double().view(1, -1, 1, 1)
        torch.testing.assert_close(out[name, groups], formula + beta.double().view(1, -1, 1, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["gn", 1], out["ln", 1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["gn", 8], out["in", 8], atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in layers["ln", 1].parameters()) == 16  # per channel, not per (C, H, W) position


@pytest.mark.parametrize(
    ("name", "shape", "axes", "stats", "each", "params", "differ"),
    [  # the notes' table: what each norm averages, on (N, C, H, W) = (2, 8, 4, 4) and (N, C) = (4, 256)
        ("bn", (2, 8, 4, 4), "N,H,W", 8, 32, 16, True),
        ("ln", (2, 8, 4, 4), "C,H,W", 2, 128, 16, False),
        ("in", (2, 8, 4, 4), "H,W", 16, 16, 16, False),
        ("gn", (2, 8, 4, 4), "C/G,H,W", 8, 32, 16, False),  # groups=4: 2 channels × 16 positions
        ("bn", (4, 256), "N", 256, 4, 512, True),
        ("ln", (4, 256), "C", 4, 256, 512, False),
        ("gn", (4, 256), "C/G", 16, 64, 512, False),  # groups=4: 64 channels per group, per sample
        ("ln", (2, 5, 8), "D", 10, 8, 16, False),
    ],
)
def test_explain_matches_the_notes_table(name, shape, axes, stats, each, params, differ) -> None:
    e = explain(name, shape, **({"groups": 4} if name == "gn" else {}))
    assert (e.axes, e.num_statistics, e.values_per_statistic, e.params, e.batch_statistics) == (
        axes,
        stats,
        each,
        params,
        differ,
    )


@pytest.mark.parametrize(("name", "layout"), [(n, lay) for n, spec in NORMS.items() for lay in spec.layouts])
def test_the_registry_states_every_layers_parameter_count(name: str, layout: str) -> None:
    """`params`, which `explain` reports without building anything, against the built layer: with and without its
    activation for a norm-activation layer (`act=False`: where a model has no activation after its norm)."""
    spec = get_norm(name)
    e = explain(name, SHAPES[layout], **grouped(name))
    for act in (True, False) if spec.activation else (True,):
        layer = build_norm(name, 8, layout, act=act, **grouped(name))
        stated = (e.params if act else e.params_without_act) if e.axes else 0
        assert sum(p.numel() for p in layer.parameters()) == stated, (name, layout, act)


@pytest.mark.parametrize(
    ("name", "stats", "each"), [("bn", 32, 32), ("brn", 32, 32), ("syncbn", 8, 128), ("ln", 8, 128), ("in", 64, 16)]
)
def test_explain_with_workers_counts_statistics_per_share(name: str, stats: int, each: int) -> None:
    """(N, C, H, W) = (8, 8, 4, 4) shared by 4 workers: bn and brn take 8 means per share of 2 samples
    (2·4·4 = 32 values each), syncbn 8 over the total batch, per-sample norms as without workers."""
    e = explain(name, (8, 8, 4, 4), workers=4)
    assert (e.num_statistics, e.values_per_statistic, e.images_per_worker) == (stats, each, 2)


@pytest.mark.parametrize("name", [n for n, spec in NORMS.items() if "vector" not in spec.layouts])
def test_explain_refuses_vector_features_like_the_registry(name: str) -> None:
    with pytest.raises(NormError) as from_explain:
        explain(name, (4, 256))
    with pytest.raises(NormError) as from_registry:
        build_norm(name, 256, "vector")
    assert str(from_explain.value) == str(from_registry.value)


def test_bn_at_batch_two_only_keeps_the_sign() -> None:
    """A field fact worth pinning: BN on (N, C) at batch 2 maps every value to ±1 (up to eps)."""
    bn = build_norm("bn", 16, "vector", eps=1e-12)
    y = bn(torch.randn(2, 16, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(y.abs(), torch.ones_like(y))


def test_reference_bn_refuses_one_value_per_channel_like_torch() -> None:
    for impl in ("torch", "reference"):
        with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
            build_norm("bn", 4, "vector", impl=impl).train()(torch.randn(1, 4))
    copy.deepcopy(build_norm("bn", 4, "vector", impl="reference")).eval()(torch.randn(1, 4))  # eval is fine


def test_torch_rms_norm_falls_back_to_the_formula_where_torch_lacks_it(monkeypatch) -> None:
    """torch 2.2 has no F.rms_norm (pyproject allows it): the torch implementation must still compute RMSNorm."""
    monkeypatch.delattr(torch.nn.functional, "rms_norm")
    torch.manual_seed(0)
    for layout in SHAPES:
        x = torch.randn(SHAPES[layout]) * 2 + 0.5
        layer = build_norm("rms", 8, layout, impl="torch")
        torch.testing.assert_close(layer(x).double(), expected("rms", layout, x, layer.eps), atol=1e-5, rtol=1e-5)


def test_options_and_their_types_are_declared_once_and_agree_with_the_yaml() -> None:
    bn = get_norm("bn")
    assert bn.options == {"eps": 1e-5, "momentum": 0.1, "affine": True, "track_running_stats": True, "impl": "torch"}
    assert bn.option_types == {"eps": float, "momentum": float | None, "affine": bool, "track_running_stats": bool,
                               "impl": str}  # fmt: skip
    assert get_norm("gn").option_types["groups"] is int and get_norm("brn").option_types["warmup_steps"] is int
    assert get_norm("brn").impls == ("reference",) and get_norm("ln").impls == ("torch", "reference")
    assert not (ROOT / "configs" / "norm").exists()  # no YAML restates a norm: the schema derived from the registry
    for name, spec in NORMS.items():  # is the option itself, `norm/NAME` in Hydra's ConfigStore
        composed = OmegaConf.to_container(compose_unchecked([f"norm={name}"]).norm)
        assert composed == {"name": name, **spec.options}, name
        assert set(spec.option_types) == set(spec.options), name


SHAPES_TO_CHECK = [(1, 4), (2, 4), (1, 4, 1, 1), (2, 4, 1, 1), (1, 4, 2, 1), (1, 3, 4), (1, 1, 4)]
LAYOUT_OF = {2: "vector", 3: "sequence", 4: "image"}


@pytest.mark.parametrize(
    ("name", "shape"), [(n, s) for n in ("bn", "in") for s in SHAPES_TO_CHECK if (n, len(s)) != ("in", 2)]
)
def test_shape_check_refuses_exactly_what_pytorch_refuses_in_training(name: str, shape: tuple[int, ...]) -> None:
    channels = shape[2] if len(shape) == 3 else shape[1]
    layer = build_norm(name, channels, LAYOUT_OF[len(shape)], impl="torch").train()
    try:
        layer(torch.randn(shape))
        torch_refuses = False
    except ValueError:  # "Expected more than 1 value per channel / spatial element when training"
        torch_refuses = True
    if torch_refuses:
        with pytest.raises(NormError, match=rf"norm={name} cannot normalize .* gives 1 value per statistic"):
            get_norm(name).check(shape, training=True)
    else:
        get_norm(name).check(shape, training=True)


def test_shape_check_by_mode_and_by_group() -> None:
    get_norm("bn").check((1, 4), training=False)  # eval uses running statistics
    with pytest.raises(NormError, match=r"Norms whose statistics average enough values here: ln, rms\."):
        get_norm("bn").check((1, 4), training=True)
    with pytest.raises(NormError, match="gives 1 value per statistic"):
        get_norm("in").check((2, 8, 1, 1), training=False)  # per-sample statistics in both modes
    with pytest.raises(NormError, match="over C/G,H,W, which gives 1 value"):
        get_norm("gn").check((2, 8, 1, 1), training=True)  # default groups=8: one channel per group
    get_norm("gn").check((2, 8, 1, 1), training=True, groups=4)
    get_norm("rms").check((1, 1), training=True)  # no variance: one value is fine
    with pytest.raises(NormError, match="norm=gn takes each statistic over C/G, which gives 1 value"):
        get_norm("gn").check((4, 8), training=True)  # groups = channels on vectors: one value, as IN
    get_norm("gn").check((4, 8), training=True, groups=2)


def _check(model: dict, norm: dict, images: int, size: int = 4) -> None:
    net = build_model(model, norm, 3, (size, size), 10)
    check_norm_shapes(net, model["name"], norm, 3, (size, size), images, f"batch_size={images}")


def test_model_check_names_model_norm_layer_and_what_is_allowed() -> None:
    resnet = {"name": "resnet20"}  # on 4x4 images its third stage works on 1x1 maps
    with pytest.raises(NormError) as error:
        _check(resnet, {"name": "in"}, 4)
    message = str(error.value)
    # Layers are named by their place: the first block of the third stage halves 2x2 to 1x1.
    assert "batch_size=4 with norm=in on model=resnet20" in message
    assert "'stage3.block1.norm1' gets (4, 64, 1, 1)" in message
    works = [n for n, spec in NORMS.items() if spec.normalizes((4, 64, 1, 1), True)]
    assert {"bn", "ln", "gn"} <= set(works) and not {"in", "frn"} & set(works)  # frn: one value per statistic on 1x1
    assert f"a norm whose statistics average more values here ({', '.join(works)})" in message
    per_sample = [n for n, spec in NORMS.items() if not spec.batch_statistics and spec.normalizes((1, 64, 1, 1), True)]
    with pytest.raises(
        NormError, match=rf"Use batch_size >= 2, or a norm that works per sample \({', '.join(per_sample)}\)"
    ):
        _check(resnet, {"name": "bn"}, 1)
    _check(resnet, {"name": "in"}, 1, size=8)  # 2x2 maps are enough
    _check({"name": "transformer"}, {"name": "bn"}, 1, size=32)  # bn averages over the tokens


class ScaleNorm(nn.Module):
    """Nguyen & Salazar (2019): x / ||x|| · g, one learned scalar."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps, self.g = eps, nn.Parameter(torch.tensor(num_features**0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.g * x / x.norm(dim=-1, keepdim=True).clamp_min(self.eps)


@pytest.fixture
def scale_norm(monkeypatch) -> Iterator[str]:
    monkeypatch.setattr(NORMS, "_entries", dict(NORMS._entries))  # the registration is undone after the test
    monkeypatch.setattr(NORMS, "_origins", dict(NORMS._origins))

    @register_norm(
        "scale",
        summary="ScaleNorm: x / ||x|| · g over the features",
        layouts={"vector": on("C", torch=ScaleNorm)},
        params=lambda channels, **_: 1,  # one learned scalar
    )
    def build(cls: type[ScaleNorm], num_features: int, *, eps: float = 1e-5) -> nn.Module:
        return cls(num_features, eps=eps)

    yield "scale"


def test_a_new_norm_is_one_registration(scale_norm: str) -> None:
    layer = build_norm(scale_norm, 16, "vector", eps=1e-3)
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(layer(x).norm(dim=1), torch.full((3,), 4.0))  # g = sqrt(16)
    assert get_norm(scale_norm).options == {"eps": 1e-5, "impl": "torch"}
    with pytest.raises(
        NormError, match=r"norm=scale cannot normalize image features \(N, C, H, W\).*applies to: vector"
    ):
        build_norm(scale_norm, 16, "image")
    with pytest.raises(NormError, match=r"impl='reference' is not available. Allowed: torch"):
        build_norm(scale_norm, 16, "vector", impl="reference")
    e = explain(scale_norm, (4, 16))
    assert (e.axes, e.num_statistics, e.values_per_statistic, e.params) == ("C", 4, 16, 1)
    result = CliRunner().invoke(app, ["list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "│ scale " in result.output and "layouts: vector" in result.output


def test_registration_refuses_layouts_that_disagree_on_implementations() -> None:
    with pytest.raises(NormError, match="same implementations for every layout"):
        register_norm("odd", summary="", layouts={"vector": on("C", torch=nn.Identity), "image": on("C,H,W")})(
            lambda cls, n: cls()
        )
    assert "odd" not in NORMS


def test_the_registry_imports_no_torch() -> None:
    """`normbench --help`, `list` and `report` read the registry; importing torch would cost them seconds."""
    code = "import sys, normbench.parts.norms, normbench.cli; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(ROOT))
    assert result.returncode == 0, result.stderr
