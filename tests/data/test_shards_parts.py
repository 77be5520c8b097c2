"""Shard writing split into parts (`avssl shards --num-parts N --part I`, or a SLURM array
task) and `avssl shards merge`: the merged output must hold the samples, labels, splits,
dataset-wide indices and skipped files of a single run, and the merge must refuse, naming
the part, when a part is missing or failed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import avssl.data.shards as shards_module
from avssl.cli import main
from avssl.data.shards import Part, merge_parts, part_folder
from tests.conftest import shard_samples

SETTINGS = ["--short-side", "32", "--shard-size", "2", "--min-seconds", "0.5"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """9 labelled synthetic videos (no split column: the writer splits per class) and an
    undecodable file sorted first, so that a skip in part 0 shifts the indices of part 1."""
    root = tmp_path_factory.mktemp("parts")
    assert main(["synth", "--out", str(root / "synth"), "--num-videos", "9", "--seconds", "1", "--size", "32",
                 "--num-categories", "3"]) == 0
    labels = root / "synth" / "labels.csv"
    rows = [line.split(",")[:2] for line in labels.read_text().splitlines()]
    labels.write_text("\n".join(",".join(row) for row in rows) + "\n")  # drop the split column
    (root / "synth" / "videos" / "000_broken.mp4").write_bytes(b"not a video")
    return root / "synth"


def _shards(videos: Path, out: Path, *extra: str) -> list[str]:
    return ["shards", "--videos", str(videos / "videos"), "--labels", str(videos / "labels.csv"),
            "--out", str(out), *SETTINGS, *extra]


@pytest.fixture(scope="module")
def single(videos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "shards"
    assert main(_shards(videos, out)) == 0
    return out


def test_two_parts_and_merge_give_the_output_of_one_run(videos, single, tmp_path, monkeypatch, capsys):
    out = tmp_path / "shards"
    assert main(_shards(videos, out, "--num-parts", "2", "--part", "0")) == 0
    # part 1 as the second task of a SLURM array --array=4-5 (the part counts from the first task)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "4")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    assert main(_shards(videos, out)) == 0
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["p000", "p001"]
    assert not (out / "manifest.json").exists()
    capsys.readouterr()

    assert main(["shards", "merge", "--out", str(out), "--workers", "2"]) == 0
    assert "merged 2 parts" in capsys.readouterr().out
    assert not (out / "parts").exists()

    merged, alone = json.loads((out / "manifest.json").read_text()), json.loads((single / "manifest.json").read_text())
    for key in ("format", "settings", "split_rule", "classes", "num_samples", "hours", "skipped"):
        assert merged[key] == alone[key], key
    assert merged["skipped"] == [{"file": "000_broken.mp4", "reason": merged["skipped"][0]["reason"]}]
    assert {s: (r["num_samples"], r["hours"]) for s, r in merged["splits"].items()} == \
        {s: (r["num_samples"], r["hours"]) for s, r in alone["splits"].items()}
    assert json.loads((out / "skipped.json").read_text()) == alone["skipped"]
    # every sample byte for byte, its json (index, split, label) included
    assert shard_samples(out) == shard_samples(single)
    for split, samples in shard_samples(out).items():
        indices = sorted(json.loads(entries["json"])["index"] for entries in samples.values())
        assert indices == list(range(len(samples))), split
    # shard names of the parts never collide: the part is in the name
    names = [entry["file"] for record in merged["splits"].values() for entry in record["shards"]]
    assert any("-p001-" in name for name in names) and len(set(names)) == len(names)
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(names)


def test_merge_refuses_a_missing_part_naming_it(videos, tmp_path, capsys):
    out = tmp_path / "shards"
    assert main(_shards(videos, out, "--num-parts", "3", "--part", "1")) == 0
    capsys.readouterr()
    assert main(["shards", "merge", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    parts = out / "parts"
    assert error == (f"avssl shards merge: cannot merge {parts}: "
                     f"part 0 of 3 is missing (no part manifest {parts / 'p000' / 'manifest.json'}); "
                     f"part 2 of 3 is missing (no part manifest {parts / 'p002' / 'manifest.json'})\n")
    assert not (out / "manifest.json").exists()


def test_merge_reports_a_failed_part_and_a_rerun_clears_it(videos, tmp_path, monkeypatch, capsys):
    out = tmp_path / "shards"
    assert main(_shards(videos, out, "--num-parts", "2", "--part", "0")) == 0

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(shards_module, "_pack", full_disk)
        with pytest.raises(OSError):
            main(_shards(videos, out, "--num-parts", "2", "--part", "1"))
    failed = part_folder(out, Part(1, 2)) / "failed.json"
    assert json.loads(failed.read_text()) == {"part": 1, "num_parts": 2,
                                              "error": "OSError: [Errno 28] No space left on device"}
    capsys.readouterr()
    assert main(["shards", "merge", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"avssl shards merge: cannot merge {out / 'parts'}: part 1 of 2 failed "
                                       f"(OSError: [Errno 28] No space left on device)\n")
    # the same part run again succeeds, its failure record goes, and the merge goes through
    assert main(_shards(videos, out, "--num-parts", "2", "--part", "1")) == 0
    assert not failed.exists()
    assert merge_parts(out).num_packed == 9


def test_merge_refuses_parts_of_other_inputs(videos, tmp_path, capsys):
    out = tmp_path / "shards"
    assert main(_shards(videos, out, "--num-parts", "2", "--part", "0")) == 0
    assert main(_shards(videos, out, "--num-parts", "2", "--part", "1", "--seed", "7")) == 0
    capsys.readouterr()
    assert main(["shards", "merge", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"avssl shards merge: cannot merge {out / 'parts'}: part 1 of 2 was written with "
                            f"other settings than part 0; part 1 of 2 was written with other split rule than part 0")
    assert error.count("\n") == 1


def test_merge_refuses_parts_of_runs_split_differently(videos, tmp_path, capsys):
    out = tmp_path / "shards"
    assert main(_shards(videos, out, "--num-parts", "2", "--part", "0")) == 0
    assert main(_shards(videos, out, "--num-parts", "3", "--part", "1")) == 0
    capsys.readouterr()
    assert main(["shards", "merge", "--out", str(out)]) == 2
    parts = out / "parts"
    assert capsys.readouterr().err == (
        f"avssl shards merge: the parts under {parts} come from runs split differently: 2 parts (p000), "
        f"3 parts (p001); give --num-parts or clear {parts} and rerun the parts\n")
    # told how many to expect, the merge names what is missing for that split
    assert main(["shards", "merge", "--out", str(out), "--num-parts", "2"]) == 2
    assert capsys.readouterr().err == (
        f"avssl shards merge: cannot merge {parts}: part 1 of 2: {parts / 'p001' / 'manifest.json'} is that of "
        f"part 1 of 3\n")


def test_merge_without_parts_says_how_to_write_them(tmp_path, capsys):
    assert main(["shards", "merge", "--out", str(tmp_path / "shards")]) == 2
    assert capsys.readouterr().err == (
        f"avssl shards merge: no parts to merge: {tmp_path / 'shards' / 'parts'} does not exist "
        f"(write them with avssl shards --part I --num-parts N --out {tmp_path / 'shards'})\n")


def test_parts_are_contiguous_slices_that_cover_the_input():
    assert [Part(i, 3).bounds(10) for i in range(3)] == [(0, 3), (3, 6), (6, 10)]
    assert [Part(i, 4).bounds(2) for i in range(4)] == [(0, 0), (0, 1), (1, 1), (1, 2)]
    assert (Part(7, 8).name, Part(7, 1000).name, Part(12345, 20000).name) == ("p007", "p007", "p12345")
    with pytest.raises(ValueError, match=r"^part must be in 0\.\.1 for 2 parts, got 2$"):
        Part(2, 2)


def test_part_needs_its_count(videos, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    with pytest.raises(SystemExit):
        main(_shards(videos, tmp_path / "shards", "--part", "1"))
    assert capsys.readouterr().err.endswith(
        "avssl shards: error: --num-parts is needed too (or run inside a SLURM array job)\n")


# --------------------------------------------------------------------------- the writer's speed


def _keyframes(mp4: bytes) -> list[int]:
    """Positions (in presentation order) of the keyframes of an mp4's video."""
    import io

    import av

    with av.open(io.BytesIO(mp4)) as container:
        packets = [p for p in container.demux(container.streams.video[0]) if p.size]
    return [i for i, p in enumerate(sorted(packets, key=lambda p: p.pts)) if p.is_keyframe]


