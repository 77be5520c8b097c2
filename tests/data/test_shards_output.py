"""The shard writer's output folder and inputs: built in a staging folder and replaced only
when complete (errors, a full disk, SIGKILL), never written through a symlink, every input
entry packed or skipped with a reason; clear errors for bad paths and labels files; the
default class-stratified train/val/test split of a labels file without a split column."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avssl.cli import main
from avssl.data import shards
from avssl.data.shards import ShardSettings, plan_jobs, read_labels, write_shards
from tests.conftest import ROOT
from tests.data.test_shards import make_clip, read_samples

SMALL = {"short_side": 32, "min_seconds": 0.5, "audio_format": "aac"}
SMALL_FLAGS = ["--short-side", "32", "--min-seconds", "0.5", "--audio-format", "aac"]


def snapshot(folder: Path) -> dict[str, bytes]:
    """{name: bytes} of the regular files directly in ``folder`` (the staging folders aside)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.is_symlink()}


def staging_folders(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob(".avssl-shards-*"))


def clips(folder: Path, names: list[str], seconds: float = 0.6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        make_clip(folder / name, seconds=seconds, fps=10)
    return folder


@pytest.fixture
def previous_output(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """A folder of three clips packed one per shard, and the bytes of that output."""
    videos = clips(tmp_path / "videos", ["c0.mp4", "c1.mp4", "c2.mp4"])
    out = tmp_path / "out"
    write_shards(videos, out, settings=ShardSettings(shard_size=1, **SMALL))
    before = snapshot(out)
    assert sorted(before) == ["manifest.json", "skipped.json", "train-000000.tar", "train-000001.tar",
                              "train-000002.tar"]
    return videos, out, before


# --------------------------------------------------------------------------- atomic output


def test_a_full_disk_mid_run_leaves_the_previous_output_byte_identical(previous_output, monkeypatch):
    videos, out, before = previous_output
    make_clip(videos / "c3.mp4", seconds=0.6, fps=10)  # the new output would differ
    real_write, calls = shards._ShardSink.write, []

    def write_then_fill_the_disk(self, split, sample):
        calls.append(sample["__key__"])
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, split, sample)

    monkeypatch.setattr(shards._ShardSink, "write", write_then_fill_the_disk)
    with pytest.raises(OSError, match="No space left on device"):
        write_shards(videos, out, settings=ShardSettings(shard_size=1, **SMALL))
    assert calls == ["c0", "c1"]
    assert snapshot(out) == before
    assert staging_folders(out) == []


@pytest.mark.slow
def test_sigkill_mid_run_keeps_the_previous_output_and_the_next_start_removes_the_staging(previous_output):
    videos, out, before = previous_output
    for i in range(3, 6):
        make_clip(videos / f"c{i}.mp4", seconds=0.6, fps=10)
    command = [sys.executable, "-m", "avssl.cli", "shards", "--videos", str(videos), "--out", str(out),
               "--shard-size", "1", *SMALL_FLAGS]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(command, env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = False
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if list(out.glob(".avssl-shards-*/train-000001.tar")):  # two videos packed, four to go
            os.killpg(process.pid, signal.SIGKILL)  # the writer and its spawned workers
            killed = True
            break
        time.sleep(0.005)
    process.wait()
    assert killed, "the run ended before any shard appeared in a staging folder"
    assert snapshot(out) == before
    assert len(staging_folders(out)) == 1

    report = write_shards(videos, out, settings=ShardSettings(shard_size=1, **SMALL))
    assert report.num_packed == 6
    assert staging_folders(out) == []
    assert sorted(p.name for p in out.glob("*.tar")) == [f"train-{i:06d}.tar" for i in range(6)]


def test_an_interrupted_move_is_finished_by_the_next_start(previous_output, monkeypatch):
    videos, out, _ = previous_output
    (videos / "c2.mp4").unlink()
    real_replace = os.replace

    def interrupted_at_the_manifest(source, target):
        if Path(target) == out / "manifest.json":
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(shards.os, "replace", interrupted_at_the_manifest)
    with pytest.raises(KeyboardInterrupt):
        write_shards(videos, out, settings=ShardSettings(shard_size=1, **SMALL))
    monkeypatch.setattr(shards.os, "replace", real_replace)
    [staging] = staging_folders(out)
    new_manifest = (out / staging / "manifest.json").read_bytes()

    shards._clear_stale_staging(out)
    assert staging_folders(out) == []
    assert (out / "manifest.json").read_bytes() == new_manifest
    assert sorted(p.name for p in out.glob("*.tar")) == ["train-000000.tar", "train-000001.tar"]
    assert json.loads(new_manifest)["num_samples"] == 2


def test_a_second_writer_into_the_same_folder_is_refused(previous_output):
    videos, out, before = previous_output
    descriptor = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(shards.OutputBusyError) as error:
            write_shards(videos, out, settings=ShardSettings(**SMALL))
    finally:
        os.close(descriptor)
    assert str(error.value) == f"output folder {out} is being written by another avssl shards"
    assert snapshot(out) == before


# --------------------------------------------------------------------------- symlinks


def test_a_symlink_at_an_output_path_is_replaced_not_written_through(tmp_path):
    videos = clips(tmp_path / "videos", ["a.mp4"])
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "precious.tar").write_bytes(b"keep me")
    (outside / "precious.json").write_text('{"keep": "me"}')
    out = tmp_path / "out"
    out.mkdir()
    (out / "train-000000.tar").symlink_to(outside / "precious.tar")
    (out / "skipped.json").symlink_to(outside / "precious.json")

    write_shards(videos, out, settings=ShardSettings(**SMALL))

    assert (outside / "precious.tar").read_bytes() == b"keep me"
    assert (outside / "precious.json").read_text() == '{"keep": "me"}'
    assert not (out / "train-000000.tar").is_symlink() and not (out / "skipped.json").is_symlink()
    assert list(read_samples(out / "train-000000.tar")) == ["a"]
    assert json.loads((out / "skipped.json").read_text()) == []


def test_broken_links_and_loops_among_the_inputs_are_listed_as_skipped(tmp_path):
    videos = clips(tmp_path / "videos", ["good.mp4"])
    clips(tmp_path / "outside", ["real.mp4"])
    (videos / "linked.mp4").symlink_to(tmp_path / "outside" / "real.mp4")  # followed and packed
    (videos / "dangling.mp4").symlink_to("missing.mp4")
    (videos / "loop1.mp4").symlink_to("loop2.mp4")
    (videos / "loop2.mp4").symlink_to("loop1.mp4")
    (videos / "sub").mkdir()
    (videos / "sub" / "up").symlink_to("..")  # a folder loop

    report = write_shards(videos, tmp_path / "out", settings=ShardSettings(**SMALL))

    assert report.num_packed == 2
    assert sorted(read_samples(tmp_path / "out" / "train-000000.tar")) == ["good", "linked"]
    expected = [
        {"file": "dangling.mp4", "reason": "broken symlink: its target missing.mp4 does not exist"},
        {"file": "loop1.mp4", "reason": "symlink loop: loop1.mp4 -> loop2.mp4 never reaches a file"},
        {"file": "loop2.mp4", "reason": "symlink loop: loop2.mp4 -> loop1.mp4 never reaches a file"},
        {"file": "sub/up", "reason": "symlink loop: points to the folder ., searched already"},
    ]
    assert json.loads((tmp_path / "out" / "skipped.json").read_text()) == expected
    assert report.skipped == expected


# --------------------------------------------------------------------------- clear errors


def test_a_labels_row_with_more_fields_than_the_header_names_file_and_line(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\na,dog\nb,cat,extra\n")
    with pytest.raises(shards.LabelsError) as error:
        read_labels(labels)
    assert str(error.value) == (
        f"{labels} line 3: 3 fields, but the header has 2 (id,label); expected a header id,label[,split] "
        "then one row per video (quote a value that holds a comma)"
    )
    assert isinstance(error.value, ValueError)
    with pytest.raises(shards.LabelsError, match="line 3: 3 fields"):  # before the output folder is touched
        write_shards(tmp_path, tmp_path / "out", labels_csv=labels)
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError) as error:
        write_shards(tmp_path, tmp_path / "out", labels_csv=tmp_path / "labels.tsv")
    assert str(error.value) == f"labels file {tmp_path / 'labels.tsv'} does not exist"


def test_videos_given_a_file_and_an_unwritable_out_are_one_line_errors(tmp_path):
    videos = clips(tmp_path / "videos", ["a.mp4"])
    with pytest.raises(NotADirectoryError) as error:
        write_shards(videos / "a.mp4", tmp_path / "out")
    assert str(error.value) == f"videos folder {videos / 'a.mp4'} is a file; give the folder that holds the videos"
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    with pytest.raises(NotADirectoryError) as error:
        write_shards(videos, blocker / "shards")
    assert str(error.value) == f"output folder {blocker / 'shards'} cannot be made: {blocker} is a file"
    with pytest.raises(NotADirectoryError) as error:
        write_shards(videos, blocker)
    assert str(error.value) == f"output folder {blocker} is a file"



def test_an_output_folder_without_write_permission_is_a_one_line_error(tmp_path, monkeypatch):
    """Tests run as root, which writes anywhere: the refusal is simulated where the writer
    first writes into the folder (its staging folder)."""
    videos = clips(tmp_path / "videos", ["a.mp4"])

    def refused(**_):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(shards.tempfile, "mkdtemp", refused)
    with pytest.raises(PermissionError) as error:
        write_shards(videos, tmp_path / "out", settings=ShardSettings(**SMALL))
    assert str(error.value) == f"output folder {tmp_path / 'out'}: permission denied (cannot write there)"


# --------------------------------------------------------------------------- default splits


def test_stratified_split_sizes_per_class_and_determinism(tmp_path):
    sizes = {"one": 1, "two": 2, "three": 3, "seven": 7, "twenty": 20}
    videos = tmp_path / "videos"
    videos.mkdir()
    rows = ["id,label"]
    for name, size in sizes.items():
        for i in range(size):
            (videos / f"{name}{i:02d}.mp4").write_bytes(b"")  # planning does not decode
            rows.append(f"{name}{i:02d},{name}")
    (videos / "nolabel.mp4").write_bytes(b"")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    labels = read_labels(tmp_path / "labels.csv")

    jobs, _, _ = plan_jobs(videos, labels, ShardSettings())
    counts = {}
    for job in jobs:
        name = job.label_name or "none"
        counts.setdefault(name, {"train": 0, "val": 0, "test": 0})[job.split] += 1
    assert counts == {
        "one": {"train": 1, "val": 0, "test": 0},
        "two": {"train": 1, "val": 0, "test": 1},
        "three": {"train": 1, "val": 1, "test": 1},
        "seven": {"train": 5, "val": 1, "test": 1},
        "twenty": {"train": 16, "val": 2, "test": 2},
        "none": {"train": 1, "val": 0, "test": 0},
    }
    assert [j.split for j in jobs] == [j.split for j in plan_jobs(videos, labels, ShardSettings())[0]]
    reseeded = [j.split for j in plan_jobs(videos, labels, ShardSettings(seed=1))[0]]
    assert reseeded != [j.split for j in jobs]
    # explicit fractions win; a class split on its own
    split = shards.stratified_split([(f"v{i}", 0) for i in range(10)], 0, val_fraction=0.3, test_fraction=0.2)
    assert sorted(split.values()).count("val") == 3 and list(split.values()).count("test") == 2


def test_labels_without_split_column_give_train_val_test_with_every_class_and_the_same_result_again(tmp_path):
    names = [f"{animal}{i}.mp4" for animal in ("cat", "dog") for i in range(3)]
    videos = clips(tmp_path / "videos", names)
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n" + "".join(f"{n[:-4]},{n[:3]}\n" for n in names))

    assert main(["shards", "--videos", str(videos), "--labels", str(labels), "--out", str(tmp_path / "one"),
                 *SMALL_FLAGS]) == 0
    write_shards(videos, tmp_path / "two", labels_csv=labels, settings=ShardSettings(**SMALL))

    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert sorted(manifest["splits"]) == ["test", "train", "val"]
    assert manifest["classes"] == ["cat", "dog"]
    assert (manifest["settings"]["val_fraction"], manifest["settings"]["test_fraction"]) == (0.1, 0.1)
    assert manifest["split_rule"]["method"] == "stratified"
    assert (manifest["split_rule"]["val_fraction"], manifest["split_rule"]["test_fraction"]) == (0.1, 0.1)
    for split, entry in manifest["splits"].items():
        labels_in_split = sorted(
            json.loads(sample["json"])["label_name"]
            for shard in entry["shards"]
            for sample in read_samples(tmp_path / "one" / shard["file"]).values()
        )
        assert labels_in_split == ["cat", "dog"], split
    assert snapshot(tmp_path / "one") == snapshot(tmp_path / "two")


def test_without_labels_the_default_is_train_only_and_fractions_are_a_hash(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(60):
        (videos / f"v{i:02d}.mp4").write_bytes(b"")
    assert {j.split for j in plan_jobs(videos, None, ShardSettings())[0]} == {"train"}
    jobs = plan_jobs(videos, None, ShardSettings(val_fraction=0.2, test_fraction=0.2))[0]
    assert [j.split for j in jobs] == [shards.hash_split(j.id, 0, 0.2, 0.2) for j in jobs]
    assert {j.split for j in jobs} == {"train", "val", "test"}
    with pytest.raises(ValueError, match=r"val_fraction \+ test_fraction must be < 1, got 0.5 \+ 0.5"):
        ShardSettings(val_fraction=0.5, test_fraction=0.5)
