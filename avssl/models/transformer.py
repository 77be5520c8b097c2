"""Transformer pieces of the ViT encoders and of masked-autoencoder decoders: pre-norm blocks
whose attention is torch's fused ``scaled_dot_product_attention``, a patch embedding that
knows which input patch each token came from (:func:`patchify` / :func:`unpatchify`), and
fixed sin-cos position embeddings.

Token order everywhere is the row-major order of the token grid (T'×H'×W' for video,
F'×T' for a log-mel, T' for a waveform): token ``n`` of a patch embedding is row ``n`` of
:func:`patchify`, so masks, reconstructions and feature maps all index patches alike.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from avssl.models.base import conv_bn_relu_stack


def sincos_position_embedding(dim: int, grid: Sequence[int]) -> torch.Tensor:
    """prod(grid)×``dim`` fixed embedding: for each grid axis, last axis first (MAE's 2-D code
    puts the column before the row, "Masked Autoencoders Are Scalable Vision Learners"), the
    1-D code [sin(pos·ω), cos(pos·ω)] with ω = 1/10000^(2i/part) over an even share ``part``
    of the width; shares differ by 2 where ``dim`` does not split equally."""
    grid = tuple(int(g) for g in grid)
    if dim % 2 or dim < 2 * len(grid):
        raise ValueError(f"a sin-cos position embedding over a {len(grid)}-D grid needs an even width of at least "
                         f"{2 * len(grid)}, got {dim}")
    parts = [2 * (dim // (2 * len(grid)))] * len(grid)
    for i in range((dim - sum(parts)) // 2):
        parts[i] += 2
    coords = torch.meshgrid(*(torch.arange(g, dtype=torch.float64) for g in grid), indexing="ij")
    codes = []
    for axis, part in zip(reversed(coords), parts):
        omega = 1.0 / 10000 ** (torch.arange(part // 2, dtype=torch.float64) / (part / 2))
        angle = axis.reshape(-1, 1) * omega
        codes += [angle.sin(), angle.cos()]
    return torch.cat(codes, dim=1).float()


def patchify(x: torch.Tensor, patch_size: Sequence[int]) -> torch.Tensor:
    """B×C×S₁×…×S_k → B×N×(p₁⋯p_k·C): one row per patch in token order, each patch's values
    ordered (p₁, …, p_k, C) as MAE's targets. Trailing input that fills no whole patch is
    dropped, as the patch embedding's strided convolution drops it."""
    b, c, *sizes = x.shape
    k = len(patch_size)
    if len(sizes) != k:
        raise ValueError(f"patch size {tuple(patch_size)} has {k} axes, the input {len(sizes)}: {tuple(x.shape)}")
    grid = [s // p for s, p in zip(sizes, patch_size)]
    x = x[(..., *(slice(0, g * p) for g, p in zip(grid, patch_size)))]
    x = x.reshape(b, c, *(v for g, p in zip(grid, patch_size) for v in (g, p)))
    # B, C, g1, p1, …, gk, pk → B, g1…gk, p1…pk, C
    order = [0, *range(2, 2 + 2 * k, 2), *range(3, 3 + 2 * k, 2), 1]
    return x.permute(order).reshape(b, math.prod(grid), math.prod(patch_size) * c)


def unpatchify(patches: torch.Tensor, grid: Sequence[int], patch_size: Sequence[int]) -> torch.Tensor:
    """The inverse of :func:`patchify`: B×N×(p₁⋯p_k·C) → B×C×(g₁p₁)×…×(g_kp_k)."""
    b, n, length = patches.shape
    k = len(patch_size)
    if n != math.prod(grid) or length % math.prod(patch_size):
        raise ValueError(f"{n} patches of {length} values do not fill a grid {tuple(grid)} of "
                         f"{tuple(patch_size)} patches")
    c = length // math.prod(patch_size)
    x = patches.reshape(b, *grid, *patch_size, c)
    # B, g1…gk, p1…pk, C → B, C, g1, p1, …, gk, pk
    order = [0, 1 + 2 * k, *(v for i in range(k) for v in (1 + i, 1 + k + i))]
    return x.permute(order).reshape(b, c, *(g * p for g, p in zip(grid, patch_size)))


class PatchEmbed(nn.Module):
    """Non-overlapping patches → B×N×``dim`` tokens (a strided convolution, ``proj``).

    ``stem_widths`` puts 3×3 conv-BN-ReLU layers of stride 2 in front ("Early Convolutions
    Help Transformers See Better", Xiao et al., NeurIPS 2021): each halves the resolution
    (per frame for video) and ``proj`` then covers the rest of the patch, so token ``n``
    still stands for patch ``n`` of :func:`patchify`, seen with a few pixels of context.
    """

    def __init__(self, in_channels: int, dim: int, patch_size: Sequence[int], stem_widths: Sequence[int] = ()) -> None:
        super().__init__()
        self.patch_size = tuple(int(p) for p in patch_size)
        if not 1 <= len(self.patch_size) <= 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be 1 to 3 positive ints, got {tuple(patch_size)}")
        stem_widths = tuple(int(w) for w in stem_widths)
        kernel, channels = self.patch_size, in_channels
        self.stem: nn.Module | None = None
        if stem_widths:
            stride = 2 ** len(stem_widths)
            if len(self.patch_size) < 2 or any(p % stride for p in self.patch_size[-2:]):
                raise ValueError(f"a stem of {len(stem_widths)} stride-2 layers needs 2-D patches whose last two "
                                 f"sizes divide by {stride}, got patch_size {self.patch_size}")
            self.stem = conv_bn_relu_stack(nn.Conv2d, nn.BatchNorm2d, in_channels, stem_widths,
                                           [2] * len(stem_widths))
            kernel = (*self.patch_size[:-2], *(p // stride for p in self.patch_size[-2:]))
            channels = stem_widths[-1]
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[len(self.patch_size) - 1]
        self.proj = conv(channels, dim, kernel_size=kernel, stride=kernel)

    def grid(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """The token grid of an input of this shape (whole patches only)."""
        sizes = tuple(input_shape)[-len(self.patch_size):]
        grid = tuple(s // p for s, p in zip(sizes, self.patch_size))
        if min(grid) < 1:
            raise ValueError(f"input {tuple(input_shape)} is smaller than one {self.patch_size} patch")
        return grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.grid(x.shape)
        x = x[(..., *(slice(0, g * p) for g, p in zip(grid, self.patch_size)))]  # whole patches, as patchify
        if self.stem is not None:
            if x.dim() == 5:  # per frame: B×C×T×H×W → (B·T)×C×H×W and back
                b, t = x.shape[0], x.shape[2]
                x = self.stem(x.transpose(1, 2).flatten(0, 1))
                x = x.reshape(b, t, *x.shape[1:]).transpose(1, 2)
            else:
                x = self.stem(x)
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` (flash / memory-
    efficient kernels, bf16, torch.compile). Hand-written rather than ``nn.MultiheadAttention``
    so that parameter names (``qkv``, ``proj``) are timm's and an ImageNet ViT/MAE file loads."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} does not split into {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """Linear → GELU → Linear (timm's names)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x)). LayerNorm ε 1e-6 as
    timm's ViT and VATT."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def transformer_blocks(dim: int, depth: int, heads: int, mlp_ratio: float = 4.0) -> nn.Sequential:
    """``depth`` pre-norm blocks in a Sequential (B×N×dim → B×N×dim)."""
    if int(depth) < 1:
        raise ValueError(f"depth must be a positive int, got {depth}")
    return nn.Sequential(*(Block(dim, heads, mlp_ratio) for _ in range(int(depth))))


def init_vit_weights(module: nn.Module) -> None:
    """MAE's initialisation: Xavier-uniform linear layers (and patch projections, seen as the
    linear map they are), zero biases, unit LayerNorms; ``module.apply(init_vit_weights)``."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, PatchEmbed):
        weight = module.proj.weight.data
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(module.proj.bias)
