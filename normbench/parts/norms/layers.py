"""Layer classes the registry builds: layout adapters, Batch Renormalization, a per-channel RMSNorm, and
PyTorch's LayerNorm with the `(num_features, eps, affine)` arguments every norm class here takes.

Models see three layouts: `vector` (N, C), `image` (N, C, H, W) and `sequence` (N, L, D). PyTorch's
norms (and the reference ones) expect the channel axis at dim 1, so sequences are adapted by the two
mixins below. They only move axes: parameters, buffers and state_dict keys stay those of the wrapped class.
"""

from __future__ import annotations

import torch
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


class FeaturesToChannels:
    """(N, L, D) → (N, D, L) for the wrapped norm, and back: statistics across tokens, per feature."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)  # type: ignore[misc]


class PerToken:
    """(N, L, D) → (N·L, D) for the wrapped norm, and back: each token is normalized on its own."""

    def forward(self, x: Tensor) -> Tensor:
        n, length, d = x.shape
        return super().forward(x.reshape(n * length, d)).reshape(n, length, d)  # type: ignore[misc]


class SequenceBatchNorm(FeaturesToChannels, nn.BatchNorm1d):
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
    momentum convention, unbiased running variance), so the state_dict is BatchNorm's too.
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
        mean, var, n = self.batch_statistics(x)
        sigma_batch = torch.sqrt(var + self.eps)
        with torch.no_grad():
            r_max, d_max = self.clip_limits()
            sigma = torch.sqrt(self.running_var + self.eps)
            r = torch.clamp(sigma_batch / sigma, 1.0 / r_max, r_max)
            d = torch.clamp((mean - self.running_mean) / sigma, -d_max, d_max)
        x_hat = (x - per_channel(mean, x)) / per_channel(sigma_batch, x) * per_channel(r, x)
        x_hat = x_hat + per_channel(d, x)
        self.update_running_stats(mean.detach(), var.detach(), n)
        return self.scale_shift(x_hat)


class SequenceBatchRenorm(FeaturesToChannels, BatchRenorm):
    pass
