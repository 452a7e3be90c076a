"""Layer classes the registry builds: layout adapters, Batch Renormalization, a per-channel RMSNorm, and
PyTorch's LayerNorm with the `(num_features, eps, affine)` arguments every norm class here takes.

Models see three layouts: `vector` (N, C), `image` (N, C, H, W) and `sequence` (N, L, D). PyTorch's
norms (and the reference ones) expect the channel axis at dim 1, so sequences are adapted by the two
mixins below. They only move axes: parameters, buffers and state_dict keys stay those of the wrapped class.

Worker shares (docs/workers.md, `shares.py`): every BN-family class here reads the split of the forward under way
(`shares.current()`). With W > 1 shares, training normalizes each of the W contiguous shares of the batch with its
own statistics in one forward, and the running statistics follow share 0 (what PyTorch's DDP leaves with
broadcast_buffers=True). At W = 1 the forward is the wrapped class's own, unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from normbench.parts.norms.reference import (
    ReferenceBatchNorm,
    ReferenceGroupNorm,
    ReferenceInstanceNorm,
    ReferenceLayerNorm,
    ReferenceRMSNorm,
    per_channel,
)
from normbench.parts.norms.shares import PerShare, current, join, per_share, split, worker_shares


def share_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: Tensor, workers: int, interleaved: bool) -> Tensor:
    """Training BatchNorm with statistics per worker share, in one call of PyTorch's fused kernel (the ghost-BN
    trick): (N, C, *) becomes (N/W, W·C, *), share r's channel c being channel r·C + c, so that each (share,
    channel) pair is one channel of the kernel: a view when the batch is `interleaved`, else a copy each way.
    γ and β are repeated per share (their gradients sum over the shares); the running statistics take share
    0's update alone, as DDP's buffer broadcast from rank 0 leaves them."""
    n, c, rest = x.shape[0], x.shape[1], x.shape[2:]
    running_mean = running_var = None
    factor = 0.0
    if bn.track_running_stats and bn.running_mean is not None and bn.running_var is not None:
        bn.num_batches_tracked.add_(1)  # type: ignore[union-attr,operator]
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        running_mean, running_var = bn.running_mean.repeat(workers), bn.running_var.repeat(workers)
    if interleaved:
        y = InterleavedBatchNorm.apply(x, bn.weight, bn.bias, running_mean, running_var, workers, factor, bn.eps)
    else:
        wide = split(x, workers).transpose(0, 1).reshape(n // workers, workers * c, *rest)
        weight = None if bn.weight is None else bn.weight.repeat(workers)
        bias = None if bn.bias is None else bn.bias.repeat(workers)
        y = F.batch_norm(wide, running_mean, running_var, weight, bias, True, factor, bn.eps)
        y = join(y.reshape(n // workers, workers, c, *rest).transpose(0, 1))
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            bn.running_mean.copy_(running_mean[:c])  # type: ignore[union-attr]
            bn.running_var.copy_(running_var[:c])  # type: ignore[union-attr]
    return y


class InterleavedBatchNorm(torch.autograd.Function):
    """PyTorch's fused BatchNorm kernels on an interleaved batch viewed as (N/W, W·C, *), writing into an output
    of the input's own shape: returned as a view of the kernel's output, it would make the in-place ReLU that
    follows a norm copy it back and forth in the backward (autograd's view + in-place rule)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        workers: int,
        momentum: float,
        eps: float,
    ) -> Tensor:
        wide_shape = (x.shape[0] // workers, workers * x.shape[1], *x.shape[2:])
        wide = x.reshape(wide_shape)
        wide_weight = None if weight is None else weight.repeat(workers)
        wide_bias = None if bias is None else bias.repeat(workers)
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        accumulate = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        mean = torch.empty(wide_shape[1], dtype=accumulate, device=x.device)
        invstd = torch.empty_like(mean)
        torch.ops.aten.native_batch_norm.out(
            wide, wide_weight, wide_bias, running_mean, running_var, True, momentum, eps,
            out=out.view(wide_shape), save_mean=mean, save_invstd=invstd,
        )  # fmt: skip
        ctx.save_for_backward(wide, wide_weight, mean, invstd)
        ctx.eps, ctx.workers, ctx.affine = eps, workers, weight is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        wide, wide_weight, mean, invstd = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.affine and ctx.needs_input_grad[1], ctx.affine and ctx.needs_input_grad[2]]
        grad_x, grad_w, grad_b = torch.ops.aten.native_batch_norm_backward(
            grad.reshape(wide.shape), wide, wide_weight, None, None, mean, invstd, True, ctx.eps, mask
        )
        channels = wide.shape[1] // ctx.workers
        per_channel_sum = lambda g: None if g is None else g.view(ctx.workers, channels).sum(0)  # noqa: E731
        x_grad = None if grad_x is None else grad_x.view(grad.shape)
        return x_grad, per_channel_sum(grad_w), per_channel_sum(grad_b), None, None, None, None, None


