"""Tests of the shard writer (avssl/data/shards.py) and of `avssl shards`.

Every input clip is made here with MediaWriter/write_media: tiny (64x48, 1-3 s), so the
whole file runs in seconds. VFR clips come from MediaWriter's frame times; clips whose
audio (or video) starts late are made by remuxing a MediaWriter file with shifted packets.
"""
from __future__ import annotations

import io
import json
import tarfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from avssl.cli import main
from avssl.data.encode import MediaWriter, write_media
from avssl.data.shards import (
    VIDEO_EXTENSIONS,
    ShardReport,
    ShardSettings,
    SkipVideo,
    find_videos,
    hash_split,
    plan_jobs,
    read_labels,
    reencode_video,
    sample_key,
    write_shards,
)

SMALL = dict(short_side=32, min_seconds=0.5, audio_format="aac")  # fast; the audio inside the mp4


# --------------------------------------------------------------------------- helpers


def frames_gradient(num_frames: int, width: int = 64, height: int = 48) -> np.ndarray:
    """Smooth frames (cheap to encode) with a square moving one pixel per frame."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 96)], axis=-1).astype(np.uint8)
    frames = np.repeat(base[None], num_frames, axis=0)
    for i in range(num_frames):
        frames[i, 10:20, (i % (width - 10)) : (i % (width - 10)) + 10] = 255
    return frames


def tone(seconds: float, sample_rate: int, channels: int = 1, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return np.repeat((0.3 * np.sin(2 * np.pi * hz * t))[None], channels, axis=0).astype(np.float32)


def make_clip(path: Path | None, seconds: float = 2.0, fps: float = 25, sample_rate: int = 16000,
              channels: int = 1, audio: bool = True, **options) -> bytes | None:
    frames = frames_gradient(round(seconds * fps))
    sound = tone(seconds, sample_rate, channels) if audio else None
    return write_media(path, frames, fps, sound, sample_rate if audio else None, **options)


def remux(data: bytes, path: Path, shift_seconds: dict[str, float]) -> None:
    """Copy the packets of ``data`` into ``path``, shifting each stream type's timestamps;
    AAC priming packets are dropped so the shifted stream really starts at the shift."""
    source = av.open(io.BytesIO(data))
    target = av.open(str(path), "w")
    streams = {s.index: target.add_stream_from_template(s) for s in source.streams}
    for packet in source.demux():
        if packet.dts is None or packet.is_discard:
            continue
        offset = round(Fraction(shift_seconds.get(packet.stream.type, 0.0)) / packet.time_base)
        packet.pts += offset
        packet.dts += offset
        packet.stream = streams[packet.stream.index]
        target.mux(packet)
    target.close()
    source.close()


def read_samples(tar_path: Path) -> dict[str, dict[str, bytes]]:
    """{key: {entry: bytes}} of one shard, keys in tar order."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            key, entry = member.name.split(".", 1)
            samples.setdefault(key, {})[entry] = tar.extractfile(member).read()
    return samples


def assert_same_shard(a: Path, b: Path) -> None:
    """Byte-identical shards; on a difference, say which member differs and how (json: both
    values; media: sizes and the first differing byte), so that a rare failure can be read."""
    if a.read_bytes() == b.read_bytes():
        return
    left, right = read_samples(a), read_samples(b)
    assert list(left) == list(right), f"{a.name}: keys {list(left)} against {list(right)}"
    for key in left:
        assert list(left[key]) == list(right[key]), \
            f"{a.name} {key}: entries {list(left[key])} against {list(right[key])}"
        for entry, data in left[key].items():
            other = right[key][entry]
            if data == other:
                continue
            if entry.endswith("json"):
                raise AssertionError(f"{a.name} {key}.{entry}: {data.decode()} against {other.decode()}")
            first = next((i for i, (x, y) in enumerate(zip(data, other)) if x != y), min(len(data), len(other)))
            raise AssertionError(f"{a.name} {key}.{entry}: {len(data)} against {len(other)} bytes, first difference "
                                 f"at byte {first}")
    raise AssertionError(f"{a.name}: same members, different tar headers")


