"""Decoding windows: alignment, odd real-world inputs, errors."""
from __future__ import annotations

import gc
import multiprocessing
import os
from fractions import Fraction

import av
import numpy as np
import pytest

from avssl.data.decode import DecodeError, MediaReader, MonoResampler, PcmAudio
from tests.conftest import FLASH_VALUE, flash_click_clip

FPS = 25.0
SR = 16000
FLASHES = (13, 37, 61, 88)


def _flash_frames(frames: np.ndarray) -> list[int]:
    return [i for i in range(len(frames)) if frames[i].mean() > (FLASH_VALUE + 30) / 2]


def _click_times(audio: np.ndarray, sample_rate: int) -> list[float]:
    above = np.flatnonzero(np.abs(audio) > 0.3)
    if above.size == 0:
        return []
    starts = above[np.concatenate([[True], np.diff(above) > sample_rate // 100])]
    return [s / sample_rate for s in starts]


@pytest.mark.parametrize("start", [0.0, 0.43, 1.03, 1.9, 2.21])
def test_audio_is_cut_at_first_returned_frame(flash_clip: bytes, start: float) -> None:
    with MediaReader(flash_clip) as reader:
        frames, t_first = reader.read_frames(start, 16, FPS)
        audio = reader.read_audio(t_first, 16 / FPS, SR)
    assert frames.shape == (16, 48, 64, 3)
    # The first frame returned is the first at or after the requested time.
    assert start <= t_first < start + 1 / FPS + 1e-6
    flash_positions = _flash_frames(frames)
    assert flash_positions, "each window of 16 frames in this clip holds a flash"
    clicks = _click_times(audio, SR)
    assert len(clicks) == len(flash_positions)
    for frame_index, click in zip(flash_positions, clicks):
        assert abs(click - frame_index / FPS) <= 1 / FPS, "audio and video must agree within one frame"


def test_frames_are_the_ones_on_screen(flash_clip: bytes) -> None:
    with MediaReader(flash_clip) as reader:
        frames, t_first = reader.read_frames(FLASHES[1] / FPS - 0.2, 10, FPS)
    expected = round(FLASHES[1] - t_first * FPS)
    assert _flash_frames(frames) == [expected]


@pytest.mark.parametrize("fps", [FPS, FPS / 2, 10.0])
def test_constant_rate_early_stop_returns_the_same_frames(flash_clip: bytes, fps: float) -> None:
    """Stopping at the window's last frame (constant-rate shards) changes nothing returned."""
    for start in (0.0, 0.37, 1.0, 1.52, 2.3):
        with MediaReader(flash_clip) as reader:
            expected, t_expected = reader.read_frames(start, 12, fps)
        with MediaReader(flash_clip, constant_frame_rate=True) as reader:
            frames, t_first = reader.read_frames(start, 12, fps)
        assert t_first == t_expected
        np.testing.assert_array_equal(frames, expected)


def test_frame_rate_conversion_keeps_time(flash_clip: bytes) -> None:
    """Read at 12.5 fps from a 25 fps clip: frame k is the one on screen at t0 + k/12.5."""
    with MediaReader(flash_clip) as reader:
        frames, t_first = reader.read_frames(FLASHES[0] / FPS, 8, 12.5)
    assert t_first == pytest.approx(FLASHES[0] / FPS, abs=1e-6)
    assert _flash_frames(frames) == [0]


def test_window_past_the_end_repeats_last_frame_and_pads_audio_with_zeros() -> None:
    clip = flash_click_clip(seconds=1.0, flashes=(20,))
    with MediaReader(clip) as reader:
        frames, t_first = reader.read_frames(0.6, 16, FPS)
        audio = reader.read_audio(t_first, 1.0, SR)
    assert frames.shape[0] == 16
    np.testing.assert_array_equal(frames[-1], frames[-2])
    assert np.all(audio[int(0.45 * SR):] == 0)


@pytest.mark.parametrize(
    "channels, sample_rate", [(1, 8000), (2, 44100), (6, 48000), (1, 22050), (2, 32000)]
)
def test_channel_layouts_and_rates_come_out_mono_at_target_rate(channels: int, sample_rate: int) -> None:
    seconds = 2.0
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    audio = np.stack([tone] * channels)
    frames = np.zeros((int(seconds * FPS), 32, 32, 3), np.uint8)
    from avssl.data.encode import write_media

    clip = write_media(None, frames, FPS, audio, sample_rate)
    with MediaReader(clip) as reader:
        assert reader.info.sample_rate == sample_rate
        out = reader.read_audio(0.5, 1.0, SR)
    assert out.shape == (SR,)
    spectrum = np.abs(np.fft.rfft(out))
    assert np.argmax(spectrum) == pytest.approx(440, abs=2)  # 1 Hz bins
    assert 0.05 < np.abs(out).max() < 1.5


@pytest.mark.parametrize("codec, container", [("libx264", "mp4"), ("mpeg4", "mp4"), ("libvpx-vp9", "webm")])
def test_video_codecs(codec: str, container: str) -> None:
    audio_codec = "libopus" if container == "webm" else "aac"
    sample_rate = 48000 if audio_codec == "libopus" else SR
    clip = flash_click_clip(seconds=3.0, sample_rate=sample_rate, video_codec=codec, audio_codec=audio_codec,
                            container_format=container)
    with MediaReader(clip) as reader:
        frames, t_first = reader.read_frames(1.2, 8, FPS)
        audio = reader.read_audio(t_first, 8 / FPS, SR)
    assert frames.shape == (8, 48, 64, 3)
    assert _flash_frames(frames) == [round(37 - t_first * FPS)]
    clicks = _click_times(audio, SR)
    assert len(clicks) == 1 and abs(clicks[0] - (37 / FPS - t_first)) <= 1 / FPS


def test_variable_frame_rate_selects_by_timestamp() -> None:
    from avssl.data.encode import write_media

    rng = np.random.default_rng(0)
    times = np.cumsum(rng.uniform(0.02, 0.06, size=120))
    times -= times[0]
    frames = np.zeros((len(times), 32, 32, 3), np.uint8)
    frames[:, :, :, 0] = (np.arange(len(times)) % 256)[:, None, None]  # frame id in red
    clip = write_media(None, frames, FPS, None, None, frame_times=times, crf=0)
    with MediaReader(clip) as reader:
        out, t_first = reader.read_frames(1.0, 10, 10.0)
    for k in range(10):
        on_screen = np.searchsorted(times, t_first + k / 10.0 + 1e-6, side="right") - 1
        assert abs(int(out[k, 16, 16, 0]) - on_screen % 256) <= 2


def test_bad_bytes_raise_decode_error() -> None:
    with pytest.raises(DecodeError):
        MediaReader(b"this is not a video")


def test_missing_audio_stream_is_a_decode_error() -> None:
    from avssl.data.encode import write_media

    clip = write_media(None, np.zeros((25, 32, 32, 3), np.uint8), FPS)
    with MediaReader(clip) as reader:
        assert not reader.info.has_audio
        with pytest.raises(DecodeError, match="no audio stream"):
            reader.read_audio(0.0, 0.5, SR)


@pytest.fixture(scope="module")
def packed_flash_clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The flash/click clip through `avssl shards`, once per audio format: {format: sample}."""
    import json
    import tarfile

    from avssl.data.shards import ShardSettings, write_shards

    root = tmp_path_factory.mktemp("packed")
    (root / "videos").mkdir()
    (root / "videos" / "clip.mp4").write_bytes(flash_click_clip())
    samples = {}
    for audio_format in ("pcm", "aac"):
        out = root / audio_format
        write_shards(root / "videos", out, settings=ShardSettings(short_side=48, audio_format=audio_format))
        with tarfile.open(out / "train-000000.tar") as tar:
            entries = {m.name.split(".", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers()}
        entries["json"] = json.loads(entries["json"])
        samples[audio_format] = entries
    return samples


@pytest.mark.parametrize("start", [0.0, 0.43, 1.03, 2.21])
def test_pcm_entry_is_cut_at_first_returned_frame_like_the_audio_stream(packed_flash_clip: dict, start: float) -> None:
    pcm_sample, aac_sample = packed_flash_clip["pcm"], packed_flash_clip["aac"]
    meta = pcm_sample["json"]
    pcm = PcmAudio(pcm_sample["pcm"], meta["sample_rate"], meta["audio_start"])
    with MediaReader(pcm_sample["mp4"], container_format="mp4", pcm=pcm) as reader:
        assert reader.info.has_audio and reader.info.audio_end == pytest.approx(4.0)
        frames, t_first = reader.read_frames(start, 16, FPS)
        audio = reader.read_audio(t_first, 16 / FPS, SR)
    with MediaReader(aac_sample["mp4"]) as reader:
        _, t_first_aac = reader.read_frames(start, 16, FPS)
        audio_aac = reader.read_audio(t_first_aac, 16 / FPS, SR)
    assert t_first == t_first_aac
    flash_times = [k / FPS for k in _flash_frames(frames)]
    assert flash_times, "window chosen to contain a flash"
    assert np.allclose(_click_times(audio, SR), flash_times, atol=1 / FPS)
    assert np.allclose(_click_times(audio, SR), _click_times(audio_aac, SR), atol=0.002)


def test_pcm_reads_pad_outside_and_resample_to_other_rates() -> None:
    samples = (np.sin(2 * np.pi * 440 * np.arange(16000) / 16000) * 16000).astype("<i2")
    pcm = PcmAudio(samples.tobytes(), 16000, start=0.5)  # plays from 0.5 s to 1.5 s
    out = pcm.read(0.25, 0.5, 16000)
    assert np.all(out[:4000] == 0) and np.allclose(out[4000:], samples[:4000] / 32768)
    slow = pcm.read(0.5, 1.0, 8000)
    assert slow.shape == (8000,) and np.argmax(np.abs(np.fft.rfft(slow))) == 440
    with pytest.raises(DecodeError, match="odd number of bytes"):
        PcmAudio(b"\x00\x01\x02", 16000)


def _resample_some_audio(stereo: bool) -> None:
    """Decodes a little audio (the downmix path when ``stereo``) and leaves the resampler in a
    reference cycle, as PyAV's own objects may be: freed only by the garbage collector."""
    resampler = MonoResampler(SR)
    samples = np.zeros((2 if stereo else 1, 4096), np.float32)
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="stereo" if stereo else "mono")
    frame.sample_rate, frame.pts, frame.time_base = 44100, 0, Fraction(1, 44100)
    resampler(frame)
    cycle: list = [resampler]
    cycle.append(cycle)


def _native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_resampling_starts_no_ffmpeg_threads() -> None:
    """PyAV 18.1.1 gives a resampler's filter graph one FFmpeg thread per core unless asked
    for none; avssl asks for none (the fork hang below)."""
    gc.collect()
    before = _native_threads()
    for stereo in (False, True, False):
        _resample_some_audio(stereo)
    assert _native_threads() == before


def _collect_and_exit() -> None:
    gc.collect()


def test_a_forked_worker_frees_the_parents_unreachable_resamplers() -> None:
    """A DataLoader forks its workers with the parent's uncollected garbage; a worker that
    frees a resampler whose graph had threads (which a fork does not copy) waited on them
    forever: a CI run hung in the first loader after a test that decoded in the main process."""
    gc.collect()
    gc.disable()  # keep the cycles for the child to collect
    try:
        for stereo in (False, True):
            _resample_some_audio(stereo)
        child = multiprocessing.get_context("fork").Process(target=_collect_and_exit)
        child.start()
    finally:
        gc.enable()
    child.join(timeout=60)
    hung = child.is_alive()
    if hung:
        child.kill()
        child.join()
    assert not hung and child.exitcode == 0
