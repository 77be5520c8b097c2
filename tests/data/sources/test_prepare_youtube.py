"""Kinetics-400, Kinetics-Sounds, VGG-Sound and AudioSet adapters: csvs in the official
formats, clips named the ways downloaders name them, some listed clips never downloaded."""
from __future__ import annotations

import json

import pytest
from prepare_fixtures import SMALL, SMALL_FLAGS, by_split, read_out, skipped_files, video, wav

from avssl.cli import main
from avssl.data.sources.common import hashed_split
from avssl.data.sources.youtube import (
    KINETICS_SOUNDS_CLASSES,
    clip_stems,
    prepare_audioset,
    prepare_kinetics400,
    prepare_vggsound,
    read_audioset_segments,
)

KINETICS_TRAIN = [  # label, youtube_id, time_start, time_end
    ("abseiling", "--07WQ2iBlw", 1, 11),
    ("playing drums", "-0ZkeYCNtcE", 40, 50),
    ("singing", "0_1vD1j2fWs", 3, 13),
    ("singing", "1p5D9oH8Zhs", 120, 130),  # listed, not on disk
]
KINETICS_VAL = [("abseiling", "-3B32lodo2M", 59, 69), ("playing drums", "_2TftGvNquw", 0, 10)]


def make_kinetics(root):
    """The annotations csvs and clips in the ActivityNet crawler's layout ``<split>/<label>/``."""
    (root / "annotations").mkdir(parents=True)
    for name, rows, split in (("train", KINETICS_TRAIN, "train"), ("val", KINETICS_VAL, "val")):
        lines = ["label,youtube_id,time_start,time_end,split,is_cc"]
        lines += [f'"{label}",{ytid},{start},{end},{split},0' for label, ytid, start, end in rows]
        (root / "annotations" / f"{name}.csv").write_text("\n".join(lines) + "\n")
        for label, ytid, start, end in rows:
            if ytid != "1p5D9oH8Zhs":
                # one clip without audio: Kinetics-400 packs it with a silent track
                video(root / split / label / f"{ytid}_{start:06d}_{end:06d}.mp4", audio=ytid != "0_1vD1j2fWs")
    return root


def test_kinetics400_val_csv_is_test_and_missing_clips_are_reported(tmp_path):
    root = make_kinetics(tmp_path / "kinetics400")
    out = tmp_path / "k400"
    seed = next(s for s in range(100)
                if (hashed_split("--07WQ2iBlw", s, 0.5), hashed_split("-0ZkeYCNtcE", s, 0.5)) == ("val", "train"))
    assert main(["prepare", "kinetics400", "--root", str(root), "--out", str(out), "--val-fraction", "0.5",
                 "--seed", str(seed), *SMALL_FLAGS]) == 0
    manifest, samples = read_out(out)
    assert manifest["classes"] == ["abseiling", "playing drums", "singing"]
    splits = by_split(samples)
    assert splits["test"] == {"-3B32lodo2M_000059_000069", "_2TftGvNquw_000000_000010"}
    assert "--07WQ2iBlw_000001_000011" in splits["val"]
    assert splits["train"] | splits["val"] == {"--07WQ2iBlw_000001_000011", "-0ZkeYCNtcE_000040_000050",
                                               "0_1vD1j2fWs_000003_000013"}
    drums = samples["-0ZkeYCNtcE_000040_000050"]
    assert drums["json"]["label"] == 1
    assert drums["annotation.json"]["youtube_id"] == "-0ZkeYCNtcE"
    assert drums["annotation.json"]["official_split"] == "train"
    assert drums["annotation.json"]["source_file"] == "train/playing drums/-0ZkeYCNtcE_000040_000050.mp4"
    assert samples["0_1vD1j2fWs_000003_000013"]["json"]["has_audio"] is False
    assert skipped_files(manifest) == {
        "1p5D9oH8Zhs_000120_000130.*": f"missing: listed in annotations/train.csv, not found under {root}"}
    prepared = json.loads((out / "prepare.json").read_text())
    assert prepared["listed"] == 6 and prepared["missing"] == 1


