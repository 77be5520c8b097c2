"""MUSIC (solo/duet lists → source ids) and AVE (events → per-second labels)."""
from __future__ import annotations

import json

import pytest
from prepare_fixtures import SMALL, SMALL_FLAGS, by_split, read_out, skipped_files, video

from avssl.cli import main
from avssl.data.shards import ShardReport
from avssl.data.sources.ave import AVE_CATEGORIES, event_segments, prepare_ave
from avssl.data.sources.common import MAX_PRINTED_MISSING, PrepareError, PrepareReport, hashed_split
from avssl.data.sources.music import prepare_music

SOLOS = {"flute": ["jW_AuF6dQYY", "3wPouBFa9U0"], "acoustic_guitar": ["IPsA3sz934M"],
         "accordion": ["iB17xqmFw3A", "QaOUijKCqZU"]}
DUETS = {"flute violin": ["8DHG_hVSw1o"], "saxophone acoustic_guitar": ["ywH4K8mQ-1s"]}


def test_music_solos_duets_and_source_ids(tmp_path):
    root = tmp_path / "MUSIC"
    root.mkdir()
    (root / "MUSIC_solo_videos.json").write_text(json.dumps({"version": 1.0, "videos": SOLOS}, indent=4))
    (root / "MUSIC_duet_videos.json").write_text(json.dumps({"version": 1.0, "videos": DUETS}, indent=4))
    for name, ytids in SOLOS.items():
        for ytid in ytids:
            if ytid != "QaOUijKCqZU":  # listed, not on disk
                video(root / "solo" / name / f"{ytid}.mp4")
    video(root / "duet" / "flute violin" / "8DHG_hVSw1o.mp4")
    video(root / "duet" / "saxophone acoustic_guitar" / "ywH4K8mQ-1s.mp4")
    out = tmp_path / "out"
    assert main(["prepare", "music", "--root", str(root), "--out", str(out), "--val-fraction", "0.3",
                 "--test-fraction", "0.3", "--seed", "5", *SMALL_FLAGS]) == 0

    manifest, samples = read_out(out)
    # solo instruments sorted, then duet-only ones
    assert manifest["classes"] == ["accordion", "acoustic_guitar", "flute", "saxophone", "violin"]
    splits = by_split(samples)
    assert splits["duet"] == {"8DHG_hVSw1o", "ywH4K8mQ-1s"}
    for ytid in ("jW_AuF6dQYY", "3wPouBFa9U0", "IPsA3sz934M", "iB17xqmFw3A"):
        assert samples[ytid]["json"]["split"] == hashed_split(ytid, 5, 0.3, 0.3)
    flute = samples["jW_AuF6dQYY"]
    assert flute["json"]["label"] == 2
    assert {k: flute["annotation.json"][k] for k in ("kind", "instruments", "labels")} == {
        "kind": "solo", "instruments": ["flute"], "labels": [2]}
    duet = samples["ywH4K8mQ-1s"]
    assert duet["json"]["label"] == -1
    assert duet["annotation.json"]["instruments"] == ["saxophone", "acoustic_guitar"]
    assert duet["annotation.json"]["labels"] == [3, 1]
    assert skipped_files(manifest) == {
        "QaOUijKCqZU.*": f"missing: listed in MUSIC_solo_videos.json, not found under {root}"}
    with pytest.raises(PrepareError, match="MUSIC21_solo_videos.json"):
        prepare_music(root, tmp_path / "x", subset="music21")


AVE_HEADER = "Category&VideoID&Quality&StartTime&EndTime"
AVE_ROWS = [
    "Church bell&RUhOCu3LNXM&good&0&10",
    "Bark&-0FHUc78Gqo&good&2&8",
    "Bark&-0FHUc78Gqo&good&9&10",  # a second event in the same video
    "Mandolin&04O4Ye9ItKs&good&4&7",
    "Goat&1G-2ylVX1ho&good&0&3",  # listed, not on disk
]


