"""Transformer encoders: a video ViT over space-time patches (VATT's "ViT-Base" takes 4×16×16
patches of 32×224×224 clips), an audio spectrogram transformer over log-mel patches (AST /
CAV-MAE: 16×16) and VATT's waveform transformer over 128-sample segments.

They follow the :class:`~avssl.models.base.Encoder` contract: ``feature_map`` is the final
patch tokens laid out on their grid (B×D×T'×H'×W', B×D×F'×T', a waveform's B×D×1×T'), so
localization reads patch tokens, and ``forward`` pools that map (mean by default, as
CAV-MAE pools; VATT reads an extra aggregation token instead, which has no place on a map).

Pretext methods that mask or drop tokens use the two halves directly: :meth:`embed` (patch
tokens plus position embedding, before any masking, as MAE and VATT add it) and
:meth:`encode` (the blocks and final norm over whichever tokens are kept).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file
from torch import nn

from avssl.models.base import Encoder, pool_tokens
from avssl.models.transformer import PatchEmbed, init_vit_weights, sincos_position_embedding, transformer_blocks

POSITION_EMBEDDINGS: tuple[str, ...] = ("sincos", "learned")


class ViTSize(NamedTuple):
    dim: int
    depth: int
    heads: int


#: tiny: CPU demo; small and base: ViT-S/ViT-B ("An Image is Worth 16x16 Words"); base is the
#: width of VATT's ViT-Base and of CAV-MAE's encoders.
VIT_SIZES: dict[str, ViTSize] = {
    "tiny": ViTSize(dim=64, depth=4, heads=2),
    "small": ViTSize(dim=384, depth=12, heads=6),
    "base": ViTSize(dim=768, depth=12, heads=12),
}

_LAYOUTS = {"video": ("video", "B×3×T×H×W", 3), "logmel": ("audio", "B×1×F×T", 1), "waveform": ("audio", "B×1×N", 1)}


class VisionTransformer(Encoder):
    """Patch embedding → (+ position embedding) → pre-norm blocks → LayerNorm.

    ``input_kind`` is ``"video"`` (3-D patches), ``"logmel"`` (2-D) or ``"waveform"`` (1-D).
    ``input_size`` (the spatial sizes without batch and channel) fixes the grid of a learned
    position embedding; a sin-cos one is recomputed for any other grid.
    """

    def __init__(self, input_kind: str, input_size: Sequence[int], patch_size: Sequence[int], dim: int, depth: int,
                 heads: int, mlp_ratio: float = 4.0, stem_widths: Sequence[int] = (),
                 position_embedding: str = "sincos", pooling: str = "avg") -> None:
        super().__init__(pooling)
        if input_kind not in _LAYOUTS:
            raise ValueError(f"input_kind must be one of {sorted(_LAYOUTS)}, got {input_kind!r}")
        if position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(f"position_embedding must be one of {POSITION_EMBEDDINGS}, got {position_embedding!r}")
        self.modality, self.input_layout, self.in_channels = _LAYOUTS[input_kind]
        self.input_kind = input_kind
        if len(input_size) != len(patch_size):
            raise ValueError(f"input_size {tuple(input_size)} and patch_size {tuple(patch_size)} "
                             f"need one entry per axis of a {self.input_layout} input")
        self.embedding_dim = int(dim)
        self.patch_embed = PatchEmbed(self.in_channels, self.embedding_dim, patch_size, stem_widths)
        self.grid = self.patch_embed.grid(input_size)
        self.position_embedding = position_embedding
        if position_embedding == "learned":
            self.pos_embed = nn.Parameter(sincos_position_embedding(self.embedding_dim, self.grid)[None])
        else:  # fixed: not in the state dict, rebuilt from the grid
            self.register_buffer("pos_embed", sincos_position_embedding(self.embedding_dim, self.grid)[None],
                                 persistent=False)
        self.blocks = transformer_blocks(self.embedding_dim, depth, heads, mlp_ratio)
        self.norm = nn.LayerNorm(self.embedding_dim, eps=1e-6)
        self.apply(init_vit_weights)

    @property
    def patch_size(self) -> tuple[int, ...]:
        return self.patch_embed.patch_size

    def position(self, grid: tuple[int, ...]) -> torch.Tensor:
        """1×N×D position embedding of a token grid."""
        if grid == self.grid:
            return self.pos_embed
        if self.position_embedding == "learned":
            raise ValueError(f"{type(self).__name__} learned its position embedding for a {self.grid} token grid "
                             f"(input_size), got an input with a {grid} grid")
        return sincos_position_embedding(self.embedding_dim, grid)[None].to(self.pos_embed)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """B×N×D patch tokens with their position embedding, and the token grid."""
        self.check_input(x)
        grid = self.patch_embed.grid(x.shape)
        return self.patch_embed(x) + self.position(grid), grid

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """The blocks and final norm over B×N'×D tokens (all of them, or those a mask kept)."""
        return self.norm(self.blocks(tokens))

    def tokens_to_map(self, tokens: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """B×N×D tokens → B×D×grid (a waveform's 1-D grid becomes B×D×1×T')."""
        fmap = tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)
        return fmap.unsqueeze(2) if len(grid) == 1 else fmap

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        tokens, grid = self.embed(x)
        return self.tokens_to_map(self.encode(tokens), grid)

    def pool_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """The embedding of B×N×D encoded tokens (``pool`` on tokens, for kept-token subsets)."""
        return pool_tokens(tokens, self.pooling)