def test_kinetics400_finds_the_csvs_of_deepminds_archive(tmp_path):
    """kinetics400.tar.gz unpacks to kinetics400/{train,validate,test}.csv."""
    root = make_kinetics(tmp_path / "k400")
    (root / "annotations").rename(root / "kinetics400")
    (root / "kinetics400" / "val.csv").rename(root / "kinetics400" / "validate.csv")
    report = prepare_kinetics400(root, tmp_path / "out", val_fraction=0.0, settings=SMALL)
    assert report.shards.splits == {"test": 2, "train": 3}
    assert report.missing[0]["reason"] == f"missing: listed in kinetics400/train.csv, not found under {root}"
    (root / "kinetics400" / "train.csv").unlink()
    with pytest.raises(FileNotFoundError) as error:
        prepare_kinetics400(root, tmp_path / "out", settings=SMALL)
    assert str(error.value) == (
        "kinetics400 training csv: expected one of the files annotations/train.csv, train.csv, kinetics400/train.csv, "
        f"k400/annotations/train.csv, kinetics-400_train.csv, kinetics_400_train.csv under {root}")


def test_kinetics_sounds_is_a_class_subset(tmp_path, capsys):
    root = make_kinetics(tmp_path / "kinetics400")
    classes = tmp_path / "ks.txt"
    classes.write_text("singing\nplaying drums\n")
    out = tmp_path / "ks"
    assert main(["prepare", "kinetics-sounds", "--root", str(root), "--out", str(out), "--classes", str(classes),
                 "--val-fraction", "0", *SMALL_FLAGS]) == 0
    manifest, samples = read_out(out)
    assert manifest["classes"] == ["singing", "playing drums"]  # the list's order
    assert {k: s["json"]["label"] for k, s in samples.items()} == {
        "-0ZkeYCNtcE_000040_000050": 1, "_2TftGvNquw_000000_000010": 1}
    # the silent singing clip is skipped: Kinetics-Sounds needs its audio
    assert skipped_files(manifest)["0_1vD1j2fWs_000003_000013.mp4"] == "no audio stream"
    assert "1p5D9oH8Zhs_000120_000130.*" in skipped_files(manifest)
    classes.write_text("singing\nplaying kazoo\n")
    assert main(["prepare", "kinetics-sounds", "--root", str(root), "--out", str(out), "--classes", str(classes)]) == 2
    assert "playing kazoo" in capsys.readouterr().err
    assert len(KINETICS_SOUNDS_CLASSES) == len(set(KINETICS_SOUNDS_CLASSES)) == 31


def test_vggsound_csv_and_audio_only_downloads(tmp_path):
    root = tmp_path / "vggsound"
    root.mkdir()
    (root / "vggsound.csv").write_text(
        "---g-f_I2yQ,1,people marching,test\n"
        "--0PQM4-hqg,30,waterfall burbling,train\n"
        '--56QUhyDQM,185,"playing tennis",train\n'
        "--5OkAjCI7g,40,people belly laughing,train\n")  # never downloaded
    video(root / "video" / "---g-f_I2yQ_000001.mp4")
    video(root / "video" / "--0PQM4-hqg_000030.mp4")
    wav(root / "audio" / "--56QUhyDQM_000185.wav")  # an audio-only download
    report = prepare_vggsound(root, tmp_path / "out", val_fraction=0.0, settings=SMALL)
    manifest, samples = read_out(tmp_path / "out")
    assert manifest["classes"] == ["people belly laughing", "people marching", "playing tennis", "waterfall burbling"]
    assert by_split(samples) == {"test": {"---g-f_I2yQ_000001"}, "train": {"--0PQM4-hqg_000030", "--56QUhyDQM_000185"}}
    tennis = samples["--56QUhyDQM_000185"]
    assert tennis["json"]["label"] == 2 and tennis["annotation.json"]["video"] == "blank"
    assert samples["---g-f_I2yQ_000001"]["annotation.json"]["video"] == "original"
    assert [m["file"] for m in report.missing] == ["--5OkAjCI7g_000040.*"]
    with pytest.raises(FileNotFoundError, match="vggsound.csv"):
        prepare_vggsound(tmp_path / "nothing", tmp_path / "x")


