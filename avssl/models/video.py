"""Video encoders: B×3×T×H×W float (normalised frames) → B×D.

* ``r2plus1d_18``, ``r3d_18``, ``mc3_18``: torchvision's video ResNets (random init),
  held unmodified as ``backbone`` so exported weights load into torchvision's classes.
* ``small3d``: a small 3D CNN for CPU runs and tests; it also takes single frames (T=1).
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import video as tv_video

from avssl.models.base import Encoder, TorchvisionBackbone, conv_bn_relu_stack

TORCHVISION_VIDEO_ARCHS: tuple[str, ...] = ("r2plus1d_18", "r3d_18", "mc3_18")


class TorchvisionVideoEncoder(TorchvisionBackbone):
    """torchvision ``r2plus1d_18`` / ``r3d_18`` / ``mc3_18`` without its classifier.

    The feature map is the output of ``layer4``: B×512×T'×H/16×W/16, with T' = T/8 for
    ``r2plus1d_18`` and ``r3d_18`` (rounded up at each of their three temporal strides)
    and T' = T for ``mc3_18`` (its later groups are spatial-only). torchvision pools by averaging;
    ``pooling="max"`` gives the AVID variant's global max pool.
    """

    modality = "video"
    input_layout = "B×3×T×H×W"
    in_channels = 3

    def __init__(self, arch: str, pooling: str = "avg") -> None:
        super().__init__(pooling)
        if arch not in TORCHVISION_VIDEO_ARCHS:
            raise ValueError(f"unknown torchvision video architecture {arch!r}; known: {list(TORCHVISION_VIDEO_ARCHS)}")
        self.arch = arch
        self.torchvision_arch = f"torchvision.models.video.{arch}"
        self.backbone = getattr(tv_video, arch)()  # random init: never `weights=`
        self.embedding_dim = self.backbone.fc.in_features
        self.freeze_unused_classifier()

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        b = self.backbone
        x = b.stem(x)
        x = b.layer1(x)
        x = b.layer2(x)
        x = b.layer3(x)
        return b.layer4(x)


class Small3D(Encoder):
    """A small 3D CNN: one block per entry of ``widths``, each ``depth`` 3×3×3 convs
    (padding 1) with BatchNorm and ReLU, the first of stride ``(temporal_stride, spatial_stride,
    spatial_stride)``.

    Spatial size halves in every block by default (112 → 7 with four blocks).
    ``spatial_strides`` (1 or 2 per block) keeps a finer last feature map for methods that
    localise on it: at 64 px the default map is 4×4, a cell of 16 px for objects of 22–29 px;
    ``[2, 2, 2, 1]`` gives 8×8 (docs/methods/lvs.md). A temporal stride of 2
    with padding 1 maps T to ⌈T/2⌉, so T=1 stays 1: single frames need no special case.
    ``depth=2`` doubles the layers at about twice the compute: on single 64×64 synthetic
    frames, supervised, it took the test accuracy from 57 % to 91 % (docs/models.md).
    """

    modality = "video"
    input_layout = "B×3×T×H×W"

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64, 128),
        temporal_strides: Sequence[int] | None = None,
        pooling: str = "avg",
        in_channels: int = 3,
        depth: int = 1,
        spatial_strides: Sequence[int] | None = None,
    ) -> None:
        super().__init__(pooling)
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"widths must be a non-empty list of positive ints, got {widths}")
        if temporal_strides is None:  # downsample time in the second half of the net
            temporal_strides = tuple(1 if i < len(widths) // 2 else 2 for i in range(len(widths)))
        temporal_strides = tuple(int(s) for s in temporal_strides)
        if len(temporal_strides) != len(widths) or any(s not in (1, 2) for s in temporal_strides):
            raise ValueError(
                f"temporal_strides must have one entry (1 or 2) per width ({len(widths)}), got {temporal_strides}"
            )
        spatial_strides = tuple(int(s) for s in (spatial_strides or (2,) * len(widths)))
        if len(spatial_strides) != len(widths) or any(s not in (1, 2) for s in spatial_strides):
            raise ValueError(
                f"spatial_strides must have one entry (1 or 2) per width ({len(widths)}), got {spatial_strides}"
            )
        self.widths = widths
        self.temporal_strides = temporal_strides
        self.spatial_strides = spatial_strides
        self.depth = int(depth)
        self.in_channels = in_channels
        layout = f"B×{in_channels}×T×H×W"
        self.input_layout = layout
        strides = [(t_stride, s_stride, s_stride) for t_stride, s_stride in zip(temporal_strides, spatial_strides)]
        self.blocks = conv_bn_relu_stack(nn.Conv3d, nn.BatchNorm3d, in_channels, widths, strides, depth)
        self.embedding_dim = widths[-1]

    def use_channels_last(self) -> "Small3D":
        # The single-frame path's gradient of a weight's middle slice comes back contiguous,
        # so autograd warns once that it does not match the channels_last_3d weight (one
        # copy of a small weight per step). Still faster on the CPU demo (docs/benchmarks.md).
        warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
        return super().use_channels_last()

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if x.shape[2] != 1:
            return self.blocks(x)
        # One frame: every 3×3×3 conv sees zeros at its outer temporal taps (padding 1), so
        # it is the 2D conv of its middle slice — the same values and gradients for a third
        # of the work, and CPU 2D convolutions are faster still (the CPU recipes use 1 frame).
        # squeeze, not x[:, :, 0]: the backward of a view keeps the gradient channels-last, where
        # select's allocates a contiguous one that every ReLU and BatchNorm then reads strided.
        for conv, norm, relu in self.blocks:
            frame = F.conv2d(x.squeeze(2), conv.weight[:, :, 1], None, conv.stride[1:], conv.padding[1:])
            x = relu(norm(frame.unsqueeze(2)))
        return x


def r2plus1d_18(*, pooling: str = "avg") -> TorchvisionVideoEncoder:
    """torchvision R(2+1)D-18 (factorised stem), 512-d."""
    return TorchvisionVideoEncoder("r2plus1d_18", pooling=pooling)


def r3d_18(*, pooling: str = "avg") -> TorchvisionVideoEncoder:
    """torchvision R3D-18, 512-d."""
    return TorchvisionVideoEncoder("r3d_18", pooling=pooling)


def mc3_18(*, pooling: str = "avg") -> TorchvisionVideoEncoder:
    """torchvision MC3-18 (3D convs in the first group, 2D after; AVTS's encoder), 512-d."""
    return TorchvisionVideoEncoder("mc3_18", pooling=pooling)


def small3d(
    *,
    widths: Sequence[int] = (16, 32, 64, 128),
    temporal_strides: Sequence[int] | None = None,
    pooling: str = "avg",
    depth: int = 1,
    spatial_strides: Sequence[int] | None = None,
) -> Small3D:
    """Small 3D CNN for CPU runs; ``embedding_dim = widths[-1]``, ``depth`` convs per block,
    ``spatial_strides`` (default 2 in every block) for a finer last feature map."""
    return Small3D(widths=widths, temporal_strides=temporal_strides, pooling=pooling, depth=depth,
                   spatial_strides=spatial_strides)