def _vit(input_kind: str, size: str, input_size: Sequence[int], patch_size: Sequence[int],
         stem_widths: Sequence[int], position_embedding: str, pooling: str) -> VisionTransformer:
    if size not in VIT_SIZES:
        raise ValueError(f"unknown ViT size {size!r}; known: {sorted(VIT_SIZES)}")
    dim, depth, heads = VIT_SIZES[size]
    return VisionTransformer(input_kind, input_size, patch_size, dim, depth, heads, stem_widths=stem_widths,
                             position_embedding=position_embedding, pooling=pooling)


def vit_tiny(*, input_size: Sequence[int] = (1, 64, 64), patch_size: Sequence[int] = (1, 8, 8),
             stem_widths: Sequence[int] = (16, 32), position_embedding: str = "sincos",
             pooling: str = "avg") -> VisionTransformer:
    """CPU-demo video ViT: width 64, 4 blocks, 2 heads; single 64×64 frames in 8×8 patches
    (64 tokens) behind a two-layer conv stem."""
    return _vit("video", "tiny", input_size, patch_size, stem_widths, position_embedding, pooling)


def vit_small(*, input_size: Sequence[int] = (16, 112, 112), patch_size: Sequence[int] = (2, 16, 16),
              stem_widths: Sequence[int] = (), position_embedding: str = "sincos",
              pooling: str = "avg") -> VisionTransformer:
    """ViT-S video encoder (width 384, 12 blocks, 6 heads)."""
    return _vit("video", "small", input_size, patch_size, stem_widths, position_embedding, pooling)


def vit_base(*, input_size: Sequence[int] = (32, 224, 224), patch_size: Sequence[int] = (4, 16, 16),
             stem_widths: Sequence[int] = (), position_embedding: str = "sincos",
             pooling: str = "avg") -> VisionTransformer:
    """VATT's video ViT-Base: width 768, 12 blocks, 12 heads, 4×16×16 space-time patches of
    32×224×224 clips (``patch_size=(1, 16, 16)`` and ``input_size=(1, 224, 224)`` for
    CAV-MAE's single frames)."""
    return _vit("video", "base", input_size, patch_size, stem_widths, position_embedding, pooling)


def ast_tiny(*, input_size: Sequence[int] = (64, 101), patch_size: Sequence[int] = (8, 10),
             stem_widths: Sequence[int] = (), position_embedding: str = "sincos",
             pooling: str = "avg") -> VisionTransformer:
    """CPU-demo spectrogram transformer: width 64, 4 blocks, 2 heads; 64-band × 1 s log-mel in 8×10
    patches (80 tokens)."""
    return _vit("logmel", "tiny", input_size, patch_size, stem_widths, position_embedding, pooling)


