"""The synthetic audio-visual set: determinism, ground truth that matches the pixels and
the waveforms, the file layout other stages read, and the mp4 round trip."""
from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest

from avssl.data.synth import (
    ARTICULATIONS,
    SHAPES,
    SPECTRA,
    SPLITS,
    TEXTURES,
    SynthConfig,
    categories,
    clip_id,
    faulty_soundtracks,
    generate_dataset,
    render_clip,
    split_of,
    summary_line,
    write_dataset,
)

# Tiny clips: 32 px, 1.2 s, 10 fps, 8 kHz. Every object kind is present.
TINY = SynthConfig(seconds=1.2, size=32, fps=10.0, sample_rate=8000, seed=3,
                   p_second_sounding=1.0, p_silent_distractor=1.0)


def _diff_mask(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(T, H, W) where two renderings of a clip differ."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(-1) > 0


def _box_mask(box: list[float], size: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    x0, y0, x1, y1 = (int(v) for v in box)
    mask[y0:y1, x0:x1] = True
    return mask


def test_category_table_needs_the_conjunction() -> None:
    table = categories(8)
    assert len({c.name for c in table}) == 8
    assert all("." not in c.name and "," not in c.name for c in table)
    # no two categories look alike or sound alike ...
    assert len({(c.shape, c.texture) for c in table}) == 8
    assert len({(c.spectrum, c.articulation) for c in table}) == 8
    # ... but every single attribute is shared by exactly two categories
    for attribute, values in (("shape", SHAPES), ("texture", TEXTURES), ("spectrum", SPECTRA),
                              ("articulation", ARTICULATIONS)):
        counts = [sum(getattr(c, attribute) == v for c in table) for v in values]
        assert counts == [2] * len(values), attribute
    with pytest.raises(ValueError, match="num_categories"):
        categories(17)


def test_render_is_deterministic_and_seeded() -> None:
    a, b = render_clip(5, TINY), render_clip(5, TINY)
    assert a.frames.shape == (12, 32, 32, 3) and a.frames.dtype == np.uint8
    assert a.mix.shape == (9600,) and a.mix.dtype == np.float32
    assert np.array_equal(a.frames, b.frames)
    assert np.array_equal(a.mix, b.mix) and np.array_equal(a.stems, b.stems)
    assert a.ground_truth == b.ground_truth
    other_seed = render_clip(5, replace(TINY, seed=4))
    assert not np.array_equal(a.frames, other_seed.frames)
    assert not np.allclose(a.mix, other_seed.mix)
    assert a.ground_truth != other_seed.ground_truth
    assert a.label == other_seed.label  # the label follows the index, balanced over categories
    assert render_clip(6, TINY).label != a.label


def test_ground_truth_fields() -> None:
    clip = render_clip(2, TINY)
    gt = clip.ground_truth
    assert gt["id"] == "synth_000002" and gt["label"] == clip.label == gt["objects"][0]["category"]
    assert gt["categories"] == [c.name for c in categories(8)]
    assert (gt["seconds"], gt["fps"], gt["sample_rate"], gt["size"]) == (1.2, 10.0, 8000, 32)
    objects = gt["objects"]
    assert [o["sounding"] for o in objects] == [True, True, False]
    assert [o["stem_channel"] for o in objects] == [0, 1, None]
    assert len({o["category"] for o in objects}) == 3
    assert objects[2]["onsets"] == []
    assert clip.stems.shape == (2, clip.mix.shape[0])
    for obj in objects:
        assert len(obj["boxes"]) == 12
        assert all(len(box) == 4 and box[0] < box[2] and box[1] < box[3] for box in obj["boxes"])
    json.dumps(gt)  # plain json types only


def test_boxes_hold_exactly_the_object_pixels() -> None:
    for index in range(3):
        clip = render_clip(index, TINY)
        empty = render_clip(index, TINY, objects=[])
        for k, obj in enumerate(clip.ground_truth["objects"]):
            alone = render_clip(index, TINY, objects=[k])
            changed = _diff_mask(alone.frames, empty.frames)
            for t, box in enumerate(obj["boxes"]):
                inside = _box_mask(box, TINY.size)
                assert not (changed[t] & ~inside).any(), (index, k, t)  # nothing drawn outside
                fill = changed[t][inside].mean()
                assert fill > 0.3, (index, k, t, fill)  # and the box is tight
                ys, xs = np.nonzero(changed[t])
                assert xs.min() <= box[0] + 1 and xs.max() >= box[2] - 2
                assert ys.min() <= box[1] + 1 and ys.max() >= box[3] - 2


def test_onsets_are_visible_events_and_audio_events() -> None:
    cfg = TINY
    for index in range(3):
        clip = render_clip(index, cfg)
        for k, obj in enumerate(clip.ground_truth["objects"]):
            with_events = render_clip(index, cfg, objects=[k])
            without = render_clip(index, cfg, objects=[k], events=False)
            changed = _diff_mask(with_events.frames, without.frames)
            onset_frames = [round(s * cfg.fps) for s in obj["onsets"]]
            assert all(abs(f / cfg.fps - s) < 1e-6 for f, s in zip(onset_frames, obj["onsets"]))
            event_frames = {f + d for f in onset_frames for d in range(cfg.event_frames)}
            for t in range(cfg.num_frames):
                inside = _box_mask(obj["boxes"][t], cfg.size)
                if t in onset_frames:
                    assert changed[t][inside].mean() > 0.3, (index, k, t)
                if t not in event_frames:
                    assert not changed[t].any(), (index, k, t)
                assert not (changed[t] & ~inside).any()
            if not obj["sounding"]:
                assert not changed.any()
                continue
            # every note of the object starts on an onset, and the stem is silent before the first
            assert len(onset_frames) >= 1
            gaps = np.diff(onset_frames)
            assert (gaps >= np.ceil(cfg.min_onset_gap_seconds * cfg.fps)).all()
            note_onsets = [n["onset_seconds"] for n in clip.notes if n["object"] == k]
            assert np.allclose(note_onsets, obj["onsets"], atol=0.5 / cfg.sample_rate)
            stem = clip.stems[obj["stem_channel"]]
            first = round(obj["onsets"][0] * cfg.sample_rate)
            assert not stem[:first].any()
            assert np.abs(stem[first : first + 80]).max() > 0.01 * np.abs(stem).max()


def test_onsets_are_random_not_periodic() -> None:
    cfg = SynthConfig(seconds=4.0, size=32, fps=25.0, sample_rate=8000)
    gaps = []
    for index in range(6):
        for obj in render_clip(index, cfg).ground_truth["objects"]:
            gaps += list(np.diff(obj["onsets"]))
    gaps = np.asarray(gaps)
    assert gaps.min() >= 0.25 - 1e-9
    assert len(np.unique(np.round(gaps, 3))) >= 4


def test_stems_sum_to_mix_minus_background() -> None:
    for index in range(4):
        clip = render_clip(index, TINY)
        assert np.allclose(clip.mix, clip.stems.sum(0) + clip.background_audio, atol=1e-6)
        sources = clip.stems.sum(0)
        assert np.sqrt(np.mean(clip.background_audio**2)) < np.sqrt(np.mean(sources**2))
        assert np.abs(clip.mix).max() <= TINY.peak + 1e-6
        # the stems are distinct sources, not copies of the mix
        assert np.corrcoef(clip.stems[0], clip.stems[1])[0, 1] < 0.5
    quiet = replace(TINY, noise_snr_db=(300.0, 300.0), p_offscreen=0.0)
    clip = render_clip(1, quiet)
    assert np.allclose(clip.mix, clip.stems.sum(0), atol=1e-6)
    assert np.abs(clip.background_audio).max() < 1e-9


def test_main_object_is_largest_and_loudest() -> None:
    for index in range(6):
        clip = render_clip(index, TINY)
        empty = render_clip(index, TINY, objects=[])
        areas = [np.median(_diff_mask(render_clip(index, TINY, objects=[k]).frames, empty.frames).sum((1, 2)))
                 for k in range(len(clip.ground_truth["objects"]))]
        assert areas[0] > 1.2 * max(areas[1:]), (index, areas)
        level_db = 20 * np.log10(np.sqrt(np.mean(clip.stems.astype(np.float64) ** 2, axis=1)))
        assert 3 - 1e-3 <= level_db[0] - level_db[1] <= 9 + 1e-3, (index, level_db)


def test_few_categories() -> None:
    cfg = replace(TINY, num_categories=2)
    for index in range(4):
        clip = render_clip(index, cfg)
        assert [o["category"] for o in clip.ground_truth["objects"]] == [
            categories(2)[index % 2].name, categories(2)[(index + 1) % 2].name]


def test_split_of_follows_fractions() -> None:
    splits = [split_of(i, (0.8, 0.1, 0.1)) for i in range(1000)]
    counts = {name: splits.count(name) for name in ("train", "val", "test")}
    assert abs(counts["train"] - 800) <= 3 and abs(counts["val"] - 100) <= 3 and abs(counts["test"] - 100) <= 3
    assert {split_of(i, (1, 0, 0)) for i in range(50)} == {"train"}
    assert {split_of(i, (0, 0, 1)) for i in range(50)} == {"test"}
    # labels are balanced inside a split too
    test_labels = [i % 8 for i, s in enumerate(splits) if s == "test"]
    assert min(test_labels.count(c) for c in range(8)) >= 8
    with pytest.raises(ValueError):
        split_of(0, (0.5, 0.5))


def _decode(path: Path) -> tuple[list[np.ndarray], np.ndarray, tuple[tuple, tuple]]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        info = (stream.codec_context.name, stream.average_rate, stream.width, stream.height)
    with av.open(str(path)) as container:
        audio_info = (container.streams.audio[0].codec_context.name, container.streams.audio[0].rate)
        audio = np.concatenate([f.to_ndarray().reshape(-1) for f in container.decode(audio=0)])
    return frames, audio, (info, audio_info)


def test_generate_dataset_writes_the_layout(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "synth"
    summary = generate_dataset(out, num_videos=5, seconds=1.2, size=32, fps=10.0, sample_rate=8000,
                               split_fractions=(0.6, 0.2, 0.2), seed=1)
    assert capsys.readouterr().out == "", "the summary is the CLI's to print"
    counts = ", ".join(f"{name} {sum(split_of(i, (0.6, 0.2, 0.2)) == name for i in range(5))}" for name in SPLITS)
    assert summary_line(summary, out) == f"wrote 5 videos (0.00 h; {counts}) to {out}"
    assert summary["videos"] == 5 and summary["hours"] == pytest.approx(5 * 1.2 / 3600, abs=1e-4)
    assert sum(summary["splits"].values()) == 5
    assert json.loads((out / "summary.json").read_text())["splits"] == summary["splits"]

    with open(out / "labels.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "label", "split"]
    assert [r[0] for r in rows[1:]] == [f"synth_{i:06d}" for i in range(5)]
    cfg = SynthConfig(seconds=1.2, size=32, fps=10.0, sample_rate=8000, seed=1)
    for i, (video_id, label, split) in enumerate(rows[1:]):
        assert split == split_of(i, (0.6, 0.2, 0.2))
        gt = json.loads((out / "videos" / f"{video_id}.gt.json").read_text())
        assert gt["id"] == video_id and gt["label"] == label
        assert set(gt) == {"id", "label", "seconds", "fps", "sample_rate", "size", "categories", "objects"}
        assert set(gt["objects"][0]) == {"category", "sounding", "boxes", "onsets", "stem_channel"}
        assert gt == json.loads(json.dumps(render_clip(i, cfg).ground_truth))
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted(
        f"synth_{i:06d}{ext}" for i in range(5) for ext in (".mp4", ".gt.json", ".stems.flac"))

    # the mp4 decodes to the rendered clip: 12 frames of 32×32 at 10 fps, 1.2 s of aac
    clip = render_clip(0, cfg)
    frames, audio, (video_info, audio_info) = _decode(out / "videos" / "synth_000000.mp4")
    vcodec, rate, width, height = video_info
    acodec, sample_rate = audio_info
    assert (vcodec, acodec, float(rate), width, height, sample_rate) == ("h264", "aac", 10.0, 32, 32, 8000)
    assert len(frames) == 12
    error = np.abs(np.stack(frames).astype(np.float32) - clip.frames.astype(np.float32)).mean()
    assert error < 12, error  # lossy, but the same picture (and the same channel order)
    assert abs(len(audio) - clip.mix.shape[0]) <= 1024
    n = min(len(audio), clip.mix.shape[0])
    assert np.corrcoef(audio[:n], clip.mix[:n])[0, 1] > 0.9  # aligned, not shifted

    # the stems flac holds one lossless channel per sounding object
    with av.open(str(out / "videos" / "synth_000000.stems.flac")) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "flac" and stream.channels == clip.stems.shape[0]
        decoded = np.concatenate([f.to_ndarray().reshape(-1, stream.channels) if f.format.is_packed
                                  else f.to_ndarray().T for f in container.decode(audio=0)])
    scale = 2.0 ** 15 if decoded.dtype == np.int16 else 2.0 ** 31 if decoded.dtype == np.int32 else 1.0
    assert decoded.shape == (clip.stems.shape[1], clip.stems.shape[0])
    assert np.abs(decoded.T / scale - clip.stems).max() < 1e-3


def test_output_does_not_depend_on_workers(tmp_path: Path) -> None:
    cfg = SynthConfig(seconds=0.6, size=16, fps=10.0, sample_rate=8000, seed=2)
    one = write_dataset(tmp_path / "one", 4, cfg, workers=1, progress=False)
    two = write_dataset(tmp_path / "two", 4, cfg, workers=2, progress=False)
    assert one == two
    assert (tmp_path / "one/labels.csv").read_text() == (tmp_path / "two/labels.csv").read_text()
    for i in range(4):
        for ext in (".gt.json", ".stems.flac", ".mp4"):
            name = f"videos/synth_{i:06d}{ext}"
            assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


# summary.json and labels.csv of write_dataset(out, 5, SMALL, (0.6, 0.2, 0.2)) before the
# faulty-soundtrack option existed (json and csv only: the mp4's bytes depend on the encoder build)
SMALL = SynthConfig(seconds=0.6, size=16, fps=10.0, sample_rate=8000, seed=2)
SMALL_SHA256 = {"labels.csv": "51ac70bd6419d31a60a540a551fc86559253207e06a71be371daa380fe3aab53",
                "summary.json": "270337b0a78385ac39dd0d4fcf8a28fc8ccec103c11bf3c7bfaa56646c6aaa53"}


def test_no_faulty_soundtracks_leaves_the_set_unchanged(tmp_path: Path) -> None:
    import hashlib

    write_dataset(tmp_path / "default", 5, SMALL, (0.6, 0.2, 0.2), progress=False)
    write_dataset(tmp_path / "zero", 5, SMALL, (0.6, 0.2, 0.2), progress=False, faulty_soundtrack_fraction=0.0)
    for name, digest in SMALL_SHA256.items():
        assert hashlib.sha256((tmp_path / "default" / name).read_bytes()).hexdigest() == digest, name
    files = sorted(p.relative_to(tmp_path / "default") for p in (tmp_path / "default").rglob("*") if p.is_file())
    assert len(files) == 2 + 3 * 5
    for name in files:
        assert (tmp_path / "zero" / name).read_bytes() == (tmp_path / "default" / name).read_bytes(), name
    assert all("soundtrack_from" not in json.loads(p.read_text()) for p in (tmp_path / "zero").rglob("*.gt.json"))


def test_faulty_soundtrack_draw() -> None:
    donors = faulty_soundtracks(40, 0.25, SMALL)
    train = [i for i in range(40) if split_of(i) == "train"]
    assert len(donors) == round(0.25 * len(train)) and donors == faulty_soundtracks(40, 0.25, SMALL)
    for receiver, donor in donors.items():
        assert receiver in train and donor in train
        assert donor % SMALL.num_categories != receiver % SMALL.num_categories  # another category
    assert donors != faulty_soundtracks(40, 0.25, replace(SMALL, seed=3))
    assert faulty_soundtracks(40, 0.0, SMALL) == {}
    # 2 categories, 4 videos at (0.5, 0.25, 0.25): the training videos 1 and 3 share category 1, so
    # the donor is any other training video
    assert [split_of(i, (0.5, 0.25, 0.25)) for i in range(4)] == ["val", "train", "test", "train"]
    assert faulty_soundtracks(4, 1.0, replace(SMALL, num_categories=2), (0.5, 0.25, 0.25)) == {1: 3, 3: 1}
    with pytest.raises(ValueError, match=r"faulty soundtrack fraction must lie in \[0, 1\], got 1.5"):
        faulty_soundtracks(40, 1.5, SMALL)
    with pytest.raises(ValueError, match="needs at least 2 training videos, got 1"):
        faulty_soundtracks(1, 1.0, SMALL, (1.0, 0.0, 0.0))


def test_faulty_soundtracks_are_written_and_recorded(tmp_path: Path) -> None:
    summary = write_dataset(tmp_path, 4, SMALL, (1.0, 0.0, 0.0), progress=False, faulty_soundtrack_fraction=0.5)
    donors = faulty_soundtracks(4, 0.5, SMALL, (1.0, 0.0, 0.0))
    assert len(donors) == 2
    assert summary["faulty_soundtracks"] == {"fraction": 0.5, "soundtrack_from": {
        clip_id(r): clip_id(d) for r, d in donors.items()}}
    assert json.loads((tmp_path / "summary.json").read_text())["faulty_soundtracks"] == summary["faulty_soundtracks"]
    videos = tmp_path / "videos"
    for i in range(4):
        gt = json.loads((videos / f"{clip_id(i)}.gt.json").read_text())
        own = json.loads(json.dumps(render_clip(i, SMALL).ground_truth))
        if i in donors:
            assert gt == {**own, "soundtrack_from": clip_id(donors[i])}
            # the receiver's stems are the donor's, sample for sample
            assert (videos / f"{clip_id(i)}.stems.flac").read_bytes() == (
                videos / f"{clip_id(donors[i])}.stems.flac").read_bytes()
        else:
            assert gt == own
    receiver = next(iter(donors))
    _, audio, _ = _decode(videos / f"{clip_id(receiver)}.mp4")
    donor_mix, own_mix = render_clip(donors[receiver], SMALL).mix, render_clip(receiver, SMALL).mix
    n = min(len(audio), len(donor_mix))
    assert np.corrcoef(audio[:n], donor_mix[:n])[0, 1] > 0.9 > np.corrcoef(audio[:n], own_mix[:n])[0, 1]


def test_cli_rejects_a_fraction_outside_0_1(capsys: pytest.CaptureFixture) -> None:
    from avssl.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["synth", "--out", "x", "--faulty-soundtrack-fraction", "1.5"])
    assert exit_info.value.code == 2
    assert "--faulty-soundtrack-fraction: must lie in [0, 1], got 1.5" in capsys.readouterr().err
    args = build_parser().parse_args(["synth", "--out", "x", "--faulty-soundtrack-fraction", "0.25"])
    assert args.faulty_soundtrack_fraction == 0.25