AUDIOSET_HEADER = (
    "# Segments csv created Sun Mar  5 10:54:31 2017\n"
    "# num_ytids=22160, num_segs=22160, num_unique_labels=527, num_positive_labels=52882\n"
    "# YTID, start_seconds, end_seconds, positive_labels\n"
)


def test_audioset_multi_label_targets(tmp_path, caplog, capsys):
    root = tmp_path / "audioset"
    root.mkdir()
    (root / "class_labels_indices.csv").write_text(
        'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/05zppz,"Male speech, man speaking"\n2,/m/04rlf,"Music"\n')
    (root / "balanced_train_segments.csv").write_text(AUDIOSET_HEADER + (
        '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/m/05zppz"\n'
        '--ZhevVpy1s, 50.000, 60.000, "/m/04rlf"\n'
        '--aE2O5G5WE, 0.000, 10.000, "/m/04rlf,/m/09x0r"\n'))  # never downloaded
    (root / "eval_segments.csv").write_text(
        AUDIOSET_HEADER + '--4gqARaEJE, 0.000, 10.000, "/m/04rlf,/m/0zzzz,/m/09x0r"\n')
    video(root / "videos" / "--PJHxphWEs_30000_40000.mp4")  # milliseconds in the name
    video(root / "videos" / "Y--ZhevVpy1s.mp4")
    video(root / "eval" / "--4gqARaEJE_000000_000010.mp4")
    with caplog.at_level("WARNING", logger="avssl.data.sources.youtube"):
        report = prepare_audioset(root, tmp_path / "out", val_fraction=0.0, settings=SMALL)
    assert caplog.messages == ["audioset: 1 label ids not in class_labels_indices.csv were ignored: ['/m/0zzzz']"]
    assert "were ignored" not in capsys.readouterr().out, "a warning on stderr, not the verb's output"
    manifest, samples = read_out(tmp_path / "out")
    assert manifest["classes"] == ["Speech", "Male speech, man speaking", "Music"]
    assert manifest["source"]["subset"] == "balanced"
    assert by_split(samples)["test"] == {"--4gqARaEJE_000000_000010"}
    speech = samples["--PJHxphWEs_000030_000040"]
    assert speech["json"]["label"] == -1  # multi-label: the targets are in annotation.json
    assert speech["annotation.json"]["labels"] == [0, 1]
    assert speech["annotation.json"]["mids"] == ["/m/09x0r", "/m/05zppz"]
    assert samples["--ZhevVpy1s_000050_000060"]["annotation.json"]["labels"] == [2]
    assert samples["--4gqARaEJE_000000_000010"]["annotation.json"]["labels"] == [0, 2]  # unknown mid dropped
    assert [m["file"] for m in report.missing] == ["--aE2O5G5WE_000000_000010.*"]
    assert read_audioset_segments(root / "eval_segments.csv")[0][1:3] == (0.0, 10.0)
    with pytest.raises(ValueError, match="subset"):
        prepare_audioset(root, tmp_path / "x", subset="tiny")
    (root / "class_labels_indices.csv").write_text('index,mid,display_name\n0,/m/09x0r,"Speech"\n2,/m/04rlf,"Music"\n')
    with pytest.raises(ValueError) as error:
        prepare_audioset(root, tmp_path / "x")
    assert str(error.value) == (f"{root / 'class_labels_indices.csv'}: the indices must be 0, 1, … without gaps; "
                                "1 missing")


def test_clip_stems_cover_the_usual_names():
    stems = clip_stems("abc", 30.0, 40.0)
    assert stems[:2] == ["abc_000030_000040", "abc_30_40"]
    assert {"abc_30000_40000", "abc_000030"} <= set(stems) and "abc" not in stems
    assert {"Yabc", "abc"} <= set(clip_stems("abc", 30.0, 40.0, bare=True))
    assert clip_stems("abc", 5, None)[0] == "abc_000005"