def ast_small(*, input_size: Sequence[int] = (128, 1024), patch_size: Sequence[int] = (16, 16),
              stem_widths: Sequence[int] = (), position_embedding: str = "sincos",
              pooling: str = "avg") -> VisionTransformer:
    """ViT-S spectrogram transformer over 16×16 log-mel patches."""
    return _vit("logmel", "small", input_size, patch_size, stem_widths, position_embedding, pooling)


def ast_base(*, input_size: Sequence[int] = (128, 1024), patch_size: Sequence[int] = (16, 16),
             stem_widths: Sequence[int] = (), position_embedding: str = "sincos",
             pooling: str = "avg") -> VisionTransformer:
    """CAV-MAE's audio encoder: ViT-B over 16×16 patches of a 128-band × 1024-frame log-mel
    (8×64 = 512 tokens)."""
    return _vit("logmel", "base", input_size, patch_size, stem_widths, position_embedding, pooling)


def wat_tiny(*, input_size: Sequence[int] = (16000,), patch_size: Sequence[int] = (128,),
             position_embedding: str = "sincos", pooling: str = "avg") -> VisionTransformer:
    """CPU-size waveform transformer: width 64, 4 blocks, 2 heads, 128-sample patches."""
    return _vit("waveform", "tiny", input_size, patch_size, (), position_embedding, pooling)


def wat_base(*, input_size: Sequence[int] = (153600,), patch_size: Sequence[int] = (128,),
             position_embedding: str = "sincos", pooling: str = "avg") -> VisionTransformer:
    """VATT's waveform transformer: ViT-B width over 128-sample patches of 3.2 s at 48 kHz."""
    return _vit("waveform", "base", input_size, patch_size, (), position_embedding, pooling)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A local weights file as tensors: safetensors, or a torch file read with
    ``weights_only=True`` (never unpickled), unwrapped from a ``{"model": …}`` or
    ``{"state_dict": …}`` checkpoint as MAE's and Lightning's are; ``module.`` prefixes dropped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"initialisation file {path} not found")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("model", "state_dict"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def initialise_from_vit(encoder: VisionTransformer, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy an image ViT's encoder (timm / MAE names, e.g. an ImageNet checkpoint) into
    ``encoder``; returns the encoder keys it set.

    The first ``len(encoder.blocks)`` blocks and the final norm are copied as they are (later
    blocks stay in ``state`` for a method's joint layers, as CAV-MAE's). The 2-D patch kernel
    is summed over RGB for one-channel audio (as AST) and spread evenly over a space-time
    patch's frames (I3D's inflation). The class token and position embedding are not copied:
    these encoders pool without one and use their own position code.
    """
    own = encoder.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for key in own:
        if key.startswith(("blocks.", "norm.")):
            if key not in state:
                raise ValueError(f"the initialisation has no {key!r} (a ViT encoder with timm's parameter names?)")
            loaded[key] = state[key]
    kernel = state.get("patch_embed.proj.weight")
    if kernel is None or encoder.patch_embed.stem is not None or kernel.shape[-2:] != encoder.patch_size[-2:]:
        shape = None if kernel is None else tuple(kernel.shape)
        stem = " behind a conv stem" if encoder.patch_embed.stem is not None else ""
        raise ValueError(f"the initialisation's patch kernel {shape} does not fit {encoder.patch_size} patches{stem}")
    if encoder.in_channels == 1:
        kernel = kernel.sum(dim=1, keepdim=True)
    if len(encoder.patch_size) == 3:
        frames = encoder.patch_size[0]
        kernel = kernel.unsqueeze(2).expand(-1, -1, frames, -1, -1) / frames
    loaded["patch_embed.proj.weight"] = kernel
    loaded["patch_embed.proj.bias"] = state["patch_embed.proj.bias"]
    wrong = [f"{k} {tuple(v.shape)} ≠ {tuple(own[k].shape)}" for k, v in loaded.items() if v.shape != own[k].shape]
    if wrong:
        raise ValueError(f"the initialisation does not fit this encoder: {'; '.join(wrong[:3])}")
    encoder.load_state_dict(loaded, strict=False)
    return sorted(loaded)