class WorkerShares(PerShare):
    """PyTorch's BatchNorm with per-share training statistics when the forward runs in W > 1 shares
    (`share_batch_norm`)."""

    def forward(self, x: Tensor) -> Tensor:
        shares = current()
        if shares.count > 1 and self.training:  # type: ignore[attr-defined]
            return share_batch_norm(self, x, shares.count, shares.interleaved)  # type: ignore[arg-type]
        return super().forward(x)  # type: ignore[misc]


class BatchNorm1d(WorkerShares, nn.BatchNorm1d):
    pass


class BatchNorm2d(WorkerShares, nn.BatchNorm2d):
    pass


class FeaturesToChannels:
    """(N, L, D) → (N, D, L) for the wrapped norm, and back: statistics across tokens, per feature."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)  # type: ignore[misc]


class PerToken:
    """(N, L, D) → (N·L, D) for the wrapped norm, and back: each token is normalized on its own."""

    def forward(self, x: Tensor) -> Tensor:
        n, length, d = x.shape
        return super().forward(x.reshape(n * length, d)).reshape(n, length, d)  # type: ignore[misc]


class SequenceBatchNorm(FeaturesToChannels, BatchNorm1d):
    pass


class SequenceReferenceBatchNorm(FeaturesToChannels, ReferenceBatchNorm):
    pass


class SequenceInstanceNorm(FeaturesToChannels, nn.InstanceNorm1d):
    pass


class SequenceReferenceInstanceNorm(FeaturesToChannels, ReferenceInstanceNorm):
    pass


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm over the last axis (C of vectors, D of tokens), with the other norms' `affine` keyword."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(num_features, eps=eps, elementwise_affine=affine)


class ChannelLayerNorm(nn.GroupNorm):
    """The GroupNorm paper's LN on (N, C, H, W): statistics over C, H, W, γ and β per channel (one group)."""

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__(1, num_features, eps=eps, affine=affine)


class TokenGroupNorm(PerToken, nn.GroupNorm):
    pass


class TokenReferenceGroupNorm(PerToken, ReferenceGroupNorm):
    pass


class TokenReferenceLayerNorm(PerToken, ReferenceLayerNorm):
    pass


class RMSNorm(ReferenceRMSNorm):
    """The same RMSNorm (parameters, state_dict) computed by PyTorch's fused kernel, where it exists."""

    def forward(self, x: Tensor) -> Tensor:
        if not hasattr(F, "rms_norm"):  # torch 2.2 has no fused RMSNorm: compute the formula
            return super().forward(x)
        y = F.rms_norm(x, x.shape[1:], eps=self.eps)
        return y if self.weight is None else y * per_channel(self.weight, y)


class TokenRMSNorm(PerToken, RMSNorm):
    pass


class TokenReferenceRMSNorm(PerToken, ReferenceRMSNorm):
    pass


