"""The YouTube-derived classification sets: Kinetics-400, Kinetics-Sounds, VGG-Sound and
AudioSet. Their releases are csvs of (YouTube id, start, end, class); the clips are
whatever a downloader fetched, so a clip is found by file stem anywhere under ``root``:

* ``<ytid>_<start:06d>_<end:06d>`` (Kinetics' and most downloaders' name),
* ``<ytid>_<start:06d>`` (VGG-Sound's), ``<ytid>_<start>_<end>``, ``<ytid>_<start ms>_<end ms>``,
* ``Y<ytid>`` or ``<ytid>`` (AudioSet only: one segment per video),

as a video, or as an audio-only file (packed with a black video). Clips listed but not
found (YouTube removes videos) are skipped and reported in ``skipped.json``. Sample ids
are canonical, ``<ytid>_<start:06d>[_<end:06d>]``, whatever the file was called.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Sequence

from avssl.data.shards import ShardSettings
from avssl.data.sources.common import (
    MediaIndex,
    PrepareReport,
    Sample,
    check_numbering,
    default_settings,
    first_existing,
    hashed_split,
    write_benchmark,
)

log = logging.getLogger(__name__)

# The 31 Kinetics-400 classes most papers call Kinetics-Sounds (the download scripts of
# several public repositories agree on this list). L3-Net's original 34 classes used
# pre-release Kinetics names and SeLaVi used 32: pass ``classes`` for another list.
KINETICS_SOUNDS_CLASSES = (
    "blowing nose", "blowing out candles", "bowling", "chopping wood", "dribbling basketball",
    "laughing", "mowing lawn", "playing accordion", "playing bagpipes", "playing bass guitar",
    "playing clarinet", "playing drums", "playing guitar", "playing harmonica", "playing keyboard",
    "playing organ", "playing piano", "playing saxophone", "playing trombone", "playing trumpet",
    "playing violin", "playing xylophone", "ripping paper", "shoveling snow", "shuffling cards",
    "singing", "stomping grapes", "tap dancing", "tapping guitar", "tapping pen", "tickling",
)
AUDIOSET_SUBSETS = {
    "balanced": ("balanced_train_segments.csv",),
    "unbalanced": ("unbalanced_train_segments.csv",),
    "full": ("balanced_train_segments.csv", "unbalanced_train_segments.csv"),
}


def _seconds(text: str) -> float:
    return float(text.strip())


def clip_stems(ytid: str, start: float, end: float | None, bare: bool = False) -> list[str]:
    """The file stems a downloaded clip may have, most specific first; with ``bare`` also
    ``Y<ytid>`` and ``<ytid>`` (only for sets with one segment per video: AudioSet)."""
    s = round(start)
    stems = []
    if end is not None:
        e = round(end)
        stems += [f"{ytid}_{s:06d}_{e:06d}", f"{ytid}_{s}_{e}", f"{ytid}_{round(start * 1000)}_{round(end * 1000)}"]
    stems += [f"{ytid}_{s:06d}", f"{ytid}_{s}"]
    if bare:
        stems += [f"Y{ytid}", ytid]
    return list(dict.fromkeys(stems))


def _clip(index: MediaIndex, *, ytid: str, start: float, end: float | None, split: str, label: int,
          listed_in: str, annotation: dict, bare: bool = False) -> Sample:
    s = round(start)
    video_id = f"{ytid}_{s:06d}" if end is None else f"{ytid}_{s:06d}_{round(end):06d}"
    return Sample(
        id=video_id, split=split, label=label, media=index.media(clip_stems(ytid, start, end, bare)),
        expected=f"{video_id}.*", listed_in=listed_in,
        annotation={"youtube_id": ytid, "start_seconds": start, "end_seconds": end, **annotation},
    )


# --------------------------------------------------------------------------- Kinetics

# Where the releases put the csvs: the ActivityNet crawler (annotations/), DeepMind's
# kinetics400.tar.gz (a kinetics400/ folder, validate.csv), the CVDF mirror (k400/annotations/).
KINETICS_TRAIN = ("annotations/train.csv", "train.csv", "kinetics400/train.csv", "k400/annotations/train.csv",
                  "kinetics-400_train.csv", "kinetics_400_train.csv")
KINETICS_VAL = ("annotations/val.csv", "val.csv", "annotations/validate.csv", "validate.csv",
                "kinetics400/validate.csv", "kinetics400/val.csv", "k400/annotations/val.csv",
                "kinetics-400_val.csv", "kinetics_400_val.csv")


def read_kinetics_csv(path: Path) -> list[dict[str, str]]:
    """Rows with ``label, youtube_id, time_start, time_end`` (other columns ignored)."""
    with Path(path).open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        need = ("label", "youtube_id", "time_start", "time_end")
        missing = [c for c in need if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {missing} (found {reader.fieldnames})")
        return [{k: (v or "").strip() for k, v in row.items() if k} for row in reader]


def _prepare_kinetics(
    benchmark: str, root: Path, out_dir: Path, classes: Sequence[str] | None, val_fraction: float, seed: int,
    settings: ShardSettings, workers: int,
) -> PrepareReport:
    root = Path(root)
    train_csv = first_existing(root, KINETICS_TRAIN, f"{benchmark} training csv")
    val_csv = first_existing(root, KINETICS_VAL, f"{benchmark} validation csv")
    tables = {"train": read_kinetics_csv(train_csv), "val": read_kinetics_csv(val_csv)}
    if classes is None:
        classes = sorted({row["label"] for row in tables["train"]})
    else:
        classes = list(classes)
        absent = sorted(set(classes) - {row["label"] for row in tables["train"]})
        if absent:
            raise ValueError(f"{benchmark}: classes not in {train_csv.name}: {absent}")
    number = {name: k for k, name in enumerate(classes)}
    index = MediaIndex(root, exclude=[out_dir])
    samples = []
    for official, rows in tables.items():
        listed_in = (train_csv if official == "train" else val_csv).relative_to(root).as_posix()
        for row in rows:
            if row["label"] not in number:
                continue
            ytid = row["youtube_id"]
            split = "test" if official == "val" else hashed_split(ytid, seed, val_fraction)
            samples.append(_clip(
                index, ytid=ytid, start=_seconds(row["time_start"]), end=_seconds(row["time_end"]),
                split=split, label=number[row["label"]], listed_in=listed_in,
                annotation={"benchmark": benchmark, "official_split": official, "class": row["label"]},
            ))
    options = {"val_fraction": val_fraction, "seed": seed}
    return write_benchmark(benchmark, samples, root, out_dir, classes, settings, workers, options)


def prepare_kinetics400(
    root: Path, out_dir: Path, *, val_fraction: float = 0.05, seed: int = 0,
    settings: ShardSettings | None = None, workers: int = 1,
) -> PrepareReport:
    """Kinetics-400: the ``train``/``val`` csvs (``label,youtube_id,time_start,time_end,…``)
    and the downloaded clips. ``test`` is the official validation set (the split papers
    report on); ``val`` is held out of the training csv. Clips without audio are packed
    with a silent track. Labels index the sorted class names."""
    return _prepare_kinetics("kinetics400", root, out_dir, None, val_fraction, seed,
                             default_settings(settings, "kinetics400"), workers)


def prepare_kinetics_sounds(
    root: Path, out_dir: Path, *, classes: Sequence[str] | None = None, val_fraction: float = 0.1,
    seed: int = 0, settings: ShardSettings | None = None, workers: int = 1,
) -> PrepareReport:
    """Kinetics-Sounds: Kinetics-400 restricted to ``classes`` (default
    :data:`KINETICS_SOUNDS_CLASSES`), labels indexing that list in its order."""
    chosen = list(classes) if classes is not None else list(KINETICS_SOUNDS_CLASSES)
    return _prepare_kinetics("kinetics-sounds", root, out_dir, chosen, val_fraction, seed,
                             default_settings(settings, "kinetics-sounds"), workers)


# --------------------------------------------------------------------------- VGG-Sound

VGGSOUND_CSV = ("vggsound.csv", "data/vggsound.csv", "metadata/vggsound.csv")


def read_vggsound_csv(path: Path) -> list[tuple[str, int, str, str]]:
    """(ytid, start seconds, label, train|test) of ``vggsound.csv`` (no header row;
    a header or ``#`` comment line is skipped)."""
    rows = []
    with Path(path).open(newline="", encoding="utf-8-sig") as handle:
        for line, fields in enumerate(csv.reader(handle, skipinitialspace=True), start=1):
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) < 4:
                raise ValueError(f"{path} line {line}: expected 'ytid,start,label,split', got {fields}")
            ytid, start, label, split = (f.strip() for f in fields[:4])
            if not start.lstrip("-").isdigit():
                if line == 1:
                    continue  # a header
                raise ValueError(f"{path} line {line}: start {start!r} is not whole seconds")
            rows.append((ytid, int(start), label, split))
    return rows