def all_samples(out_dir: Path) -> dict[str, dict[str, bytes]]:
    manifest = json.loads((out_dir / "manifest.json").read_text())
    samples = {}
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            samples.update(read_samples(out_dir / shard["file"]))
    return samples


def decode_all(data: bytes) -> tuple[list[np.ndarray], np.ndarray]:
    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    with av.open(io.BytesIO(data)) as container:
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    return frames, audio


def video_packets(data: bytes) -> list[tuple[int, bool, Fraction]]:
    """(pts, is_keyframe, time_base) of the video packets in presentation order."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        packets = [(p.pts, p.is_keyframe, p.time_base) for p in container.demux(stream) if p.size]
    return sorted(packets)


# --------------------------------------------------------------------------- acceptance


def test_cli_packs_the_good_video_and_names_every_bad_one(tmp_path, capsys):
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    good = make_clip(None, seconds=2.0, sample_rate=44100, channels=2)
    (videos / "good.mp4").write_bytes(good)
    make_clip(videos / "silent.mp4", seconds=2.0, audio=False)
    make_clip(videos / "sub" / "silent2.mov", seconds=2.0, audio=False)
    (videos / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (videos / "notes.mp4").write_text("this is not a video\n")
    out = tmp_path / "shards"

    assert main(["shards", "--videos", str(videos), "--out", str(out)]) == 0

    stdout = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    skipped = json.loads((out / "skipped.json").read_text())
    assert manifest["num_samples"] == 1
    assert manifest["splits"]["train"]["shards"] == [{"file": "train-000000.tar", "num_samples": 1}]
    reasons = {entry["file"]: entry["reason"] for entry in skipped}
    assert set(reasons) == {"silent.mp4", "sub/silent2.mov", "truncated.mp4", "notes.mp4"}
    assert reasons["silent.mp4"] == "no audio stream"
    assert reasons["sub/silent2.mov"] == "no audio stream"
    assert reasons["truncated.mp4"].startswith("undecodable: ")
    assert reasons["notes.mp4"].startswith("undecodable: ")
    assert manifest["skipped"] == skipped
    assert "packed 1 videos" in stdout
    for file, reason in reasons.items():
        assert f"{file}: {reason}" in stdout

    samples = read_samples(out / "train-000000.tar")
    assert list(samples) == ["good"]
    meta = json.loads(samples["good"]["json"])
    assert meta["index"] == 0 and meta["id"] == "good" and meta["source"] == "good.mp4"
    assert (meta["width"], meta["height"]) == (170, 128)  # the default short side, 4:3 kept


def test_report_summary_is_what_the_cli_prints():
    skipped = [{"file": "a.mp4", "reason": "no audio stream"}, {"file": "sub/b.mov", "reason": "undecodable: x"}]
    report = ShardReport(num_packed=3, skipped=skipped, splits={"train": 2, "val": 1}, hours=0.0125,
                         shards={"train": ["o/train-000000.tar"], "val": ["o/val-000000.tar"]}, out_dir="o",
                         unused_label_ids=4)
    assert report.summary() == (
        "packed 3 videos (0.013 h) into o (train: 2 videos in 1 shards, val: 1 videos in 1 shards)\n"
        "labels: 4 ids of the csv match no video\n"
        "skipped 2 files (also in o/skipped.json):\n"
        "  a.mp4: no audio stream\n"
        "  sub/b.mov: undecodable: x")
    empty = ShardReport(num_packed=0, skipped=[], splits={}, hours=0.0, out_dir="o", searched="under v",
                        merged_parts=2)
    assert empty.summary() == (
        f"merged 2 parts\nno video found under v (extensions: {' '.join(VIDEO_EXTENSIONS)})\n"
        "packed 0 videos (0.000 h) into o\nskipped 0 files")


def test_cli_exits_1_when_nothing_is_packed(tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "notes.mp4").write_text("not a video")
    out = tmp_path / "shards"
    assert main(["shards", "--videos", str(videos), "--out", str(out)]) == 1
    assert "notes.mp4: undecodable" in capsys.readouterr().out
    assert json.loads((out / "skipped.json").read_text())[0]["file"] == "notes.mp4"


# --------------------------------------------------------------------------- the written sample


@pytest.mark.parametrize("audio_format", ["pcm", "aac"])
def test_written_sample_has_the_asked_format_and_a_consistent_json(tmp_path, audio_format):
    videos = tmp_path / "videos"
    videos.mkdir()
    # 25 fps, 44.1 kHz stereo, long GOP in; 20 fps, gop 0.5 s = 10 frames, 16 kHz mono out
    make_clip(videos / "clip.mp4", seconds=2.4, fps=25, sample_rate=44100, channels=2, gop_frames=250)
    settings = ShardSettings(short_side=32, fps=20, gop_seconds=0.5, sample_rate=16000, audio_format=audio_format)
    report = write_shards(videos, tmp_path / "out", settings=settings)
    assert report.num_packed == 1 and report.splits == {"train": 1}

    sample = all_samples(tmp_path / "out")["clip"]
    meta = json.loads(sample["json"])
    data = sample["mp4"]
    assert set(meta) == {
        "index", "id", "split", "source", "duration", "fps", "num_frames", "width", "height",
        "sample_rate", "audio_samples", "video_start", "audio_start", "audio_format", "has_audio", "label",
        "label_name", "extras",
    }
    assert meta["audio_format"] == audio_format
    assert (meta["width"], meta["height"]) == (42, 32)  # short side 32, 64x48 aspect, even
    assert meta["fps"] == 20 and meta["num_frames"] == 48 and meta["duration"] == pytest.approx(2.4)
    assert meta["sample_rate"] == 16000 and meta["audio_samples"] == 38400
    assert meta["video_start"] == 0 and meta["audio_start"] == 0
    assert meta["has_audio"] is True and meta["label"] == -1 and meta["label_name"] is None

    packets = video_packets(data)
    assert len(packets) == meta["num_frames"]
    steps = {(b[0] - a[0]) * a[2] for a, b in zip(packets, packets[1:])}
    assert steps == {Fraction(1, 20)}  # constant frame rate
    assert [i for i, (_, key, _) in enumerate(packets) if key] == [0, 10, 20, 30, 40]

    if audio_format == "pcm":  # int16 mono beside a video-only mp4, the tone intact
        assert "pcm" in sample and len(sample["pcm"]) == 2 * meta["audio_samples"]
        with av.open(io.BytesIO(data)) as container:
            assert not container.streams.audio
        waveform = np.frombuffer(sample["pcm"], "<i2") / 32768
        assert sine_residual(waveform[4000:20000], 16000) < 0.02
        assert np.sqrt(np.mean(waveform[4000:20000] ** 2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.05)
        return
    assert "pcm" not in sample
    with av.open(io.BytesIO(data)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.width, video.codec_context.height) == (42, 32)
        assert audio.codec_context.name == "aac" and audio.rate == 16000 and audio.channels == 1
        durations = sum(p.duration for p in container.demux(audio) if p.size and not p.is_discard)
    assert durations == meta["audio_samples"]
    frames, waveform = decode_all(data)
    assert len(frames) == meta["num_frames"] and frames[0].shape == (32, 42, 3)
    assert meta["audio_samples"] <= len(waveform) < meta["audio_samples"] + 1024  # AAC pads the end


@pytest.mark.parametrize("channels, sample_rate", [(2, 44100), (6, 48000)])
def test_stereo_and_surround_sources_come_out_mono_16k(tmp_path, channels, sample_rate):
    path = tmp_path / "clip.mp4"
    make_clip(path, seconds=1.6, sample_rate=sample_rate, channels=channels)
    data, meta, _ = reencode_video(path, ShardSettings(**SMALL))
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        assert (stream.rate, stream.channels, stream.layout.name) == (16000, 1, "mono")
    _, waveform = decode_all(data)
    waveform = waveform[: meta["audio_samples"]]
    assert meta["audio_samples"] == 25600
    segment = waveform[4000:20000]  # 1 s: FFT bins are 1 Hz apart
    assert np.argmax(np.abs(np.fft.rfft(segment))) == pytest.approx(440, abs=2)  # the tone survived
    assert np.sqrt(np.mean(segment**2)) > 0.1


def sine_residual(waveform: np.ndarray, sample_rate: int, hz: float = 440.0) -> float:
    """RMS of what a single sine of ``hz`` (any phase) does not explain, relative to the
    signal: ~0.01 for a clean AAC tone, large when samples were inserted or dropped."""
    t = np.arange(len(waveform)) / sample_rate
    basis = np.stack([np.sin(2 * np.pi * hz * t), np.cos(2 * np.pi * hz * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, waveform, rcond=None)
    return float(np.sqrt(np.mean((waveform - basis @ coef) ** 2) / np.mean(waveform**2)))


@pytest.mark.parametrize("name, options, rate", [
    # Matroska rounds timestamps to milliseconds: 4608-sample FLAC frames at 44.1 kHz get
    # jittery timestamps and the last one is rounded down
    ("clip.mkv", dict(audio_codec="flac"), 44100),
    ("clip.avi", dict(video_codec="mpeg4", audio_codec="pcm_s16le"), 44100),
    ("clip.webm", dict(video_codec="libvpx", audio_codec="libopus"), 48000),
])
def test_other_containers_keep_full_length_and_continuous_audio(tmp_path, name, options, rate):
    write_media(tmp_path / name, frames_gradient(40), 25, tone(1.6, rate, 2), rate, **options)
    data, meta, _ = reencode_video(tmp_path / name, ShardSettings(**SMALL))
    assert (meta["num_frames"], meta["audio_samples"]) == (40, 25600)
    _, waveform = decode_all(data)
    assert sine_residual(waveform[4000:20000], 16000) < 0.1  # no sample inserted or dropped


def test_vfr_source_comes_out_cfr_with_the_frame_shown_at_each_time(tmp_path):
    # 30 frames with irregular durations (31-73 ms); frame i is a flat grey of level 8*i+8
    rng = np.random.default_rng(3)
    durations = rng.choice([0.031, 0.047, 0.073], size=30)
    times = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    slot_midpoints = (np.arange(40) + 0.5) / 25
    assert np.abs(times[:, None] - slot_midpoints[None]).min() > 5e-4  # no ties to argue about
    levels = 8 * np.arange(30, dtype=np.uint8) + 8
    frames = np.broadcast_to(levels[:, None, None, None], (30, 48, 64, 3)).copy()
    end = float(times[-1] + durations[-1])
    path = tmp_path / "vfr.mp4"
    write_media(path, frames, 25, tone(end, 16000), 16000, frame_times=list(times))
    with av.open(str(path)) as container:  # the source really is VFR
        packets = [p for p in container.demux(video=0) if p.size]
        source_pts = sorted(p.pts for p in packets)
        video_end = max((p.pts + p.duration) * p.time_base for p in packets)  # muxer's last duration
    assert len(set(np.diff(source_pts))) == 3
    data, meta, _ = reencode_video(path, ShardSettings(short_side=32, fps=25, min_seconds=0.5, audio_format="aac"))
    packets = video_packets(data)
    assert {(b[0] - a[0]) * a[2] for a, b in zip(packets, packets[1:])} == {Fraction(1, 25)}
    assert meta["num_frames"] == int(min(video_end, end) * 25 + 1e-6) >= 34
    frames_out, _ = decode_all(data)
    shown = [int(round((f.mean() - 8) / 8)) for f in frames_out]
    # output frame k shows the last source frame that starts before its slot's midpoint
    expected = [int(np.searchsorted(times, (k + 0.5) / 25, side="right") - 1) for k in range(len(frames_out))]
    assert shown == expected
    assert len(set(shown)) > 15  # frames were dropped and repeated, not just copied


@pytest.mark.parametrize("late_stream", ["audio", "video"])
def test_stream_start_offset_is_trimmed_and_stays_aligned(tmp_path, late_stream):
    """A flash and a click at the same presentation time (1.2 s) in a source whose audio
    (or video) starts 0.4 s late: in the output both start at 0 and the click stays on the
    flash to within one frame, at 1.2 - 0.4 s."""
    fps, rate, offset, event = 25, 16000, 0.4, 1.2
    video_shift = offset if late_stream == "video" else 0.0
    audio_shift = offset if late_stream == "audio" else 0.0
    frames = np.zeros((75, 48, 64, 3), np.uint8)
    frames[round((event - video_shift) * fps)] = 255
    audio = np.zeros((1, 3 * rate), np.float32)
    click = round((event - audio_shift) * rate)
    audio[0, click : click + 160] = 0.8
    path = tmp_path / "offset.mp4"
    remux(write_media(None, frames, fps, audio, rate), path, {"video": video_shift, "audio": audio_shift})
    with av.open(str(path)) as container:
        starts = {s.type: float(s.start_time * s.time_base) for s in container.streams}
    assert starts[late_stream] == pytest.approx(offset, abs=1e-3)

    data, meta, _ = reencode_video(path, ShardSettings(short_side=32, fps=fps, sample_rate=rate, audio_format="aac"))
    assert meta["video_start"] == 0 and meta["audio_start"] == 0
    assert meta["duration"] == pytest.approx(3.0 - offset, abs=1 / fps)
    frames_out, waveform = decode_all(data)
    flash_time = int(np.argmax([f.mean() for f in frames_out])) / fps
    click_time = int(np.argmax(np.abs(waveform) > 0.3)) / rate
    assert flash_time == pytest.approx(event - offset, abs=1 / fps)
    assert click_time == pytest.approx(event - offset, abs=1 / fps)
    assert click_time == pytest.approx(flash_time, abs=1 / fps)


def test_display_rotation_is_applied(tmp_path):
    buffer = io.BytesIO()
    with MediaWriter(buffer, width=64, height=48, fps=25, sample_rate=16000) as writer:
        writer.video.set_display_rotation(90)  # counter-clockwise, as phones write it
        image = np.zeros((48, 64, 3), np.uint8)
        image[:12, :16] = 255  # top-left corner of the stored picture
        for _ in range(30):
            writer.add_frame(image)
        writer.add_audio(tone(1.2, 16000))
    path = tmp_path / "phone.mp4"
    path.write_bytes(buffer.getvalue())
    data, meta, _ = reencode_video(path, ShardSettings(**SMALL))
    assert (meta["width"], meta["height"]) == (32, 42)  # portrait
    frame = decode_all(data)[0][0].mean(axis=-1)
    # rotated 90 degrees counter-clockwise, the top-left corner ends at the bottom-left
    assert frame[-8:, :6].mean() > 200 and frame[:8, :6].mean() < 60


def test_too_short_and_audio_shorter_than_video(tmp_path):
    short = tmp_path / "short.mp4"
    make_clip(short, seconds=0.6)
    with pytest.raises(SkipVideo, match=r"too short: 0\.60 s < min_seconds 1"):
        reencode_video(short, ShardSettings(short_side=32))
    # 2 s of video but 0.8 s of audio: the overlap decides
    path = tmp_path / "half.mp4"
    write_media(path, frames_gradient(50), 25, tone(0.8, 16000), 16000)
    with pytest.raises(SkipVideo, match=r"too short: 0\.80 s .*audio 0\.80 s"):
        reencode_video(path, ShardSettings(short_side=32))
    data, meta, _ = reencode_video(path, ShardSettings(**SMALL))
    assert meta["num_frames"] == 20 and meta["audio_samples"] == 12800


# --------------------------------------------------------------------------- packing


def test_missing_audio_silence_packs_video_only_files(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    make_clip(videos / "silent.mp4", seconds=1.2, audio=False)
    report = write_shards(videos, tmp_path / "out", settings=ShardSettings(missing_audio="silence", **SMALL))
    assert report.num_packed == 1 and report.skipped == []
    sample = all_samples(tmp_path / "out")["silent"]
    meta = json.loads(sample["json"])
    assert meta["has_audio"] is False and meta["audio_samples"] == 19200 and meta["num_frames"] == 30
    _, waveform = decode_all(sample["mp4"])
    assert np.abs(waveform).max() == 0


def test_sidecars_labels_and_split_column(tmp_path):
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    for name in ("a.mp4", "b.v2.mp4", "sub/c.mkv", "d.mp4"):
        make_clip(videos / name, seconds=0.6, fps=10)
    (videos / "a.gt.json").write_text('{"boxes": [1, 2]}')
    (videos / "a.stems.flac").write_bytes(b"\x00fLaC-ish\xff")
    (videos / "a.json").write_text('{"mine": true}')  # would collide with the metadata entry
    (videos / "b.v2.boxes.json").write_text("[]")  # belongs to b.v2, not to a video "b"
    (videos / "labels.csv").write_text("id,label,split\na,dog,train\nb.v2,cat,test\nc,dog,train\nzzz,cow,val\n")
    out = tmp_path / "out"
    settings = ShardSettings(**SMALL)
    report = write_shards(videos, out, labels_csv=videos / "labels.csv", settings=settings)

    assert report.splits == {"test": 1, "train": 3}  # d has no row: hashed, val_fraction 0 → train
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == ["cat", "cow", "dog"]
    assert sorted(manifest["splits"]) == ["test", "train"]
    samples = all_samples(out)
    assert sorted(samples) == ["a", "b_v2", "d", "sub__c"]
    a = samples["a"]
    assert a["gt.json"] == b'{"boxes": [1, 2]}' and a["stems.flac"] == b"\x00fLaC-ish\xff"
    assert a["sidecar.json"] == b'{"mine": true}'
    assert json.loads(a["json"])["extras"] == ["gt.json", "sidecar.json", "stems.flac"]
    assert samples["b_v2"]["boxes.json"] == b"[]"
    metas = {key: json.loads(s["json"]) for key, s in samples.items()}
    assert (metas["a"]["label"], metas["a"]["label_name"], metas["a"]["split"]) == (2, "dog", "train")
    assert (metas["b_v2"]["label"], metas["b_v2"]["label_name"], metas["b_v2"]["split"]) == (0, "cat", "test")
    c = metas["sub__c"]
    assert (c["label"], c["id"], c["source"]) == (2, "sub/c", "sub/c.mkv")
    assert (metas["d"]["label"], metas["d"]["label_name"]) == (-1, None)
    # indices: contiguous per split, in sorted relative-path order
    assert [metas[k]["index"] for k in ("a", "d", "sub__c")] == [0, 1, 2] and metas["b_v2"]["index"] == 0


def test_integer_labels_are_kept_and_ids_match_by_stem(tmp_path):
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("id,label\nx/clip1,7\nclip2,0\nclip3,\n")
    labels = read_labels(csv_path)
    assert labels.classes is None
    assert labels.rows["x/clip1"][:2] == (7, None) and labels.rows["clip3"][0] == -1
    videos = tmp_path / "videos"
    (videos / "x").mkdir(parents=True)
    for name in ("x/clip1.mp4", "y/clip2.mp4"):
        (videos / name).parent.mkdir(exist_ok=True)
        (videos / name).write_bytes(b"")  # planning does not decode
    jobs, _, used = plan_jobs(videos, labels, ShardSettings())
    assert [(j.id, j.label) for j in jobs] == [("x/clip1", 7), ("y/clip2", 0)]
    assert used == {"x/clip1", "clip2"}
    bad = tmp_path / "bad.csv"
    bad.write_text("name,class\na,b\n")
    with pytest.raises(ValueError, match="id,label"):
        read_labels(bad)


def test_val_fraction_is_a_deterministic_hash(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(40):
        (videos / f"v{i:02d}.mp4").write_bytes(b"")
    settings = ShardSettings(val_fraction=0.25, seed=1)
    jobs, _, _ = plan_jobs(videos, None, settings)
    splits = [j.split for j in jobs]
    assert splits == [hash_split(j.id, 1, 0.25) for j in jobs]
    assert 4 <= splits.count("val") <= 16 and set(splits) == {"train", "val"}
    assert splits == [j.split for j in plan_jobs(videos, None, settings)[0]]
    assert splits != [j.split for j in plan_jobs(videos, None, ShardSettings(val_fraction=0.25, seed=2))[0]]
    assert {j.split for j in plan_jobs(videos, None, ShardSettings())[0]} == {"train"}


def test_keys_sidecar_owners_and_duplicate_keys(tmp_path):
    videos = tmp_path / "videos"
    (videos / "d.e").mkdir(parents=True)
    for name in ("a.mp4", "a.b.mp4", "a_b.MOV", "d.e/f.webm", "a.b.json", "a.x.json", "readme.txt"):
        (videos / name).write_bytes(b"")
    found = {p.name: [e for e, _ in side] for p, side in find_videos(videos)}
    assert found == {"a.mp4": ["x.json"], "a.b.mp4": ["sidecar.json"], "a_b.MOV": [], "f.webm": []}
    assert sample_key("d.e/f") == "d_e__f"
    jobs, skipped, _ = plan_jobs(videos, None, ShardSettings())
    assert [j.source for j in jobs] == ["a.b.mp4", "a.mp4", "d.e/f.webm"]  # sorted relative paths
    assert [j.key for j in jobs] == ["a_b", "a", "d_e__f"]
    assert skipped == [{"file": "a_b.MOV", "reason": "duplicate key: a_b is already used by a.b.mp4"}]


def test_indices_and_shards_identical_with_1_and_2_workers(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(5):
        make_clip(videos / f"clip{i}.mp4", seconds=0.6 + 0.1 * i, fps=10)
    (videos / "clip2_broken.mp4").write_text("garbage")
    make_clip(videos / "clip3_short.mp4", seconds=0.3, fps=10)
    settings = ShardSettings(shard_size=2, val_fraction=0.4, seed=0, **SMALL)
    one = write_shards(videos, tmp_path / "w1", settings=settings, workers=1)
    two = write_shards(videos, tmp_path / "w2", settings=settings, workers=2)

    assert one.num_packed == two.num_packed == 5
    assert one.splits == two.splits and sum(one.splits.values()) == 5 and len(one.splits) == 2
    assert [s["file"] for s in one.skipped] == ["clip2_broken.mp4", "clip3_short.mp4"]
    assert one.skipped == two.skipped and one.skipped[1]["reason"].startswith("too short: 0.30 s")
    for split, paths in one.shards.items():
        assert [Path(p).name for p in paths] == [Path(p).name for p in two.shards[split]]
        for a, b in zip(paths, two.shards[split]):
            assert_same_shard(Path(a), Path(b))
        counts = [len(read_samples(Path(p))) for p in paths]
        assert all(c == 2 for c in counts[:-1]) and 1 <= counts[-1] <= 2
    metas = [json.loads(s["json"]) for s in all_samples(tmp_path / "w1").values()]
    for split in one.splits:
        in_split = sorted((m["source"], m["index"]) for m in metas if m["split"] == split)
        assert [index for _, index in in_split] == list(range(len(in_split)))
    manifest = json.loads((tmp_path / "w1" / "manifest.json").read_text())
    assert manifest["settings"]["shard_size"] == 2 and manifest["num_samples"] == 5
    assert manifest["hours"] == pytest.approx(sum(m["duration"] for m in metas) / 3600, abs=1e-6)


def test_rerun_removes_the_shards_of_the_previous_run(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        make_clip(videos / f"c{i}.mp4", seconds=0.6, fps=10)
    out = tmp_path / "out"
    write_shards(videos, out, settings=ShardSettings(shard_size=1, **SMALL))
    assert sorted(p.name for p in out.glob("*.tar")) == [f"train-00000{i}.tar" for i in range(3)]
    (videos / "c2.mp4").unlink()
    (out / "mine.tar").write_bytes(b"")  # not ours: left alone
    write_shards(videos, out, settings=ShardSettings(shard_size=1, **SMALL))
    assert sorted(p.name for p in out.glob("*.tar")) == ["mine.tar", "train-000000.tar", "train-000001.tar"]


def test_settings_are_validated():
    with pytest.raises(ValueError, match="missing_audio"):
        ShardSettings(missing_audio="drop")
    with pytest.raises(ValueError, match="short_side"):
        ShardSettings(short_side=127)
    assert ShardSettings(fps=25, gop_seconds=1.0).gop_frames == 25


def test_encoder_gives_the_same_bytes_for_the_same_frames_again_in_one_process():
    """x264's macroblock-tree rate control read memory it had not written: a second encode
    of the same frames in one process gave other bytes (almost every time at this size)."""
    frames = np.random.default_rng(0).integers(0, 256, (30, 240, 320, 3), dtype=np.uint8)
    first = write_media(None, frames, 25)
    for _ in range(4):
        _ = [bytearray(np.random.default_rng().bytes(n)) for n in (5_000, 70_000, 300_000)]
        assert write_media(None, frames, 25) == first