def test_frames_reach_the_encoder_without_an_rgb_round_trip(tmp_path, monkeypatch, flash_clip):
    from avssl.data.encode import MediaWriter
    from avssl.data.shards import ShardSettings, reencode_video

    (tmp_path / "clip.mp4").write_bytes(flash_clip)

    def rgb_round_trip(self, rgb, time_seconds=None):
        raise AssertionError("frame went through RGB")

    monkeypatch.setattr(MediaWriter, "add_frame", rgb_round_trip)
    encoded = reencode_video(tmp_path / "clip.mp4", ShardSettings(short_side=32, gop_seconds=0.2))
    assert (encoded.meta["num_frames"], encoded.meta["width"], encoded.meta["height"]) == (100, 42, 32)
    assert _keyframes(encoded.mp4) == list(range(0, 100, 5))


def test_add_video_frame_ignores_the_frame_type_the_decoder_gave(flash_clip):
    """Decoded frames carry their source's types (a keyframe every 25 frames here); passed
    on, they would force x264's frame types: the output keeps its own keyframe interval."""
    import io

    import av

    from avssl.data.encode import MediaWriter

    buffer = io.BytesIO()
    writer = MediaWriter(buffer, width=64, height=48, fps=25, audio_codec=None, gop_frames=10)
    with av.open(io.BytesIO(flash_clip)) as container:
        frames = list(container.decode(video=0))
    assert [i for i, f in enumerate(frames) if f.key_frame] == [0, 25, 50, 75]
    for frame in frames:
        writer.add_video_frame(frame)
    writer.close()
    assert _keyframes(buffer.getvalue()) == list(range(0, 100, 10))