def prepare_vggsound(
    root: Path, out_dir: Path, *, val_fraction: float = 0.05, seed: int = 0,
    settings: ShardSettings | None = None, workers: int = 1,
) -> PrepareReport:
    """VGG-Sound: ``vggsound.csv`` (``ytid,start,label,train|test``) and the 10-s clips
    (``<ytid>_<start:06d>.mp4``). Splits ``train`` (minus the held-out ``val``) and
    ``test``; labels index the sorted class names."""
    root = Path(root)
    path = first_existing(root, VGGSOUND_CSV, "VGG-Sound csv")
    rows = read_vggsound_csv(path)
    classes = sorted({label for _, _, label, _ in rows})
    number = {name: k for k, name in enumerate(classes)}
    index = MediaIndex(root, exclude=[out_dir])
    samples = []
    for ytid, start, label, official in rows:
        if official not in ("train", "test"):
            raise ValueError(f"{path}: split {official!r} of {ytid} is neither train nor test")
        split = "test" if official == "test" else hashed_split(ytid, seed, val_fraction)
        samples.append(_clip(index, ytid=ytid, start=start, end=None, split=split, label=number[label],
                             listed_in=path.relative_to(root).as_posix(),
                             annotation={"benchmark": "vggsound", "official_split": official, "class": label}))
    options = {"val_fraction": val_fraction, "seed": seed}
    settings = default_settings(settings, "vggsound")
    return write_benchmark("vggsound", samples, root, out_dir, classes, settings, workers, options)


