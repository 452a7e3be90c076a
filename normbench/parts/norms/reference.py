"""Normalization layers written from their formulas (`norm.impl=reference`).

Each class is the textbook computation in plain tensor operations, meant to be read and modified. They
take the same options and hold the same parameters and buffers (same state_dict keys) as the fused
PyTorch modules used by `norm.impl=torch`, so a checkpoint moves between the two; the parity tests prove
both compute the same function, gradients included.

Common to all: the variance used to normalize is the *biased* one (divide by n), eps sits inside the
square root, and the affine transform is per channel: y = γ_c · (x - μ) / sqrt(σ² + eps) + β_c.

Inputs are (N, C, *) with the channel axis at dim 1; `layers.py` adapts (N, L, D) sequences.

Worker shares (the `workers` setting, docs/workers.md): data-parallel training splits the optimizer's batch into
W equal, contiguous shares, one per worker, and BatchNorm takes its statistics per share. The batch norm here reads
the split of the forward under way (`shares.current()`) and, in training with W > 1, views the batch as
(W, N/W, C, *) to take every share's statistics in one pass.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normbench.parts.norms.shares import PerShare, current, join, per_share, split


def standardize(x: Tensor, dims: tuple[int, ...], eps: float) -> Tensor:
    """(x - mean) / sqrt(biased var + eps), statistics taken over `dims`."""
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def per_channel(v: Tensor, x: Tensor) -> Tensor:
    """View a (C,) vector so that it broadcasts along dim 1 of x."""
    return v.view(1, -1, *([1] * (x.dim() - 2)))


class _PerChannelAffine(nn.Module):
    """γ (weight) and β (bias), one pair per channel, initialised to 1 and 0."""

    def __init__(self, num_features: int, affine: bool) -> None:
        super().__init__()
        self.num_features = num_features
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def scale_shift(self, x_hat: Tensor) -> Tensor:
        if not self.affine:
            return x_hat
        return x_hat * per_channel(self.weight, x_hat) + per_channel(self.bias, x_hat)


class ReferenceBatchNorm(PerShare, _PerChannelAffine):
    """BatchNorm: per channel, statistics over the batch and every spatial position (N, H, W).

    Training normalizes with the batch's mean and biased variance and updates the running statistics
    with PyTorch's convention (the user's notes write the textbook one, where momentum weighs the *old*
    value and is about 0.9):

        running = (1 - momentum) * running + momentum * batch_statistic,   momentum = 0.1

    with the *unbiased* batch variance (n / (n - 1) times the biased one) going into running_var.
    `momentum=None` makes the running statistics a cumulative average: momentum = 1 / batches_seen.
    Evaluation normalizes with the running statistics instead, so train and eval outputs differ.

    With `workers` = W > 1, training normalizes each worker share with its own statistics, and the running
    statistics follow share 0 alone: PyTorch's DDP (broadcast_buffers=True, its default) copies rank 0's
    buffers to every rank at each forward, so rank 0's updates, from its share, are the ones that survive.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__(num_features, affine)
        self.eps = eps
        self.momentum = momentum
        self.track_running_stats = track_running_stats
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def batch_statistics(self, x: Tensor) -> tuple[Tensor, Tensor, int]:
        """Per-channel mean and biased variance of x, and how many values each averages."""
        dims = (0, *range(2, x.dim()))
        n = x.numel() // x.shape[1]
        if self.training and n == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
        return x.mean(dim=dims), x.var(dim=dims, unbiased=False), n

    def share_statistics(self, x: Tensor) -> tuple[Tensor, Tensor, int]:
        """Per-share, per-channel mean and biased variance, each (W, C), and how many values each averages."""
        xs = split(x, current().count, current().interleaved)
        dims = (1, *range(3, xs.dim()))
        n = xs[0].numel() // x.shape[1]
        if n == 1:
            raise ValueError(f"Expected more than 1 value per channel in each worker share, got input size {x.shape}")
        return xs.mean(dim=dims), xs.var(dim=dims, unbiased=False), n

    @torch.no_grad()
    def update_running_stats(self, mean: Tensor, var: Tensor, n: int) -> None:
        self.num_batches_tracked += 1
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased_var = var * n / (n - 1)
        self.running_mean.mul_(1 - m).add_(m * mean)
        self.running_var.mul_(1 - m).add_(m * unbiased_var)

    def forward(self, x: Tensor) -> Tensor:
        shares = current()
        if self.training and shares.count > 1:
            mean, var, n = self.share_statistics(x)
            if self.track_running_stats:
                self.update_running_stats(mean[0].detach(), var[0].detach(), n)  # share 0: rank 0's buffers
            xs = split(x, shares.count, shares.interleaved)
            x_hat = (xs - per_share(mean, xs)) / torch.sqrt(per_share(var, xs) + self.eps)
            return self.scale_shift(join(x_hat, shares.interleaved))
        if self.training or not self.track_running_stats:
            mean, var, n = self.batch_statistics(x)
            if self.training and self.track_running_stats:
                self.update_running_stats(mean.detach(), var.detach(), n)
        else:
            mean, var = self.running_mean, self.running_var
        x_hat = (x - per_channel(mean, x)) / torch.sqrt(per_channel(var, x) + self.eps)
        return self.scale_shift(x_hat)


class ReferenceLayerNorm(_PerChannelAffine):
    """LayerNorm: per sample, statistics over all of its features (C for vectors, C, H, W for maps).

    On feature maps the affine transform stays per channel, as in the GroupNorm paper (and equal to
    GroupNorm with one group), so the parameter count does not depend on the resolution.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_features, affine)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return self.scale_shift(standardize(x, tuple(range(1, x.dim())), self.eps))


class ReferenceInstanceNorm(_PerChannelAffine):
    """InstanceNorm: per sample and per channel, statistics over the spatial positions (H, W)."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_features, affine)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x[0, 0].numel() == 1:
            raise ValueError(f"Expected more than 1 spatial element when training, got input size {x.shape}")
        return self.scale_shift(standardize(x, tuple(range(2, x.dim())), self.eps))


class ReferenceGroupNorm(_PerChannelAffine):
    """GroupNorm: per sample, channels split into G groups, statistics over (C/G, H, W) in each group.

    γ and β are still per channel (C of each), not per group. G=1 is LayerNorm, G=C is InstanceNorm.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        if num_channels % num_groups:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        super().__init__(num_channels, affine)
        self.num_groups = num_groups
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        grouped = x.reshape(x.shape[0], self.num_groups, -1)
        x_hat = standardize(grouped, (2,), self.eps).reshape(x.shape)
        return self.scale_shift(x_hat)


class ReferenceRMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x²) + eps) · γ_c over the same axes as LayerNorm.

    No mean is subtracted and there is no β.
    """

    def __init__(self, num_features: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        dims = tuple(range(1, x.dim()))
        y = x * torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + self.eps)
        return y if self.weight is None else y * per_channel(self.weight, y)
