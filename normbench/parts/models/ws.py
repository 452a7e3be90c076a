"""Weight Standardization (Qiao et al. 2019, "Micro-Batch Training with Batch-Channel Normalization and Weight
Standardization"), the conv option `ws` (`model.ws=true`, registered in convs.py): each output filter's weights are
standardized over its (in_channels, kh, kw) values in every forward,

    Ŵ = (W - mean(W)) / sqrt(var(W) + eps)        (biased variance, per output filter)

and the convolution uses Ŵ. It reparametrizes the conv, not the features, so it pairs with any norm; with GroupNorm
it is BiT's choice for small batches. The convention is timm's `StdConv2d` (biased variance, eps inside the square
root, eps = 1e-6), which tests/test_normact.py holds it against; the paper's code adds eps to the unbiased standard
deviation instead, a difference of order 1/(fan-in) in the scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EPS = 1e-6


def standardized(weight: Tensor, eps: float = EPS) -> Tensor:
    """Each output filter of a conv weight (out, in, kh, kw) standardized over its other axes."""
    dims = tuple(range(1, weight.dim()))
    mean = weight.mean(dim=dims, keepdim=True)
    var = weight.var(dim=dims, unbiased=False, keepdim=True)
    return (weight - mean) / torch.sqrt(var + eps)


class StdConv2d(nn.Conv2d):
    """nn.Conv2d whose weight is standardized per output filter in every forward (same parameters, same
    state_dict keys: a checkpoint moves between ws=false and ws=true, though it means something else)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, standardized(self.weight), self.bias, self.stride, self.padding, self.dilation, self.groups)