# --------------------------------------------------------------------------- AudioSet


def read_audioset_classes(path: Path) -> tuple[list[str], dict[str, int]]:
    """``class_labels_indices.csv`` (``index,mid,display_name``): names by index, index by mid."""
    with Path(path).open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"index", "mid", "display_name"} <= set(rows[0]):
        raise ValueError(f"{path}: expected the columns index,mid,display_name")
    check_numbering([int(r["index"]) for r in rows], 0, str(path), "the indices")
    by_index = {int(r["index"]): (r["mid"].strip(), r["display_name"].strip()) for r in rows}
    return [by_index[k][1] for k in range(len(by_index))], {by_index[k][0]: k for k in by_index}


def read_audioset_segments(path: Path) -> list[tuple[str, float, float, list[str]]]:
    """(ytid, start, end, label mids) of a segments csv: ``#`` header lines, then
    ``YTID, start_seconds, end_seconds, "mid1,mid2,…"``."""
    rows = []
    with Path(path).open(newline="", encoding="utf-8-sig") as handle:
        lines = (line for line in handle if line.strip() and not line.lstrip().startswith("#"))
        for fields in csv.reader(lines, skipinitialspace=True):
            if len(fields) < 4:
                raise ValueError(f"{path}: expected 'YTID, start, end, \"labels\"', got {fields}")
            mids = [m.strip() for m in fields[3].split(",") if m.strip()]
            rows.append((fields[0].strip(), float(fields[1]), float(fields[2]), mids))
    return rows


def prepare_audioset(
    root: Path, out_dir: Path, *, subset: str = "balanced", val_fraction: float = 0.05, seed: int = 0,
    settings: ShardSettings | None = None, workers: int = 1,
) -> PrepareReport:
    """AudioSet: ``class_labels_indices.csv``, ``eval_segments.csv`` and the training
    segments of ``subset`` (``balanced``, ``unbalanced`` or ``full`` = both). Splits
    ``train`` (minus ``val``) and ``test`` (= eval). Multi-label: the sample's ``label``
    is −1 and ``annotation.json`` holds ``labels``, the sorted class indices (and ``mids``)."""
    if subset not in AUDIOSET_SUBSETS:
        raise ValueError(f"AudioSet subset must be one of {sorted(AUDIOSET_SUBSETS)}, got {subset!r}")
    root = Path(root)

    def find(name: str) -> Path:
        return first_existing(root, (name, f"metadata/{name}"), f"AudioSet {name}")

    classes, number = read_audioset_classes(find("class_labels_indices.csv"))
    files = [(name, "train") for name in AUDIOSET_SUBSETS[subset]] + [("eval_segments.csv", "test")]
    index = MediaIndex(root, exclude=[out_dir])
    samples, unknown = [], set()
    for name, role in files:
        path = find(name)
        for ytid, start, end, mids in read_audioset_segments(path):
            labels = sorted({number[m] for m in mids if m in number})
            unknown.update(m for m in mids if m not in number)
            split = "test" if role == "test" else hashed_split(ytid, seed, val_fraction)
            samples.append(_clip(index, ytid=ytid, start=start, end=end, split=split, label=-1, bare=True,
                                 listed_in=path.relative_to(root).as_posix(),
                                 annotation={"benchmark": "audioset", "labels": labels,
                                             "mids": mids, "segments_file": name}))
    if unknown:
        log.warning("audioset: %d label ids not in class_labels_indices.csv were ignored: %s",
                    len(unknown), sorted(unknown)[:10])
    options = {"subset": subset, "val_fraction": val_fraction, "seed": seed}
    settings = default_settings(settings, "audioset")
    return write_benchmark("audioset", samples, root, out_dir, classes, settings, workers, options)
