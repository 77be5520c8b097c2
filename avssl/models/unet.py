"""The mix-and-separate networks ("The Sound of Pixels", ECCV 2018): a U-Net over the log-frequency
spectrogram that outputs K feature maps, a visual projection to K channels, and the
Sound-of-Pixels "linear" synthesiser that combines them into one mask per visual vector.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class UNet(nn.Module):
    """B×``in_channels``×F×T → B×``out_channels``×F×T, ``levels`` stride-2 levels (pix2pix style, as the
    Sound-of-Pixels audio net): input BatchNorm; down = 4×4 conv stride 2 → BN → LeakyReLU(0.2);
    up = 4×4 transposed conv stride 2 → BN → ReLU, with the skip of the same level
    concatenated. Widths double per level from ``base_width`` up to 8×. Inputs whose sides
    are not multiples of 2^levels are padded (replicate) and the output cropped back."""

    def __init__(self, out_channels: int = 32, base_width: int = 16, levels: int = 5, in_channels: int = 1) -> None:
        super().__init__()
        if levels < 2:
            raise ValueError(f"a U-Net needs at least 2 levels, got {levels}")
        self.levels = levels
        widths = [base_width * 2 ** min(i, 3) for i in range(levels)]
        self.input_norm = nn.BatchNorm2d(in_channels)
        self.down = nn.ModuleList()
        channels = in_channels
        for i, width in enumerate(widths):
            layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, stride=2, padding=1, bias=i == 0)]
            if i > 0:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            self.down.append(nn.Sequential(*layers))
            channels = width
        self.up = nn.ModuleList()
        for i in range(levels - 1, 0, -1):  # deepest first; level i's output meets the skip of level i-1
            in_channels = widths[i] if i == levels - 1 else 2 * widths[i]
            self.up.append(nn.Sequential(
                nn.ConvTranspose2d(in_channels, widths[i - 1], 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(widths[i - 1]), nn.ReLU(inplace=True)))
        self.out = nn.ConvTranspose2d(2 * widths[0], out_channels, 4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        step = 2 ** self.levels
        pad_h, pad_w = -height % step, -width % step
        x = self.input_norm(x)
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            x = torch.cat([block(x), skips.pop()], dim=1)
        return self.out(x)[..., :height, :width]


class VisualProjection(nn.Module):
    """A visual feature map B×C×T×h×w → B×K×h×w: max over time, then a 1×1 conv to the
    synthesiser's K channels (Sound of Pixels: conv to K, spatial max pool, sigmoid; the
    pooling and the sigmoid happen where the region is known), or, with ``hidden`` > 0,
    two 1×1 convs with a ReLU between them (an MLP per cell)."""

    def __init__(self, in_channels: int, out_channels: int = 32, hidden: int = 0) -> None:
        super().__init__()
        if hidden > 0:
            self.proj: nn.Module = nn.Sequential(nn.Conv2d(in_channels, hidden, 1), nn.ReLU(inplace=True),
                                                 nn.Conv2d(hidden, out_channels, 1))
        else:
            self.proj = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.proj(feature_map.amax(dim=2))


class LinearSynthesizer(nn.Module):
    """Mask logits m(f, t) = Σ_k α_k · v_k · s_k(f, t) + b for audio features s (B×K×F×T)
    and visual vectors v (B×S×K, one per source, already in [0, 1]) → B×S×F×T."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, audio_features: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bkft,bsk->bsft", audio_features, visual * self.scale) + self.bias


__all__ = ["LinearSynthesizer", "UNet", "VisualProjection"]
