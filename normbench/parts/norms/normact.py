"""Norm-activation layers: a normalization and the nonlinearity after it as one layer, for (N, C, H, W) feature maps.

* `FilterResponseNorm`: FRN with its thresholded linear unit, TLU (Singh & Krishnan 2020);
* `EvoNormS0`, `EvoNormB0`: the sample-based and the batch-based layer of Liu et al. 2020 ("Evolving
  Normalization-Activation Layers").

A model puts one where it would put a norm followed by ReLU (models/__init__.py: the norm-act slot). Where it puts
no activation after its norm (a residual block's last norm), the layer is built with `act=False`:

* FRN without its TLU: the normalization and the affine, no τ;
* EvoNorm without its nonlinearity: only the per-channel affine γ·x + β, no statistic at all. That is the authors'
  own code (and timm's): their EvoNorm layers compute `x · γ + β` when the nonlinearity is off.

Written from the papers' formulas in plain tensor operations: PyTorch has no kernel for them, so these are their only
implementation (`norm.impl=reference`). The conventions are timm's, which tests/test_normact.py holds these against
(forward and gradients, train and eval, worker shares): biased variances, eps inside the square root, every
parameter per channel (γ = 1, β = 0, v = 1, τ = 0 at the start), statistics computed in float32 at least.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normbench.parts.norms.reference import per_channel
from normbench.parts.norms.shares import PerShare, current, join, per_share, split

SPATIAL = (2, 3)  # H, W of (N, C, H, W)


def accurate(x: Tensor) -> Tensor:
    """x in float32 at least: half-precision statistics (bf16 autocast) lose too many digits."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class _NormAct(nn.Module):
    """γ (weight) and β (bias) per channel, and `act`: whether the layer includes its nonlinearity."""

    def __init__(self, num_features: int, act: bool) -> None:
        super().__init__()
        self.num_features = num_features
        self.act = act
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def affine(self, x: Tensor) -> Tensor:
        return x * per_channel(self.weight, x) + per_channel(self.bias, x)

    def extra_repr(self) -> str:
        return f"{self.num_features}, act={self.act}, eps={self.eps}"  # type: ignore[attr-defined]


class FilterResponseNorm(_NormAct):
    """FRN + TLU, per sample and channel over the spatial positions (H, W):

        ν² = mean(x²) over H, W        (no mean is subtracted)
        y = γ · x / sqrt(ν² + eps) + β
        z = max(y, τ)                  (TLU: a ReLU whose threshold τ is learned per channel)

    No batch statistic: training and evaluation compute the same. `act=False`: y, and no τ."""

    def __init__(self, num_features: int, act: bool = True, eps: float = 1e-5) -> None:
        super().__init__(num_features, act)
        self.eps = eps
        self.tau = nn.Parameter(torch.zeros(num_features)) if act else None

    def forward(self, x: Tensor) -> Tensor:
        nu2 = accurate(x).square().mean(dim=SPATIAL, keepdim=True)
        y = self.affine(x * torch.rsqrt(nu2 + self.eps).to(x.dtype))
        return y if self.tau is None else torch.maximum(y, per_channel(self.tau, y))


def group_std(x: Tensor, groups: int, eps: float) -> Tensor:
    """sqrt(biased variance + eps) per sample and group of C/G channels, over (C/G, H, W), shaped (N, C, 1, 1)."""
    n, c = x.shape[:2]
    grouped = accurate(x).reshape(n, groups, -1)
    std = torch.sqrt(grouped.var(dim=2, unbiased=False) + eps).to(x.dtype)  # (N, G)
    return std.repeat_interleave(c // groups, dim=1).view(n, c, 1, 1)


class EvoNormS0(_NormAct):
    """EvoNorm-S0, per sample: a Swish-like gate divided by GroupNorm's standard deviation,

        y = x · sigmoid(v · x) / sqrt(var(x) + eps) · γ + β,   var over (C/G, H, W) of one sample and group

    with v learned per channel. No batch statistic: training and evaluation compute the same. `act=False`: γ·x + β."""

    def __init__(self, num_features: int, act: bool = True, groups: int = 8, eps: float = 1e-5) -> None:
        super().__init__(num_features, act)
        if num_features % groups:
            raise ValueError(f"num_features ({num_features}) must be divisible by groups ({groups})")
        self.groups, self.eps = groups, eps
        self.v = nn.Parameter(torch.ones(num_features)) if act else None

    def forward(self, x: Tensor) -> Tensor:
        if self.v is None:
            return self.affine(x)
        return self.affine(x * torch.sigmoid(per_channel(self.v, x) * x) / group_std(x, self.groups, self.eps))


class EvoNormB0(PerShare, _NormAct):
    """EvoNorm-B0: a batch statistic and a per-sample one, the larger of the two in the denominator,

        y = x / max(sqrt(var_b + eps), v · x + sqrt(var_s + eps)) · γ + β

    var_b: per channel over the batch and the positions (N, H, W), as BatchNorm's; var_s: per sample and channel over
    (H, W), as InstanceNorm's; v learned per channel. In training var_b is the batch's (biased) variance and updates
    `running_var` with BatchNorm's convention (PyTorch's momentum, the unbiased variance; momentum=None: the
    cumulative average since `num_batches_tracked` was zeroed); in evaluation `running_var` takes its place. There
    is no running mean: no mean is subtracted anywhere. With W > 1 worker shares (`shares.current()`), var_b is
    each share's, and the running variance follows share 0 (as normbench's BatchNorm). `act=False`: γ·x + β, with
    no statistics and no buffers."""

    def __init__(self, num_features: int, act: bool = True, eps: float = 1e-3, momentum: float | None = 0.1) -> None:
        super().__init__(num_features, act)
        self.eps, self.momentum = eps, momentum
        if act:
            self.v = nn.Parameter(torch.ones(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.v = self.running_var = self.num_batches_tracked = None

    @torch.no_grad()
    def update_running_var(self, var: Tensor, n: int) -> None:
        self.num_batches_tracked += 1  # type: ignore[operator]
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum  # type: ignore[arg-type]
        self.running_var.mul_(1 - m).add_(m * var.to(self.running_var.dtype) * n / (n - 1))  # type: ignore[union-attr]

    def forward(self, x: Tensor) -> Tensor:
        if self.v is None:
            return self.affine(x)
        shares = current()
        count = shares.count if self.training else 1
        interleaved = shares.interleaved and count > 1
        xs = split(x, count, interleaved)  # (W, N/W, C, H, W): the worker shares (one: the batch)
        if self.training:
            n = xs[0].numel() // x.shape[1]
            if n == 1:
                raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
            var = accurate(xs).var(dim=(1, 3, 4), unbiased=False)  # (W, C)
            self.update_running_var(var[0].detach(), n)  # share 0: rank 0's buffers
        else:
            var = self.running_var.view(1, -1)  # type: ignore[union-attr]
        batch_std = per_share(torch.sqrt(var + self.eps).to(x.dtype), xs)
        instance_std = torch.sqrt(accurate(xs).var(dim=(3, 4), unbiased=False, keepdim=True) + self.eps).to(x.dtype)
        right = self.v.view(1, 1, -1, 1, 1) * xs + instance_std
        return self.affine(join(xs / torch.maximum(batch_std, right), interleaved))
