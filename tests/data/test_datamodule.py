"""Streaming shards: split over ranks and workers, padding, determinism, skips."""
from __future__ import annotations

import gc
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from avssl.data.datamodule import ShardList, ShardStream, make_loader, slice_bounds
from avssl.data.errors import DataError
from avssl.data.sampling import ViewSampler, shifted_window_start
from avssl.data.transforms import BatchTransform
from avssl.data.views import AudioView, VideoView, ViewSpec
from tests.conftest import flash_click_clip, write_test_shards

SPEC = ViewSpec(video=VideoView(num_frames=2, fps=25.0, size=32), audio={"audio": AudioView(seconds=0.5)})


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    clip = flash_click_clip(seconds=1.2, size=(32, 40))
    # 22 samples in shards of 5: uneven shards, and 22 does not divide by 4 slices.
    return write_test_shards(tmp_path_factory.mktemp("shards"), [clip] * 22, per_shard=5,
                             labels=[i % 3 for i in range(22)])


def _stream(shards: Path, rank: int, world: int, workers: int, **kw) -> ShardStream:
    return ShardStream(ShardList.from_manifest(shards, "train"), ViewSampler(SPEC, train=kw.pop("train", False)),
                       batch_size=kw.pop("batch_size", 3), num_workers=workers, rank=rank, world_size=world, **kw)


def _epoch_indices(stream: ShardStream, workers: int, epoch: int = 0) -> list[int]:
    loader = make_loader(stream, workers)
    loader.sampler.set_epoch(epoch)
    return [int(i) for batch in loader for i in batch["index"]]


def test_slices_cover_every_sample_once() -> None:
    for n, k in [(22, 4), (7, 7), (100, 3)]:
        covered = [i for s in range(k) for i in range(*slice_bounds(n, k, s))]
        assert covered == list(range(n))


def test_two_ranks_two_workers_see_every_sample_exactly_once(shards: Path) -> None:
    seen = []
    for rank in range(2):
        seen += _epoch_indices(_stream(shards, rank, 2, 2, pad=False, shuffle=True), workers=2)
    assert sorted(seen) == list(range(22))


def test_padding_gives_every_rank_the_same_number_of_full_batches(shards: Path) -> None:
    per_rank = []
    all_indices: Counter[int] = Counter()
    for rank in range(2):
        stream = _stream(shards, rank, 2, 2, pad=True, shuffle=True)
        loader = make_loader(stream, 2)
        batches = list(loader)
        assert len(batches) == len(stream) == len(loader)
        assert all(b["index"].numel() == 3 for b in batches)
        per_rank.append(len(batches))
        all_indices.update(int(i) for b in batches for i in b["index"])
    assert per_rank[0] == per_rank[1]
    assert set(all_indices) == set(range(22)), "padding repeats samples, it never drops any"
    # 22 samples over 4 slices → 6 per slice → 2 batches of 3 each: 24 yielded, 2 repeats.
    assert sum(all_indices.values()) == 24


def test_shard_order_changes_with_epoch_and_is_shared_by_ranks(shards: Path) -> None:
    a, b = _stream(shards, 0, 2, 1), _stream(shards, 1, 2, 1)
    assert a.shard_order(0) == b.shard_order(0)
    assert a.shard_order(0) != a.shard_order(1)
    first = _epoch_indices(_stream(shards, 0, 1, 1, pad=False), 0, epoch=0)
    again = _epoch_indices(_stream(shards, 0, 1, 1, pad=False), 0, epoch=0)
    other = _epoch_indices(_stream(shards, 0, 1, 1, pad=False), 0, epoch=1)
    assert first == again, "an epoch is reproducible from the seed"
    assert first != other and sorted(first) == sorted(other) == list(range(22))


def test_batch_contract(shards: Path) -> None:
    batch = next(iter(make_loader(_stream(shards, 0, 1, 0, train=True), 0)))
    assert batch["video"].shape == (3, 3, 2, 32, 32) and batch["video"].dtype == torch.uint8
    assert batch["audio"].shape == (3, 1, 8000) and batch["audio"].dtype == torch.float32  # waveform
    finished = BatchTransform(SPEC)(batch, train=True)
    assert finished["video"].shape == (3, 3, 2, 32, 32) and finished["video"].dtype == torch.float32
    assert finished["audio"].shape == (3, 1, 64, 51)
    assert batch["index"].dtype == torch.int64 and batch["label"].dtype == torch.int64
    assert set(batch) >= {"t_video", "t_audio", "clip", "skipped"}
    # the aligned audio window is centred on the video window
    np.testing.assert_allclose(batch["t_audio"], batch["t_video"] + (2 / 25 - 0.5) / 2, atol=1e-5)


