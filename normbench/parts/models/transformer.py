"""A small Vision Transformer: patches and a class token → pre-norm blocks → final norm → class token → linear head.

Every norm inside sees (N, L, D) token features (the `sequence` layout): LayerNorm normalizes each token
over its D features, BatchNorm each feature over the batch and all tokens, InstanceNorm each feature over the
tokens of one image. Norm layers are named by their place: `block2.attn_norm`, `block2.mlp_norm`, the final `norm`.

The head reads the class token, as in the original ViT (Dosovitskiy et al. 2021) and timm's default. With a mean
over the tokens instead, InstanceNorm as the final norm would make every feature's token mean exactly its β, so
the logits could not depend on the image (the learning test found that).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, length, dim = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, norm_layer: Callable[[int], nn.Module]) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.attn_norm = norm_layer(dim, act=False)
        self.attn = SelfAttention(dim, heads)
        self.mlp_norm = norm_layer(dim, act=False)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class ViT(nn.Module):
    def __init__(
        self,
        norm_layer: Callable[..., nn.Module],
        in_channels: int,
        image_size: tuple[int, int],
        num_classes: int,
        patch_size: int = 4,
        dim: int = 96,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        height, width = image_size
        if height % patch_size or width % patch_size:
            divisors = [d for d in range(1, min(height, width) + 1) if height % d == 0 and width % d == 0]
            raise ValueError(
                f"patch_size={patch_size} does not divide the data's {height}×{width} images (height × width) into "
                f"whole patches. Set model.patch_size to a divisor of both sides ({', '.join(map(str, divisors))}), "
                "or resize the images where the dataset can (data.image_size)."
            )
        if dim % heads:
            raise ValueError(f"heads={heads} does not divide dim={dim}: each head takes dim / heads features")
        patches = (height // patch_size) * (width // patch_size)
        self.patch_embed = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + patches, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        # Blocks are named block1 … blockN (tags read `block2.attn_norm`), not indices of a container.
        self.depth = depth
        for i in range(1, depth + 1):
            self.add_module(f"block{i}", Block(dim, heads, mlp_ratio, norm_layer))
        self.norm = norm_layer(dim, act=False)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, L - 1, D)
        x = torch.cat([self.cls_token.expand(len(patches), -1, -1), patches], dim=1) + self.pos_embed
        for i in range(1, self.depth + 1):
            x = getattr(self, f"block{i}")(x)
        return self.head(self.norm(x)[:, 0])