class BatchRenorm(ReferenceBatchNorm):
    """Batch Renormalization (Ioffe 2017), written from its formulas.

    In training, with batch statistics μ_B, σ_B and running ones μ, σ (σ = sqrt(running_var + eps)):

        r = clip(σ_B / σ, 1/r_max, r_max)      d = clip((μ_B - μ) / σ, -d_max, d_max)
        y = γ · ((x - μ_B) / σ_B · r + d) + β

    r and d are constants for backprop (computed without gradient). With r = 1, d = 0 this is BatchNorm;
    the clip limits therefore open linearly from (1, 0) to (r_max, d_max) over `warmup_steps` training
    batches, as the paper relaxes them. Running statistics and evaluation are BatchNorm's (PyTorch's
    momentum convention, unbiased running variance), so the state_dict is BatchNorm's too. With worker shares,
    μ_B, σ_B, r and d are per share, and the running statistics follow share 0 (as ReferenceBatchNorm's).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        *,
        r_max: float,  # no defaults here: the registry's builder (catalog.batch_renorm) states them once
        d_max: float,
        warmup_steps: int,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats=True)
        self.r_max, self.d_max, self.warmup_steps = r_max, d_max, warmup_steps

    def clip_limits(self) -> tuple[Tensor, Tensor]:
        """The current (r_max, d_max), opened linearly over the warm-up. Tensors, not Python numbers: no host
        sync per step on a GPU."""
        done = (self.num_batches_tracked / max(self.warmup_steps, 1)).clamp(max=1.0)
        if self.warmup_steps <= 0:
            done = torch.ones_like(done)
        return 1.0 + (self.r_max - 1.0) * done, self.d_max * done

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        shares = current()
        per_worker = shares.count > 1
        mean, var, n = self.share_statistics(x) if per_worker else self.batch_statistics(x)  # (W, C) or (C,)
        sigma_batch = torch.sqrt(var + self.eps)
        with torch.no_grad():
            r_max, d_max = self.clip_limits()
            sigma = torch.sqrt(self.running_var + self.eps)
            r = torch.clamp(sigma_batch / sigma, 1.0 / r_max, r_max)
            d = torch.clamp((mean - self.running_mean) / sigma, -d_max, d_max)
        if per_worker:
            xs = split(x, shares.count, shares.interleaved)
            x_hat = (xs - per_share(mean, xs)) / per_share(sigma_batch, xs) * per_share(r, xs) + per_share(d, xs)
            x_hat = join(x_hat, shares.interleaved)
            self.update_running_stats(mean[0].detach(), var[0].detach(), n)  # share 0: rank 0's buffers
        else:
            x_hat = (x - per_channel(mean, x)) / per_channel(sigma_batch, x) * per_channel(r, x)
            x_hat = x_hat + per_channel(d, x)
            self.update_running_stats(mean.detach(), var.detach(), n)
        return self.scale_shift(x_hat)


class SequenceBatchRenorm(FeaturesToChannels, BatchRenorm):
    pass


# --- SyncBN: batch statistics over every worker's share ----------------------------------------------------


_unsynced: ContextVar[bool] = ContextVar("normbench_unsynced", default=False)


@contextmanager
def unsynced() -> Iterator[None]:
    """Inside, synced norms normalize over this process's batch alone, as in one process: rank 0 validates by
    itself while the other worker processes wait (run/distributed.py)."""
    token = _unsynced.set(True)
    try:
        yield
    finally:
        _unsynced.reset(token)


def synced_world(group: Any) -> int:
    """How many processes a synced norm averages over: the size of `group` (None: the default group) when a
    torch.distributed process group is running, else 1 (one process: BN over its batch; also `unsynced()`)."""
    if _unsynced.get() or not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


class SyncStandardize(torch.autograd.Function):
    """x̂ = (x - μ) / sqrt(σ² + eps), μ and the biased σ² per channel over the inputs of every process of `group`:
    one all-reduce of the per-channel count, sum and sum of squares (in float64: the difference of sums loses
    float32's digits when the mean is large against the spread). Backward, with g = ∂L/∂x̂ and sums over every
    process's values (n of them):

        ∂L/∂x = (g - Σg / n - x̂ · Σ(g·x̂) / n) / sqrt(σ² + eps)

    one all-reduce of Σg and Σ(g·x̂). Outputs x̂ and, not differentiable, μ, σ² and n for the running statistics.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, eps: float, group: Any) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        dims = (0, *range(2, x.dim()))
        total = x.sum(dims, dtype=torch.float64)
        count = torch.full_like(total, x.numel() // x.shape[1])
        stats = torch.stack([count, total, (x * x).sum(dims, dtype=torch.float64)])
        dist.all_reduce(stats, group=group)
        n, total, squares = stats
        mean = total / n
        var = (squares / n - mean * mean).clamp_min(0)
        invstd = torch.rsqrt(var + eps).to(x.dtype)
        x_hat = (x - per_channel(mean.to(x.dtype), x)) * per_channel(invstd, x)
        ctx.save_for_backward(x_hat, invstd, n)
        ctx.group = group
        ctx.mark_non_differentiable(mean, var, n)
        return x_hat, mean, var, n

    @staticmethod
    def backward(ctx: Any, g: Tensor, *unused: Any) -> tuple[Tensor, None, None]:
        x_hat, invstd, n = ctx.saved_tensors
        dims = (0, *range(2, g.dim()))
        sums = torch.stack([g.sum(dims, dtype=torch.float64), (g * x_hat).sum(dims, dtype=torch.float64)])
        dist.all_reduce(sums, group=ctx.group)
        mean_g, mean_gx = (sums / n).to(g.dtype)
        return (g - per_channel(mean_g, g) - x_hat * per_channel(mean_gx, g)) * per_channel(invstd, g), None, None


def sync_batch_norm(bn: Any, x: Tensor) -> Tensor:
    """Training BatchNorm of `bn` (weight, bias, running buffers, momentum, eps as nn.BatchNorm's) with the
    statistics of every process of `bn.process_group`: the formula version of nn.SyncBatchNorm, for any device
    torch.distributed can all-reduce on (gloo on the CPU). The running statistics take the global mean and the
    unbiased global variance, as nn.SyncBatchNorm's do."""
    x_hat, mean, var, n = SyncStandardize.apply(x, bn.eps, bn.process_group)
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            m = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            count = float(n[0])
            bn.running_mean.mul_(1 - m).add_(m * mean.to(x.dtype))
            bn.running_var.mul_(1 - m).add_(m * (var * count / (count - 1)).to(x.dtype))
    if bn.weight is None:
        return x_hat
    return x_hat * per_channel(bn.weight, x_hat) + per_channel(bn.bias, x_hat)


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """norm=syncbn, impl=torch: BatchNorm over every worker's share. In one process, PyTorch's BatchNorm (also when
    a group of one is running); under a torch.distributed group of several, nn.SyncBatchNorm's forward on CUDA and
    the formula version (`sync_batch_norm`) elsewhere, since nn.SyncBatchNorm syncs only GPU inputs. Emulated worker
    shares do not concern it: on one device it normalizes the whole (total) batch. Not an nn.SyncBatchNorm
    subclass: DistributedDataParallel refuses those on the CPU, where the formula version serves."""

    process_group: Any = None  # None: the default group, as nn.SyncBatchNorm's
    _check_input_dim = nn.SyncBatchNorm._check_input_dim
    _check_non_zero_input_channels = nn.SyncBatchNorm._check_non_zero_input_channels

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or synced_world(self.process_group) == 1:
            return nn.modules.batchnorm._BatchNorm.forward(self, x)  # plain BN: nothing to sync
        if x.device.type == "cuda":
            return nn.SyncBatchNorm.forward(self, x)  # type: ignore[arg-type]
        return sync_batch_norm(self, x)


class ReferenceSyncBatchNorm(ReferenceBatchNorm):
    """norm=syncbn, impl=reference: ReferenceBatchNorm, with the statistics of every process of `process_group`
    (None: the default group) under torch.distributed (`sync_batch_norm`). Not per worker share: `workers` is
    not its setting: emulated, it normalizes the whole (total) batch."""

    process_group: Any = None

    def forward(self, x: Tensor) -> Tensor:
        if self.training and synced_world(self.process_group) > 1:
            return sync_batch_norm(self, x)
        with worker_shares(1):  # never per share: emulated, it normalizes the whole (total) batch
            return super().forward(x)


class SequenceSyncBatchNorm(FeaturesToChannels, SyncBatchNorm):
    pass


class SequenceReferenceSyncBatchNorm(FeaturesToChannels, ReferenceSyncBatchNorm):
    pass