def test_audio_features_in_the_loader_equal_those_on_the_device(shards: Path) -> None:
    """`data.audio_features: loader` moves gain/log-mel/masks into the workers; the batch
    that reaches the task is the same (evaluation: no randomness) and the device
    transform then leaves the audio alone."""
    from avssl.data.datamodule import AVDataModule, DataConfig

    batches = {}
    for where in ("device", "loader"):
        config = DataConfig(shards=str(shards), video=SPEC.video, audio=SPEC.audio["audio"], batch_size=4,
                            num_workers=1, audio_features=where)
        module = AVDataModule(config, SPEC)
        batch = next(iter(module.loader(module.stream("train", train=False))))
        batches[where] = module.eval_transform(batch, train=False)
    assert batches["loader"]["audio"].shape == (4, 1, 64, 51)
    torch.testing.assert_close(batches["loader"]["audio"], batches["device"]["audio"])
    torch.testing.assert_close(batches["loader"]["video"], batches["device"]["video"])
    with pytest.raises(ValueError, match="audio_features must be 'device' or 'loader'"):
        DataConfig(audio_features="gpu")


def test_corrupt_samples_are_skipped_and_counted(tmp_path: Path) -> None:
    good = flash_click_clip(seconds=1.2, size=(32, 40))
    clips = [good] * 10 + [b"garbage"] + [good] * 9
    path = write_test_shards(tmp_path, clips, per_shard=20)
    stream = ShardStream(ShardList.from_manifest(path, "train"), ViewSampler(SPEC, train=False), batch_size=4,
                         shuffle=False, pad=True, max_skip_fraction=0.5)
    batches = list(make_loader(stream, 0))
    assert sum(int(b["skipped"].sum()) for b in batches) == 1
    assert sum(b["index"].numel() for b in batches) == 20, "the skipped sample is replaced by padding"
    assert 10 not in {int(i) for b in batches for i in b["index"]}


def test_a_worker_with_nothing_decodable_stops_with_a_clear_error(tmp_path: Path) -> None:
    path = write_test_shards(tmp_path, [b"garbage"] * 25, per_shard=25)
    stream = ShardStream(ShardList.from_manifest(path, "train"), ViewSampler(SPEC, train=False), batch_size=4,
                         shuffle=False, max_skip_fraction=0.1)
    with pytest.raises(DataError, match="^no sample of rank 0's worker 0 could be read or decoded in epoch 0: "
                                        "the shards are missing or damaged$"):
        list(make_loader(stream, 0))


def test_missing_manifest_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="avssl shards"):
        ShardList.from_manifest(tmp_path, "train")


@pytest.mark.parametrize("offset", ["shifted", "overlapping"])
def test_shifted_windows_stay_inside_the_clip(offset: str) -> None:
    rng = np.random.default_rng(0)
    view = AudioView(seconds=1.0, offset=offset, min_shift_seconds=0.5)
    for _ in range(200):
        aligned = rng.uniform(0, 9)
        start = shifted_window_start(rng, view, aligned, 0.0, 10.0)
        assert start is not None and 0.0 <= start <= 9.0
        shift = abs(start - aligned)
        if offset == "shifted":
            assert shift >= 1.0
        else:
            assert 0.5 <= shift < 1.0
    assert shifted_window_start(rng, AudioView(seconds=1.0, offset="shifted"), 0.2, 0.0, 1.5) is None


def test_training_windows_are_drawn_where_the_hard_negative_fits() -> None:
    """A 2.6-s clip leaves room for a non-overlapping 1-s negative beside the aligned
    second for only part of the anchor range: the sampler draws inside that part."""
    clip = flash_click_clip(seconds=2.6)
    spec = ViewSpec(video=VideoView(num_frames=1, size=32),
                    audio={"audio": AudioView(seconds=1.0), "audio_hard": AudioView(seconds=1.0, offset="shifted")})
    sampler = ViewSampler(spec, train=True)
    for seed in range(30):
        (sample,) = sampler(clip, {"index": 0, "duration": 2.6}, np.random.default_rng(seed))
        assert abs(float(sample["t_audio_hard"] - sample["t_audio"])) >= 1.0 - 1e-6


def test_eval_views_are_evenly_spread_and_deterministic(shards: Path) -> None:
    spec = ViewSpec(video=VideoView(num_frames=2, size=32), audio={"audio": AudioView(seconds=0.5)}, clips_per_video=3)
    stream = ShardStream(ShardList.from_manifest(shards, "train"), ViewSampler(spec, train=False), batch_size=6,
                         shuffle=False, pad=False)
    batch = next(iter(make_loader(stream, 0)))
    assert batch["clip"].tolist() == [0, 1, 2, 0, 1, 2]
    t = batch["t_video"][:3]
    assert torch.all(t[1:] > t[:-1])
    again = next(iter(make_loader(stream, 0)))
    torch.testing.assert_close(batch["video"], again["video"])


