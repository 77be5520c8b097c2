"""Augmentations and input normalisation (torchvision v2 and torchaudio), on for training
and off for evaluation. Video clips are uint8 T×H×W×3 in, float C×T×H×W out; the same
crop, flip and colour jitter apply to every frame of a clip.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio
from torchvision.transforms import v2

from avssl.data.views import MelSettings

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


class VideoTransform:
    """uint8 T×H×W×3 → normalised float C×T×H×W of ``size``×``size``."""

    def __init__(self, size: int, train: bool, settings: AugmentSettings = AugmentSettings()) -> None:
        steps: list[v2.Transform] = []
        if train:
            steps.append(v2.RandomResizedCrop(size, scale=settings.crop_scale, antialias=True))
            if settings.flip:
                steps.append(v2.RandomHorizontalFlip())
            if settings.color_jitter > 0 or settings.hue_jitter > 0:
                s = settings.color_jitter
                steps.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s, hue=settings.hue_jitter))
        else:
            steps += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(VIDEO_MEAN, VIDEO_STD)]
        self.transform = v2.Compose(steps)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        from torchvision import tv_tensors

        video = tv_tensors.Video(frames.permute(0, 3, 1, 2))  # T×C×H×W: one transform for all frames
        return self.transform(video).permute(1, 0, 2, 3).contiguous()


class AudioTransform:
    """Mono waveform (N,) → log-mel 1×F×Ta, or the waveform 1×N; gain and masks in training."""

    def __init__(
        self, mel: MelSettings, train: bool, settings: AugmentSettings = AugmentSettings(), representation: str = "logmel"
    ) -> None:
        self.train = train
        self.settings = settings
        self.representation = representation
        self.mel_settings = mel
        self.melspec = torchaudio.transforms.MelSpectrogram(
            sample_rate=mel.sample_rate,
            n_fft=mel.n_fft,
            win_length=int(round(mel.window_seconds * mel.sample_rate)),
            hop_length=int(round(mel.hop_seconds * mel.sample_rate)),
            n_mels=mel.n_mels,
        )
        masks: list[torch.nn.Module] = []
        if train:
            masks += [torchaudio.transforms.TimeMasking(settings.time_mask_frames)] * settings.time_masks
            masks += [torchaudio.transforms.FrequencyMasking(settings.freq_mask_bins)] * settings.freq_masks
        self.masks = torch.nn.Sequential(*masks)

    def __call__(self, waveform: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.train and self.settings.audio_gain_db > 0:
            u = torch.rand((), generator=generator) * 2 - 1
            waveform = waveform * 10 ** (u * self.settings.audio_gain_db / 20)
        if self.representation == "waveform":
            return waveform.unsqueeze(0)
        logmel = torch.log(self.melspec(waveform) + self.mel_settings.log_offset).unsqueeze(0)
        return self.masks(logmel) if self.train else logmel
