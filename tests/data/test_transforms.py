"""Augmentations: geometry in the worker on uint8, colour and normalisation on the batch."""
from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from avssl.data.transforms import (
    VIDEO_MEAN,
    VIDEO_STD,
    AudioBatchTransform,
    AugmentSettings,
    BatchTransform,
    VideoBatchTransform,
    VideoTransform,
)
from avssl.data.views import AudioView, MelSettings, VideoView, ViewSpec


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


@pytest.mark.parametrize("flip", [True, False])
def test_train_geometry_is_torchvisions_random_resized_crop_and_flip(flip: bool) -> None:
    settings = AugmentSettings(crop_scale=(0.3, 1.0), flip=flip)
    reference = v2.Compose([v2.RandomResizedCrop(32, scale=settings.crop_scale, antialias=True)]
                           + [v2.RandomHorizontalFlip()] * flip)
    clip = _clip()
    for seed in range(6):
        torch.manual_seed(seed)
        out = VideoTransform(32, train=True, settings=settings)(clip)
        torch.manual_seed(seed)
        expected = reference(tv_tensors.Video(clip.permute(0, 3, 1, 2))).permute(1, 0, 2, 3)
        torch.testing.assert_close(out, expected.as_subclass(torch.Tensor), atol=1, rtol=0)


def test_train_crop_scale_one_keeps_the_whole_frame_and_draws_only_the_flip() -> None:
    # 40×60 frames: torchvision's RandomResizedCrop at scale (1, 1) rejects its ratio draws
    # and falls back to (about) the whole frame; the transform takes the whole frame directly
    settings = AugmentSettings(crop_scale=(1.0, 1.0), flip=True)
    clip = _clip()
    expected = v2.Resize((32, 32), antialias=True)(tv_tensors.Video(clip.permute(0, 3, 1, 2))).permute(1, 0, 2, 3)
    flips = []
    for seed in range(6):
        torch.manual_seed(seed)
        out, box = VideoTransform(32, train=True, settings=settings).apply(clip)
        assert (box.top, box.left, box.height, box.width) == (0, 0, 40, 60)
        assert box.flipped == bool(torch.manual_seed(seed) and torch.rand(()) < 0.5), "the flip is the only draw"
        flips.append(box.flipped)
        torch.testing.assert_close(out, expected.flip(-1) if box.flipped else expected.as_subclass(torch.Tensor),
                                   atol=0, rtol=0)
    assert len(set(flips)) == 2


def test_eval_geometry_is_resize_then_centre_crop() -> None:
    # 40×60 frames: the centre 40×40, resized to 32. Smooth content: cropping before the
    # antialiased resize differs from cropping after it only by the filter's taps at the edges.
    y, x = torch.meshgrid(torch.arange(40), torch.arange(60), indexing="ij")
    clip = torch.stack([3 * y, 2 * x, x + y], dim=-1).to(torch.uint8).expand(4, 40, 60, 3)
    resize_and_crop = v2.Compose([v2.Resize(32, antialias=True), v2.CenterCrop(32)])
    expected = resize_and_crop(tv_tensors.Video(clip.permute(0, 3, 1, 2)))
    out = VideoTransform(32, train=False)(clip)
    torch.testing.assert_close(out, expected.permute(1, 0, 2, 3).as_subclass(torch.Tensor), atol=1, rtol=0)


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
    torch.manual_seed(0)
    wave = torch.randn(2, 1, 16000) * 0.1
    mel = MelSettings()
    plain = AudioBatchTransform(mel)(wave, train=False)
    assert plain.shape == (2, 1, 64, 101)
    louder = AudioBatchTransform(mel)(wave * 2, train=False)
    torch.testing.assert_close(louder - plain, torch.full_like(plain, 2 * torch.log(torch.tensor(2.0)).item()),
                               atol=1e-3, rtol=0)
    settings = AugmentSettings(audio_gain_db=0.0, time_masks=1, time_mask_frames=30, freq_masks=0)
    masked = AudioBatchTransform(mel, settings)(wave, train=True)
    level = plain.mean(dim=(-2, -1), keepdim=True)
    filled = torch.isclose(masked, level.expand_as(masked), atol=1e-5, rtol=0)
    assert filled.any(), "masked bins take the clip's mean level"
    torch.testing.assert_close(masked[~filled], plain[~filled])
    columns = [set(torch.nonzero(filled[b, 0].all(dim=0)).flatten().tolist()) for b in range(2)]
    assert columns[0] != columns[1], "each clip draws its own mask"
    whole_columns = [filled[b, 0].all(dim=0).sum() == filled[b, 0].any(dim=0).sum() for b in range(2)]
    assert all(whole_columns), "time masks span all bins"


def test_audio_gain_is_per_clip_and_off_at_eval() -> None:
    torch.manual_seed(0)
    wave = torch.ones(3, 1, 100)
    transform = AudioBatchTransform(MelSettings(), AugmentSettings(audio_gain_db=6.0), representation="waveform")
    gained = transform(wave, train=True)
    gains = gained[:, 0, 0]
    assert len(set(gains.tolist())) == 3 and bool(((gains >= 10 ** (-6 / 20)) & (gains <= 10 ** (6 / 20))).all())
    torch.testing.assert_close(gained, gains.view(3, 1, 1).expand(3, 1, 100))
    torch.testing.assert_close(transform(wave, train=False), wave)


def test_batch_transform_finishes_every_view_of_the_spec() -> None:
    spec = ViewSpec(video=VideoView(num_frames=2, size=8),
                    audio={"audio": AudioView(seconds=0.5), "audio_hard": AudioView(seconds=0.5, offset="shifted"),
                           "audio_wave": AudioView(seconds=0.5, representation="waveform")})
    batch = {"video": torch.zeros(4, 3, 2, 8, 8, dtype=torch.uint8), "index": torch.arange(4),
             **{name: torch.randn(4, 1, 8000) for name in spec.audio}}
    out = BatchTransform(spec)(batch, train=False)
    assert out["video"].dtype == torch.float32
    assert out["audio"].shape == out["audio_hard"].shape == (4, 1, 64, 51)
    torch.testing.assert_close(out["audio_wave"], batch["audio_wave"])
    assert out["index"] is batch["index"]
    with pytest.raises(ValueError, match="expected waveforms B×1×N"):
        BatchTransform(spec)({"audio": torch.zeros(4, 8000)}, train=False)
