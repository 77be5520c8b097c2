"""Augmentations and input normalisation (torchvision v2 and torchaudio), on for training
and off for evaluation. The same crop, flip and colour jitter apply to every frame of a
clip. Geometry runs in the loader workers on uint8; colour, normalisation, audio gain,
log-mel and masking run on the batch once it is on the device (:class:`BatchTransform`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchaudio
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from avssl.data.views import VIDEO, MelSettings, ViewSpec, sample_count

# Kinetics-400 statistics used by torchvision's video models.
VIDEO_MEAN = (0.43216, 0.394666, 0.37645)
VIDEO_STD = (0.22803, 0.22145, 0.216989)


@dataclass(frozen=True)
class AugmentSettings:
    """Training augmentations; evaluation uses resize + centre crop and nothing else."""

    crop_scale: tuple[float, float] = (0.4, 1.0)
    flip: bool = True
    color_jitter: float = 0.4  # brightness/contrast/saturation strength, 0 = off
    hue_jitter: float = 0.0
    audio_gain_db: float = 6.0  # uniform in ±this, applied to the waveform
    time_masks: int = 1
    time_mask_frames: int = 10
    freq_masks: int = 1
    freq_mask_bins: int = 8


@dataclass(frozen=True)
class CropBox:
    """Where the output frame came from: the region (top, left, height, width) of the
    decoded frame that was resized to ``size``×``size``, then mirrored if ``flipped``."""

    top: float
    left: float
    height: float
    width: float
    size: int
    flipped: bool = False

    def map_boxes(self, boxes: np.ndarray) -> np.ndarray:
        """K×4 boxes (x0, y0, x1, y1) in decoded-frame pixels → output-frame pixels, clipped;
        a box that falls outside the crop becomes NaN."""
        if boxes.size == 0:
            return boxes.reshape(0, 4).astype(np.float32)
        sx, sy = self.size / self.width, self.size / self.height
        x0 = (boxes[:, 0] - self.left) * sx
        x1 = (boxes[:, 2] - self.left) * sx
        y0 = (boxes[:, 1] - self.top) * sy
        y1 = (boxes[:, 3] - self.top) * sy
        if self.flipped:
            x0, x1 = self.size - x1, self.size - x0
        out = np.stack([x0, y0, x1, y1], axis=1).clip(0, self.size).astype(np.float32)
        empty = (out[:, 2] <= out[:, 0]) | (out[:, 3] <= out[:, 1])
        out[empty] = np.nan
        return out


class VideoTransform:
    """Worker side: uint8 T×H×W×3 → uint8 C×T×``size``×``size`` (crop, resize, flip).

    Training: torchvision's RandomResizedCrop parameters (the whole frame when
    ``crop_scale`` is (1, 1)), then one ``resized_crop`` of the channels-last frames and an
    optional flip, called directly rather than through a v2 ``Compose`` (the wrapping costs
    more per clip than the resize itself: docs/benchmarks.md).
    Evaluation: resize the short side to ``size`` and take the centre.

    Colour jitter, the float conversion and normalisation run on the batch after it
    reaches the device (:class:`VideoBatchTransform`): on a GPU they are free, and uint8
    clips cost a quarter of the inter-process traffic.
    """

    def __init__(self, size: int, train: bool, settings: AugmentSettings = AugmentSettings()) -> None:
        self.size = size
        self.train = train
        self.flip = train and settings.flip
        # crop_scale (1, 1) keeps the whole frame: RandomResizedCrop would draw ten aspect
        # ratios, reject them all and fall back to (about) the whole frame, time lost on every clip
        # (docs/benchmarks.md)
        whole_frame = tuple(settings.crop_scale) == (1.0, 1.0)
        self.crop = (v2.RandomResizedCrop(size, scale=settings.crop_scale, antialias=True)
                     if train and not whole_frame else None)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        return self.apply(frames)[0]

    def apply(self, frames: torch.Tensor) -> tuple[torch.Tensor, CropBox]:
        """The clip and the :class:`CropBox` it was cut with (to place boxes on it)."""
        video = frames.permute(0, 3, 1, 2)  # T×C×H×W, channels-last memory: torch's fast uint8 resize
        height, width = video.shape[-2:]
        if self.crop is not None:
            box = self.crop.make_params([video])
            top, left, box_height, box_width = box["top"], box["left"], box["height"], box["width"]
        elif self.train:
            top, left, box_height, box_width = 0, 0, height, width
        else:
            # the centre square of the short side: what Resize(size) + CenterCrop(size) keeps
            box_height = box_width = min(height, width)
            top, left = (height - box_height) // 2, (width - box_width) // 2
        video = F.resized_crop(video, top, left, box_height, box_width, [self.size, self.size], antialias=True)
        flipped = bool(self.flip and torch.rand(()) < 0.5)
        if flipped:
            video = video.flip(-1)
        # C×T×H×W as a view: the batch collation makes the one copy it needs anyway
        return video.permute(1, 0, 2, 3), CropBox(top, left, box_height, box_width, self.size, flipped)


class VideoBatchTransform(torch.nn.Module):
    """Device side: uint8 B×C×T×H×W → float, colour-jittered (training, per clip) and
    normalised: the ``video`` of the batch contract."""

    def __init__(self, settings: AugmentSettings = AugmentSettings()) -> None:
        super().__init__()
        s = settings.color_jitter
        self.jitter = (
            v2.ColorJitter(brightness=s, contrast=s, saturation=s, hue=settings.hue_jitter)
            if s > 0 or settings.hue_jitter > 0 else None
        )
        self.register_buffer("mean", torch.tensor(VIDEO_MEAN).view(1, 3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(VIDEO_STD).view(1, 3, 1, 1, 1), persistent=False)

    def forward(self, video: torch.Tensor, train: bool) -> torch.Tensor:
        if video.dtype != torch.uint8:
            return video  # already finished
        x = video.float().div_(255)
        if train and self.jitter is not None:
            # one draw per clip, shared by its frames (v2 treats T×C×H×W as a batch of images)
            x = torch.stack([self.jitter(clip.transpose(0, 1)).transpose(0, 1) for clip in x])
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return (x - mean) / std


class AudioBatchTransform(torch.nn.Module):
    """Device side: mono waveforms B×1×N float → random gain (training, per clip) → log-mel
    B×1×F×Ta with time and frequency masks (training, per clip), or the gained waveform
    B×1×N for ``representation="waveform"``.

    Batched on the device rather than per clip in the workers: one STFT for the batch,
    free on a GPU, and on the CPU it takes work off every clip in the workers
    (docs/benchmarks.md). Call it once per batch (the gain is random).
    """

    def __init__(
        self, mel: MelSettings, settings: AugmentSettings = AugmentSettings(), representation: str = "logmel"
    ) -> None:
        super().__init__()
        self.settings = settings
        self.representation = representation
        self.log_offset = mel.log_offset
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=mel.sample_rate,
            n_fft=mel.n_fft,
            win_length=sample_count(mel.window_seconds, mel.sample_rate),
            hop_length=sample_count(mel.hop_seconds, mel.sample_rate),
            n_mels=mel.n_mels,
        )

    def forward(self, waveform: torch.Tensor, train: bool) -> torch.Tensor:
        if waveform.dim() != 3:
            raise ValueError(f"expected waveforms B×1×N, got shape {tuple(waveform.shape)}")
        s = self.settings
        if train and s.audio_gain_db > 0:
            u = torch.rand(waveform.shape[0], 1, 1, device=waveform.device) * 2 - 1
            waveform = waveform * 10 ** (u * s.audio_gain_db / 20)
        if self.representation == "waveform":
            return waveform
        logmel = torch.log(self.melspec(waveform) + self.log_offset)  # B×1×F×Ta
        if not train:
            return logmel
        # Masked bins take each clip's mean level (not log-energy 0): mask the centred map.
        level = logmel.mean(dim=(-2, -1), keepdim=True)
        centred = logmel - level
        for axis, count, width in ((3, s.time_masks, s.time_mask_frames), (2, s.freq_masks, s.freq_mask_bins)):
            for _ in range(count if width > 0 else 0):
                centred = torchaudio.functional.mask_along_axis_iid(centred, width, 0.0, axis)
        return centred + level


class BatchTransform(torch.nn.Module):
    """Finishes a loader batch on the device, for every view of a :class:`ViewSpec`:
    ``video`` through :class:`VideoBatchTransform`, each audio view through
    :class:`AudioBatchTransform`. The one place a batch becomes the batch contract.

    ``video=False`` / ``audio=False`` leave that modality as it is: the data module splits
    the work this way when a recipe computes the log-mel in the loader workers
    (``data.audio_features: loader``) and the rest on the device.
    """

    def __init__(
        self, spec: ViewSpec, settings: AugmentSettings = AugmentSettings(), *, video: bool = True, audio: bool = True
    ) -> None:
        super().__init__()
        self.video = VideoBatchTransform(settings) if video else None
        self.audio = torch.nn.ModuleDict(
            {name: AudioBatchTransform(spec.mel, settings, view.representation) for name, view in spec.audio.items()}
            if audio else {}
        )

    def forward(self, batch: dict[str, torch.Tensor], train: bool) -> dict[str, torch.Tensor]:
        batch = dict(batch)
        if VIDEO in batch and self.video is not None:
            batch[VIDEO] = self.video(batch[VIDEO], train=train)
        for name, transform in self.audio.items():
            if name in batch:
                batch[name] = transform(batch[name], train=train)
        return batch
