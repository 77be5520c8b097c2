"""What every encoder shares: global pooling of its last feature map, input checks, and
the frozen, unused ``fc`` of encoders that wrap a torchvision architecture.

An encoder is a plain ``nn.Module`` with

* ``embedding_dim: int``, the size of the pooled embedding;
* ``feature_map(x)``, the last map before pooling (video B×C×T'×H'×W', audio B×C×F'×T');
* ``forward(x) == pool(feature_map(x))``, a B×``embedding_dim`` embedding.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Pooling = Literal["avg", "max"]
POOLINGS: tuple[str, ...] = ("avg", "max")


def conv_bn_relu_stack(conv: type[nn.Module], norm: type[nn.Module], in_channels: int, widths: tuple[int, ...],
                       strides: list[int | tuple[int, ...]], depth: int = 1) -> nn.Sequential:
    """The small CPU nets: ``depth`` (3×3 conv, no bias) → BN → ReLU layers per width, the
    first of each with that width's stride, the others with stride 1 (one flat Sequential
    of conv-BN-ReLU triples)."""
    if int(depth) < 1:
        raise ValueError(f"depth (conv layers per block) must be a positive int, got {depth}")
    blocks, channels = [], in_channels
    for width, stride in zip(widths, strides):
        for layer in range(int(depth)):
            blocks.append(nn.Sequential(conv(channels, width, kernel_size=3, stride=stride if layer == 0 else 1,
                                             padding=1, bias=False),
                                        norm(width), nn.ReLU(inplace=True)))
            channels = width
    return nn.Sequential(*blocks)


def global_pool(feature_map: torch.Tensor, pooling: str) -> torch.Tensor:
    """B×C×… → B×C by averaging (``"avg"``) or taking the maximum (``"max"``) over all
    positions after the channel axis."""
    positions = tuple(range(2, feature_map.dim()))  # reduced in place: a channels-last map is not copied
    if pooling == "avg":
        return feature_map.mean(dim=positions)
    if pooling == "max":
        return feature_map.amax(dim=positions)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def pool_tokens(tokens: torch.Tensor, pooling: str) -> torch.Tensor:
    """B×N×D tokens → B×D by averaging (``"avg"``) or taking the maximum (``"max"``) over N."""
    if pooling == "avg":
        return tokens.mean(dim=1)
    if pooling == "max":
        return tokens.amax(dim=1)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


class Encoder(nn.Module):
    """Base class: subclasses implement :meth:`feature_map` and set ``embedding_dim``."""

    embedding_dim: int
    #: "video" (B×C×T×H×W input) or "audio" (B×1×F×T log-mel input).
    modality: str
    #: Input rank (5 for video, 4 for audio) and channel count, checked in ``forward``.
    input_layout: str
    in_channels: int
    #: Of the weights and of every input in ``forward``; see :meth:`use_channels_last`.
    memory_format: torch.memory_format = torch.contiguous_format

    def __init__(self, pooling: str) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling

    def check_input(self, x: torch.Tensor) -> None:
        rank = len(self.input_layout.split("×"))
        if x.dim() != rank or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects a {self.input_layout} tensor with "
                f"{self.in_channels} channel(s), got shape {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"{type(self).__name__} expects a float tensor, got {x.dtype}")

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        """The embedding of a map returned by :meth:`feature_map`."""
        return global_pool(feature_map, self.pooling)

    def use_channels_last(self) -> "Encoder":
        """Store the conv weights channels-last (``channels_last_3d`` for a 5-D input) and
        convert inputs in ``forward``: cuDNN's fast layout for bf16 convolutions. Values and
        state-dict keys are unchanged (export writes contiguous copies)."""
        rank = len(self.input_layout.split("×"))
        if rank < 4:  # a waveform (B×1×N) has no channels-last layout: its 1-D convolutions keep theirs
            return self
        self.memory_format = torch.channels_last_3d if rank == 5 else torch.channels_last
        for parameter in self.parameters():
            if parameter.dim() == rank:
                # Strides written out, not `.contiguous(memory_format=…)`: for one input channel
                # (the audio encoders' first conv) that is a no-op, the layout stays ambiguous,
                # and oneDNN then answers a 1-channel input with a contiguous output whose ReLU
                # meets channels-last gradients in the backward pass (a strided copy, which slows
                # the first block's backward markedly on the CPU demo: docs/benchmarks.md).
                restrided = torch.empty_like(parameter.data, memory_format=self.memory_format)
                parameter.data = restrided.copy_(parameter.data)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.feature_map(x.contiguous(memory_format=self.memory_format)))


class TorchvisionBackbone(Encoder):
    """An encoder whose weights live in ``self.backbone``, an unmodified torchvision model
    (``torchvision_arch`` names its constructor), so that ``backbone.state_dict()`` loads
    with ``strict=True`` into a fresh instance of that class.

    The classifier ``backbone.fc`` is kept for that reason but never used; it stays frozen
    (``requires_grad=False``) so that DDP does not see unused trainable parameters, even
    after a caller runs ``requires_grad_(True)`` on the whole encoder.
    """

    #: Dotted path of the torchvision constructor whose state dict ``backbone`` matches.
    torchvision_arch: str
    #: What differs from the stock torchvision class, if anything ("" when nothing).
    torchvision_changes: str = ""
    backbone: nn.Module

    def freeze_unused_classifier(self) -> None:
        self.backbone.fc.requires_grad_(False)

    def requires_grad_(self, requires_grad: bool = True) -> "TorchvisionBackbone":
        super().requires_grad_(requires_grad)
        self.freeze_unused_classifier()
        return self
