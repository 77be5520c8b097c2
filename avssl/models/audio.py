"""Audio encoders: log-mel B×1×F×T float → B×D.

* ``avid_conv2d``: AVID's "Conv2D depth 10" (METHODS §3.1): 7×7 conv stride 2 + BN + ReLU,
  four basic residual blocks of 64/128/256/512 channels (the first three with stride 2),
  global max pool → 512.
* ``resnet18``: torchvision ResNet-18 with a one-channel ``conv1`` (random init).
* ``small2d``: a small 2D CNN for CPU runs and tests.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from avssl.models.base import Encoder, TorchvisionBackbone, conv_bn_relu_stack


def _basic_block(in_channels: int, out_channels: int, stride: int) -> tv_resnet.BasicBlock:
    """A ResNet basic block (two 3×3 conv-BN, identity or 1×1 projection shortcut)."""
    shortcut = None
    if stride != 1 or in_channels != out_channels:
        shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )
    return tv_resnet.BasicBlock(in_channels, out_channels, stride=stride, downsample=shortcut)


class AvidConv2D(Encoder):
    """AVID "Conv2D depth 10" audio network.

    For a F×T log-mel the feature map is B×512×F/16×T/16 (each size rounded up at every
    stride-2 step); AVID pools it with a global max.
    """

    modality = "audio"
    input_layout = "B×1×F×T"
    in_channels = 1

    def __init__(self, pooling: str = "max") -> None:
        super().__init__(pooling)
        self.stem = nn.Sequential(
            nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
        )
        self.block1 = _basic_block(64, 64, stride=2)
        self.block2 = _basic_block(64, 128, stride=2)
        self.block3 = _basic_block(128, 256, stride=2)
        self.block4 = _basic_block(256, 512, stride=1)
        self.embedding_dim = 512
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.stem(x)
        x = self.block1(x)
        x = self.block2(x)
        x = self.block3(x)
        return self.block4(x)


class ResNet18Audio(TorchvisionBackbone):
    """torchvision ResNet-18 on one-channel log-mels.

    ``backbone`` is ``torchvision.models.resnet18()`` with ``conv1`` replaced by a
    one-channel 7×7 conv, so its state dict loads into torchvision's class after the same
    replacement (the only difference is the shape of ``conv1.weight``). The feature map is
    ``layer4``'s output, B×512×F/32×T/32.
    """

    modality = "audio"
    input_layout = "B×1×F×T"
    in_channels = 1
    torchvision_arch = "torchvision.models.resnet18"
    torchvision_changes = "conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)"

    def __init__(self, pooling: str = "avg") -> None:
        super().__init__(pooling)
        self.backbone = tv_resnet.resnet18()  # random init: never `weights=`
        self.backbone.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(self.backbone.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.embedding_dim = self.backbone.fc.in_features
        self.freeze_unused_classifier()

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        x = b.layer1(x)
        x = b.layer2(x)
        x = b.layer3(x)
        return b.layer4(x)


class Small2D(Encoder):
    """A small 2D CNN: one block per entry of ``widths``, each ``depth`` 3×3 convs
    (padding 1) with BatchNorm and ReLU, the first of stride 2; F and T halve (rounded up)
    in every block."""

    modality = "audio"
    input_layout = "B×1×F×T"
    in_channels = 1

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 128), pooling: str = "avg", depth: int = 1) -> None:
        super().__init__(pooling)
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be a non-empty list of positive ints, got {widths}")
        self.widths = widths
        self.depth = int(depth)
        self.blocks = conv_bn_relu_stack(nn.Conv2d, nn.BatchNorm2d, 1, widths, [2] * len(widths), depth)
        self.embedding_dim = widths[-1]

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.blocks(x)


def avid_conv2d(*, pooling: str = "max") -> AvidConv2D:
    """AVID "Conv2D depth 10", 512-d, global max pool by default."""
    return AvidConv2D(pooling=pooling)


def resnet18(*, pooling: str = "avg") -> ResNet18Audio:
    """torchvision ResNet-18 with a one-channel conv1, 512-d."""
    return ResNet18Audio(pooling=pooling)


def small2d(*, widths: Sequence[int] = (16, 32, 64, 128), pooling: str = "avg", depth: int = 1) -> Small2D:
    """Small 2D CNN for CPU runs; ``embedding_dim = widths[-1]``, ``depth`` convs per block."""
    return Small2D(widths=widths, pooling=pooling, depth=depth)
