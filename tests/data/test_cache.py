"""`data.cache: memory`: a split decoded once gives the batches streaming gives."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from avssl.data.cache import DecodeCacheFull, DecodedSplit, decode_media, release_decoded
from avssl.data.datamodule import AVDataModule, DataConfig, ShardList, ShardStream, make_loader
from avssl.data.decode import MediaReader
from avssl.data.sampling import ViewSampler
from avssl.data.views import AudioView, VideoView, ViewSpec
from tests.conftest import flash_click_clip, make_synth_shards, write_test_shards

# Two frames at 10 fps from 25-fps video, the aligned audio and AVTS's shifted window.
SPEC = ViewSpec(video=VideoView(num_frames=2, fps=10.0, size=32),
                audio={"audio": AudioView(seconds=0.5),
                       "audio_hard": AudioView(seconds=0.5, offset="shifted", min_shift_seconds=0.5)})


@pytest.fixture(scope="module")
def synth_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synth_shards(tmp_path_factory.mktemp("cache"), num_videos=16, split=(0.5, 0.25, 0.25))


def _batches(loader, epochs=(0,)) -> list[dict[str, torch.Tensor]]:
    out = []
    for epoch in epochs:
        loader.sampler.set_epoch(epoch)
        out.extend(loader)
    return out


def _assert_same(streamed: list[dict], cached: list[dict]) -> None:
    assert len(streamed) == len(cached) > 0
    for a, b in zip(streamed, cached):
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, equal_nan=True, msg=key)  # boxes hold NaN


@pytest.mark.parametrize("workers", [0, 2])
def test_training_batches_from_memory_equal_the_streamed_ones(synth_shards: Path, workers: int) -> None:
    shards = ShardList.from_manifest(synth_shards, "train")
    cache = DecodedSplit(shards.files)
    assert cache.num_samples == shards.num_samples == 8 and cache.nbytes > 0

    def stream(cached: bool) -> ShardStream:
        return ShardStream(shards, ViewSampler(SPEC, train=True), batch_size=3, num_workers=workers,
                           shuffle_buffer=4, cache=cache if cached else None)

    streamed = _batches(make_loader(stream(False), workers), epochs=(0, 1))
    _assert_same(streamed, _batches(make_loader(stream(True), workers), epochs=(0, 1)))
    # the draws are random (windows, shifts), not the same every epoch
    assert not torch.equal(streamed[0]["t_video"], streamed[len(streamed) // 2]["t_video"])


def test_evaluation_clips_and_targets_from_memory_equal_the_streamed_ones(synth_shards: Path) -> None:
    """Several clips per video and ground-truth targets read from the sidecars kept beside
    the decoded media, through the data module's ``data.cache`` setting."""
    views = ViewSpec(video=VideoView(num_frames=1, fps=25.0, size=32), audio={"audio": AudioView(seconds=0.5)},
                     clips_per_video=3, targets=("boxes",))
    batches = {}
    for cache in ("none", "memory"):
        config = DataConfig(shards=str(synth_shards), video=views.video, audio=views.audio["audio"],
                            batch_size=4, num_workers=0, cache=cache)
        module = AVDataModule(config, views)
        batches[cache] = list(module.loader(module.stream("val", train=False)))
        if cache == "memory":  # kept for the process's later runs, until released
            kept = module.decoded("val", keep_entries=True)
            assert module.decoded("val", keep_entries=True) is kept
            release_decoded()
            assert module.decoded("val", keep_entries=True) is not kept
    assert "boxes" in batches["none"][0]
    _assert_same(batches["none"], batches["memory"])


def test_frames_and_audio_from_memory_equal_the_file_readers(flash_clip: bytes) -> None:
    """Every window: before the first frame, between frames, past the end; other frame
    rates; the audio stream (AAC here) decoded once against the reader's seek-and-decode."""
    with MediaReader(flash_clip, container_format="mp4") as opened:
        media = decode_media(opened)
    assert media.frames.shape == (100, 48, 64, 3) and media.info.fps == 25.0
    rng = np.random.default_rng(0)
    starts = [-0.1, 0.0, 0.013, 1.98, 3.9, 3.99, 4.5, *rng.uniform(0, 4, 30)]
    with MediaReader(flash_clip, container_format="mp4") as reader:
        for start in starts:
            for num_frames, fps in ((1, 25.0), (4, 10.0), (3, 30.0)):
                if start > reader.info.video_end - 0.5 / 25:
                    with pytest.raises(Exception, match="no video frame"):
                        media.read_frames(start, num_frames, fps)
                    continue
                frames, t_first = reader.read_frames(start, num_frames, fps)
                cached, cached_t = media.read_frames(start, num_frames, fps)
                assert cached_t == t_first and np.array_equal(cached, frames), (start, fps)
        for start in rng.uniform(0.0, 3.5, 10):
            np.testing.assert_array_equal(media.read_audio(start, 0.5, 16000), reader.read_audio(start, 0.5, 16000))


def test_a_corrupt_sample_is_skipped_and_counted_as_when_streaming(tmp_path: Path) -> None:
    good = flash_click_clip(seconds=1.2, size=(32, 40))
    path = write_test_shards(tmp_path, [good] * 6 + [b"garbage"] + [good] * 5, per_shard=5)
    shards = ShardList.from_manifest(path, "train")
    spec = ViewSpec(video=VideoView(num_frames=2, fps=25.0, size=32), audio={"audio": AudioView(seconds=0.5)})
    cache = DecodedSplit(shards.files)
    assert "1 could not be decoded" in cache.summary()
    runs = [list(make_loader(ShardStream(shards, ViewSampler(spec, train=True), batch_size=4, max_skip_fraction=0.5,
                                         cache=c), 0)) for c in (None, cache)]
    _assert_same(*runs)
    assert sum(int(b["skipped"].sum()) for b in runs[1]) == 1


def test_a_split_too_large_for_memory_stops_with_the_fix(synth_shards: Path) -> None:
    with pytest.raises(DecodeCacheFull, match="data.cache=none"):
        DecodedSplit(ShardList.from_manifest(synth_shards, "train").files, memory_limit=10_000)
    with pytest.raises(ValueError, match="data.cache must be 'none' or 'memory'"):
        DataConfig(cache="disk")
    other = ShardList.from_manifest(synth_shards, "val")
    with pytest.raises(ValueError, match="other shards"):
        ShardStream(other, ViewSampler(SPEC, train=True), batch_size=2,
                    cache=DecodedSplit(ShardList.from_manifest(synth_shards, "test").files))