def test_persistent_workers_follow_set_epoch(shards: Path) -> None:
    stream = _stream(shards, 0, 1, 2, pad=False, shuffle=True)
    loader = make_loader(stream, 2)
    assert loader.persistent_workers
    loader.sampler.set_epoch(0)
    epoch0 = [int(i) for b in loader for i in b["index"]]
    loader.sampler.set_epoch(1)
    epoch1 = [int(i) for b in loader for i in b["index"]]
    assert epoch1 == _epoch_indices(_stream(shards, 0, 1, 2, pad=False, shuffle=True), 2, epoch=1)
    assert epoch0 != epoch1


def test_workers_start_after_the_parent_frees_its_garbage(shards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resampler with FFmpeg threads (PyAV's default since 18.1.1), left in a reference
    cycle by the main process, is freed there before the workers fork: freed in a worker,
    which has none of its threads, it hung the worker (and CI) for good."""
    import av

    worker_iter = ShardStream.__iter__

    def collect_first(self: ShardStream):  # runs in the workers only
        gc.enable()
        gc.collect()
        yield from worker_iter(self)

    monkeypatch.setattr(ShardStream, "__iter__", collect_first)
    gc.disable()  # the cycle survives until the loader collects it
    try:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="flt", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 44100, 0, Fraction(1, 44100)
        resampler.resample(frame)
        cycle: list = [resampler]
        cycle.append(cycle)
        del resampler, cycle
        loader = make_loader(_stream(shards, 0, 1, 2, pad=False), 2, single_pass=True)
        assert sorted(int(i) for b in loader for i in b["index"]) == list(range(22))
    finally:
        gc.enable()


def test_single_pass_loader_stops_its_workers_at_the_end(shards: Path) -> None:
    """The evaluation verbs read a split once: its workers exit when the pass ends, so the
    next loader's forked workers do not inherit live ones (they would try to stop them)."""
    import multiprocessing

    before = set(multiprocessing.active_children())  # other tests' loaders may still be alive
    loader = make_loader(_stream(shards, 0, 1, 2, pad=False), 2, single_pass=True)
    assert not loader.persistent_workers
    assert sorted(int(i) for b in loader for i in b["index"]) == list(range(22))
    assert set(multiprocessing.active_children()) - before == set()
    training = make_loader(_stream(shards, 0, 1, 2, pad=False), 2)
    list(training)
    assert len(set(multiprocessing.active_children()) - before) == 2  # kept for the next epoch
    del training
    gc.collect()


@pytest.mark.parametrize("audio_format", ["pcm", "aac"])
def test_samples_written_by_avssl_shards_stream_with_clicks_on_flashes(tmp_path: Path, audio_format: str) -> None:
    """Through `avssl shards` (PCM member or AAC in the mp4) and ShardStream: in every clip
    the audio clicks on the frames that flash, within one frame (and is silent in a clip
    without a flash)."""
    from avssl.data.shards import ShardSettings, write_shards

    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "clip.mp4").write_bytes(flash_click_clip())
    write_shards(tmp_path / "videos", tmp_path / "shards",
                 settings=ShardSettings(short_side=48, audio_format=audio_format))
    fps, rate = 25.0, 16000
    spec = ViewSpec(video=VideoView(num_frames=25, fps=fps, size=48),
                    audio={"audio": AudioView(seconds=1.0, representation="waveform")}, clips_per_video=3)
    stream = ShardStream(ShardList.from_manifest(tmp_path / "shards", "train"), ViewSampler(spec, train=False),
                         batch_size=3, shuffle=False, pad=False)
    batch = next(iter(make_loader(stream, 0)))
    assert batch["audio"].shape == (3, 1, rate)
    flashes = 0
    for video, audio in zip(batch["video"], batch["audio"][:, 0]):
        frame_level = video.float().mean(dim=(0, 2, 3))  # T
        flash_frames = torch.nonzero(frame_level > frame_level.median() + 50).flatten().tolist()
        above = torch.nonzero(audio.abs() > 0.3).flatten().tolist()
        click_starts = [b for a, b in zip([-rate] + above, above) if b - a > rate // 100]
        assert len(click_starts) == len(flash_frames)
        for frame, click in zip(flash_frames, click_starts):
            assert abs(click / rate - frame / fps) <= 1 / fps
        flashes += len(flash_frames)
    assert flashes > 0


def test_a_recipe_naming_the_removed_data_eval_clips_per_video_gets_the_unknown_key_error() -> None:
    """The key was never read (the probe and finetune sections have their own): it is gone."""
    from avssl.config import load_recipe
    from avssl.errors import RecipeError

    recipe = str(Path(__file__).resolve().parents[2] / "recipes" / "synth" / "avc_small.yaml")
    with pytest.raises(RecipeError) as error:
        load_recipe(recipe, ["data.eval_clips_per_video=3"])
    assert str(error.value) == f"{recipe}: unknown key 'data.eval_clips_per_video'"


def _clip(i: int) -> dict[str, torch.Tensor]:
    return {"index": torch.tensor(i)}


def test_decode_clips_counts_what_it_cannot_decode_and_passes_trained_samples_undecoded() -> None:
    from avssl.data.skips import SkipCounts
    from avssl.data.stream import decode_clips

    decoded = []

    def decode(sample: dict) -> list[dict[str, torch.Tensor]]:
        decoded.append(sample["i"])
        if sample["i"] == 1:
            raise ValueError("corrupt")
        return [_clip(sample["i"])]

    lost = SkipCounts()
    clips = list(decode_clips(iter([{"i": i} for i in range(8)]), decode, lost, batch_size=2, trained_clips=4))
    # 0 and 2 fill the first (trained) batch, decoded for padding; 3 and 4 stand for the second, undecoded
    assert [None if c is None else int(c["index"]) for c in clips] == [0, 2, None, None, 5, 6, 7]
    assert decoded == [0, 1, 2, 5, 6, 7]
    assert (lost.skipped, lost.expected) == (1, 6)


def test_pad_to_stops_at_the_target_and_pads_with_the_worker_s_own_first_clips() -> None:
    from avssl.data.stream import pad_to

    def indices(clips):
        return [int(c["index"]) for c in clips]

    assert indices(pad_to(iter([_clip(i) for i in range(3)]), 7, 2, empty="")) == [0, 1, 2, 0, 1, 0, 1]
    assert indices(pad_to(iter([_clip(i) for i in range(5)]), 4, 2, empty="")) == [0, 1, 2, 3]
    assert indices(pad_to(iter([_clip(i) for i in range(3)]), None, 2, empty="")) == [0, 1, 2]
    with pytest.raises(DataError, match="^nothing read$"):
        list(pad_to(iter([]), 4, 2, empty="nothing read"))


def test_collate_batches_reports_losses_with_the_batch_they_happened_in() -> None:
    """Each batch is made as its last clip arrives (webdataset's `batched` waits for the next
    one: the next sample's losses would land in this batch)."""
    from avssl.data.skips import SkipCounts
    from avssl.data.stream import collate_batches, report_late

    lost = SkipCounts()

    def clips():
        for i in range(5):
            lost.add(int(i == 2), 1)  # the sample before clip 2 was lost
            yield _clip(i)
        lost.add(3, 3)  # the end of a shard cut short, found after the last clip

    batches = list(report_late(collate_batches(clips(), 2, lost, trained_batches=1,
                                               finish=lambda b, n: {**b, "number": torch.tensor([n])}), lost))
    assert [b["index"].tolist() for b in batches] == [[2, 3], [4]]  # the first batch was trained on before
    assert [int(b["number"]) for b in batches] == [2, 3]
    assert [(int(b["skipped"]), int(b["expected"])) for b in batches] == [(1, 2), (3, 4)]


def test_a_stuck_worker_stops_the_loader_with_one_clear_error(shards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that never sends its batch (here: asleep in the decoder) stops the loader after
    ``worker_timeout`` seconds with a DataError naming the setting, not a wait without end."""
    import time

    def asleep(self: ViewSampler, *args, **kwargs):
        time.sleep(60)

    monkeypatch.setattr(ViewSampler, "__call__", asleep)  # the forked workers inherit it
    loader = make_loader(_stream(shards, 0, 1, 2, pad=False, worker_timeout=2.0), 2, single_pass=True)
    started = time.monotonic()
    with pytest.raises(DataError, match=r"^no batch from the 2 loader workers in 2 s \(data.worker_timeout_s\): "
                                        r"a worker is stuck or far too slow"):
        next(iter(loader))
    assert time.monotonic() - started < 30


def test_worker_timeout_reaches_the_loader_and_zero_waits_forever(shards: Path) -> None:
    assert make_loader(_stream(shards, 0, 1, 2, worker_timeout=5.0), 2).timeout == 5.0
    assert make_loader(_stream(shards, 0, 1, 2, worker_timeout=0.0), 2).timeout == 0
    assert make_loader(_stream(shards, 0, 1, 0, worker_timeout=5.0), 0).timeout == 0  # no workers: nothing to wait on