def test_ave_splits_and_per_second_events(tmp_path):
    root = tmp_path / "AVE_Dataset"
    root.mkdir()
    (root / "Annotations.txt").write_text("\n".join([AVE_HEADER, *AVE_ROWS]) + "\n")
    (root / "trainSet.txt").write_text("\n".join([AVE_HEADER, AVE_ROWS[0], AVE_ROWS[1]]) + "\n")
    (root / "valSet.txt").write_text(AVE_ROWS[3] + "\n")  # no header: both forms are read
    (root / "testSet.txt").write_text("\n".join([AVE_HEADER, AVE_ROWS[4]]) + "\n")
    for ytid in ("RUhOCu3LNXM", "-0FHUc78Gqo", "04O4Ye9ItKs"):
        video(root / "AVE" / f"{ytid}.mp4", seconds=1.0)
    report = prepare_ave(tmp_path, tmp_path / "out", settings=SMALL)  # the folder above works too

    manifest, samples = read_out(tmp_path / "out")
    assert manifest["classes"] == list(AVE_CATEGORIES) and len(AVE_CATEGORIES) == 28
    assert by_split(samples) == {"train": {"RUhOCu3LNXM", "-0FHUc78Gqo"}, "val": {"04O4Ye9ItKs"}}
    bark = samples["-0FHUc78Gqo"]
    assert bark["json"]["label"] == AVE_CATEGORIES.index("Bark") == 2
    events = bark["events.json"]
    assert events["background"] == 28 and events["segment_seconds"] == 1.0
    assert events["segments"] == [28, 28, 2, 2, 2, 2, 2, 2, 28, 2]
    assert [(e["start"], e["end"]) for e in events["events"]] == [(2, 8), (9, 10)]
    assert samples["RUhOCu3LNXM"]["events.json"]["segments"] == [0] * 10
    assert samples["04O4Ye9ItKs"]["events.json"]["segments"] == [28] * 4 + [27] * 3 + [28] * 3
    assert [m["file"] for m in report.missing] == ["AVE/1G-2ylVX1ho.mp4"]
    assert report.missing[0]["reason"].startswith("missing: listed in testSet.txt")


def test_event_segments():
    assert event_segments([(1, -3, 2), (4, 8, 30)], background=9) == [1, 1, 9, 9, 9, 9, 9, 9, 4, 4]


def _ave_lists(root, annotations: list[str], test_list: bool = True):
    root.mkdir(exist_ok=True)
    (root / "Annotations.txt").write_text("\n".join([AVE_HEADER, *annotations]) + "\n")
    for name in ("trainSet.txt", "valSet.txt", "testSet.txt")[: 3 if test_list else 2]:
        (root / name).write_text(annotations[0] + "\n")


def test_ave_refuses_a_category_not_among_its_28(tmp_path):
    """Once, an unknown name renumbered every class by first appearance (background 2, not 28)."""
    root = tmp_path / "ave"
    _ave_lists(root, ["Kazoo&abc&good&0&5", "Bark&def&good&1&2", "Church Bell&ghi&good&1&2"])
    with pytest.raises(ValueError) as error:
        prepare_ave(root, tmp_path / "out", settings=SMALL)
    assert str(error.value) == (
        f"{root / 'Annotations.txt'}: categories 'Church Bell' (did you mean 'Church bell'?), 'Kazoo' "
        "not among AVE's 28: " + "; ".join(AVE_CATEGORIES))
    assert not (tmp_path / "out").exists()
    (root / "testSet.txt").unlink()
    _ave_lists(root, ["Goat&abc&good&0&5"], test_list=False)
    with pytest.raises(PrepareError, match="testSet.txt"):
        prepare_ave(root, tmp_path / "out", settings=SMALL)


def test_nothing_found_names_the_root_not_the_staging_folder(tmp_path, capsys):
    root = tmp_path / "ave"
    _ave_lists(root, ["Goat&abc&good&0&5", "Bark&def&good&1&2"])
    (root / "testSet.txt").write_text("Bark&def&good&1&2\n")
    out = tmp_path / "out"
    assert main(["prepare", "ave", "--root", str(root), "--out", str(out), *SMALL_FLAGS]) == 1
    printed = capsys.readouterr().out
    assert ".staging-" not in printed
    assert printed.splitlines()[-1] == (
        f"ave: nothing packed: 0 of the 2 listed clips were found under {root}; "
        f"the reasons are in {out / 'skipped.json'}")
    assert sorted(skipped_files(read_out(out)[0])) == ["AVE/abc.mp4", "AVE/def.mp4"]


def test_prepare_summary_names_the_first_missing_clips_then_counts_the_rest(tmp_path):
    missing = [{"file": f"AVE/{i:02d}.mp4", "reason": "missing: …"} for i in range(MAX_PRINTED_MISSING + 2)]
    nothing = ShardReport(num_packed=0, skipped=missing, splits={}, hours=0.0)
    report = PrepareReport("ave", tmp_path, None, len(missing) + 1, missing, nothing, tmp_path / "AVE", "")
    assert report.summary().splitlines() == [
        f"ave: {MAX_PRINTED_MISSING + 3} clips listed, 1 found on disk, {MAX_PRINTED_MISSING + 2} missing "
        "(listed in skipped.json)",
        *(f"  missing AVE/{i:02d}.mp4" for i in range(MAX_PRINTED_MISSING)),
        f"  … and 2 more in {tmp_path / 'skipped.json'}",
        f"ave: nothing packed: 1 of the {MAX_PRINTED_MISSING + 3} listed clips were found under {tmp_path / 'AVE'}; "
        f"the reasons are in {tmp_path / 'skipped.json'}",
    ]
    packed = ShardReport(num_packed=1, skipped=[], splits={"train": 1}, hours=0.0)
    report = PrepareReport("ave", tmp_path, None, 1, [], packed, tmp_path / "AVE", "packed 1 videos …")
    assert report.summary() == (
        "packed 1 videos …\nave: 1 clips listed, 1 found on disk, 0 missing (listed in skipped.json)")
