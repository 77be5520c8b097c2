"""Augmentations: geometry in the worker on uint8, colour and normalisation on the batch."""
from __future__ import annotations

import torch

from avssl.data.transforms import VIDEO_MEAN, VIDEO_STD, AugmentSettings, AudioTransform, VideoBatchTransform, VideoTransform
from avssl.data.views import MelSettings


def _clip(t: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (t, 40, 60, 3), dtype=torch.uint8, generator=g)


def test_eval_geometry_is_deterministic_centre_crop() -> None:
    out = VideoTransform(32, train=False)(_clip())
    assert out.shape == (3, 4, 32, 32) and out.dtype == torch.uint8
    torch.testing.assert_close(out, VideoTransform(32, train=False)(_clip()))


def test_train_crop_is_shared_by_all_frames() -> None:
    clip = _clip(1).repeat(4, 1, 1, 1)  # four identical frames
    torch.manual_seed(3)
    out = VideoTransform(32, train=True)(clip)
    for t in range(1, 4):
        torch.testing.assert_close(out[:, t], out[:, 0])


def test_normalisation_by_hand() -> None:
    video = torch.full((2, 3, 1, 4, 4), 128, dtype=torch.uint8)
    out = VideoBatchTransform(AugmentSettings(color_jitter=0.0))(video, train=True)
    for c in range(3):
        expected = (128 / 255 - VIDEO_MEAN[c]) / VIDEO_STD[c]
        torch.testing.assert_close(out[:, c], torch.full_like(out[:, c], expected))


def test_colour_jitter_differs_between_clips_not_frames_and_is_off_at_eval() -> None:
    torch.manual_seed(0)
    clip = torch.randint(0, 256, (1, 3, 1, 8, 8), dtype=torch.uint8).repeat(4, 1, 3, 1, 1)
    transform = VideoBatchTransform(AugmentSettings(color_jitter=0.8))
    out = transform(clip, train=True)
    assert not torch.allclose(out[0], out[1]), "each clip draws its own jitter"
    torch.testing.assert_close(out[:, :, 1], out[:, :, 0])
    evaluated = transform(clip, train=False)
    torch.testing.assert_close(evaluated[0], evaluated[1])


def test_audio_gain_shifts_logmel_by_a_constant_and_masks_only_in_training() -> None:
    wave = torch.randn(16000) * 0.1
    mel = MelSettings()
    plain = AudioTransform(mel, train=False)(wave)
    assert plain.shape == (1, 64, 101)
    louder = AudioTransform(mel, train=False)(wave * 2)
    torch.testing.assert_close(louder - plain, torch.full_like(plain, 2 * torch.log(torch.tensor(2.0)).item()),
                               atol=1e-3, rtol=0)
    settings = AugmentSettings(audio_gain_db=0.0, time_masks=1, time_mask_frames=30, freq_masks=0)
    masked = AudioTransform(mel, train=True, settings=settings)(wave, torch.Generator().manual_seed(0))
    filled = masked == plain.mean()
    assert filled.any(), "masked bins take the clip's mean level"
    torch.testing.assert_close(masked[~filled], plain[~filled])
