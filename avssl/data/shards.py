"""The shard writer behind ``avssl shards``: a folder of videos → WebDataset tar shards.

One sample per video (docs/data-format.md has the full layout)::

    <key>.mp4      the video re-encoded once: constant frame rate, short side S, H.264 with a
                   keyframe every ``gop_seconds``, mono AAC at ``sample_rate``; both streams
                   trimmed to the time range they share, starting at 0
    <key>.json     metadata (index, id, split, duration, fps, frame count, sizes, label, …)
    <key>.<rest>   sidecar files ``<stem>.<rest>`` found next to the video, as raw bytes

Why re-encode: docs/decoding.md measured ~4x faster training reads for 128p + 1-s GOP +
16 kHz mono than for web video as it comes. Every video is decoded and encoded as a
stream, frame by frame, so a long video never sits in memory as frames; only its
(small) re-encoded bytes do. A bad file is skipped with a reason, never fatal.

Heavy imports (PyAV, webdataset, tqdm) happen inside the functions: the CLI imports this
module to build its parser.
"""
from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, NamedTuple

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".flv", ".ts")
RESERVED_ENTRIES = ("mp4", "json", "pcm")  # a sidecar named <stem>.json is stored as sidecar.json
AUDIO_FORMATS = ("pcm", "aac")
AUDIO_BITRATE = 48_000  # mono AAC at 16 kHz; the recommended format of docs/decoding.md
TIMESTAMP_SLACK = Fraction(2, 1000)  # seconds
SHARD_NAME = re.compile(r"^[A-Za-z0-9_-]+-\d{6}\.tar$")
SPLIT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
STAGING_PREFIX = ".avssl-shards-"  # the writer's own staging folders inside --out (removed when stale)
COMMIT_FILE = "commit.json"  # in a staging folder: its output is complete and being moved into place
DEFAULT_HELD_OUT = (0.1, 0.1)  # (val, test) fractions when a labels file gives no split at all
PARTS_DIR = "parts"  # in --out: one folder per part of a split-up run (``avssl shards --part``)
PART_NAME = re.compile(r"^p(\d+)$")
FAILED_FILE = "failed.json"  # in a part's folder: its last run raised (the error, one line)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardSettings:
    """How videos are re-encoded and packed; saved in ``manifest.json``."""

    shard_size: int = 256  # samples per shard
    short_side: int = 128  # pixels; always resized (up or down) so all samples share it
    fps: float = 25.0  # constant output frame rate
    sample_rate: int = 16000  # output audio rate (mono)
    gop_seconds: float = 1.0  # keyframe interval
    # Fractions of the videos without a split (no labels.csv row or no split value) held
    # out as "val" and "test". None: 0.1 each when a labels file gives no split at all,
    # else 0 (resolve_held_out); the manifest records the values used.
    val_fraction: float | None = None
    test_fraction: float | None = None
    missing_audio: str = "skip"  # or "silence": pack video-only files with a silent track
    # "pcm": audio as raw int16 mono beside a video-only mp4 (the sample's ``pcm`` entry);
    # ~2× the bytes of AAC, no audio decode or resampling when reading (docs/decoding.md).
    # "aac": mono AAC inside the mp4.
    audio_format: str = "pcm"
    min_seconds: float = 1.0  # skip videos whose audio-video overlap is shorter
    seed: int = 0  # seeds the split of the videos without one

    def __post_init__(self) -> None:
        problems = []
        if self.shard_size < 1:
            problems.append(f"shard_size must be >= 1, got {self.shard_size}")
        if self.short_side < 16 or self.short_side % 2:
            problems.append(f"short_side must be an even number >= 16, got {self.short_side}")
        if not self.fps > 0:
            problems.append(f"fps must be > 0, got {self.fps}")
        if not 8000 <= self.sample_rate <= 96000:
            problems.append(f"sample_rate must be within 8000..96000 Hz (AAC), got {self.sample_rate}")
        if not self.gop_seconds > 0:
            problems.append(f"gop_seconds must be > 0, got {self.gop_seconds}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                problems.append(f"{name} must be in [0, 1), got {value}")
        if (self.val_fraction or 0.0) + (self.test_fraction or 0.0) >= 1.0:
            problems.append(
                f"val_fraction + test_fraction must be < 1, got {self.val_fraction} + {self.test_fraction}"
            )
        if self.missing_audio not in ("skip", "silence"):
            problems.append(f"missing_audio must be 'skip' or 'silence', got {self.missing_audio!r}")
        if self.audio_format not in AUDIO_FORMATS:
            problems.append(f"audio_format must be one of {list(AUDIO_FORMATS)}, got {self.audio_format!r}")
        if self.min_seconds < 0:
            problems.append(f"min_seconds must be >= 0, got {self.min_seconds}")
        if problems:
            raise ValueError("invalid shard settings: " + "; ".join(problems))

    @property
    def gop_frames(self) -> int:
        return max(1, round(self.fps * self.gop_seconds))

    @property
    def frame_rate(self) -> Fraction:
        """The exact rate written to the file (the same rounding as MediaWriter)."""
        return Fraction(self.fps).limit_denominator(1001)


class EncodedVideo(NamedTuple):
    """One video in the shard format: the mp4, its metadata, and with ``audio_format="pcm"``
    the audio as little-endian int16 mono samples at ``meta["sample_rate"]`` whose first
    sample plays at ``meta["audio_start"]`` (the mp4 then has no audio stream)."""

    mp4: bytes
    meta: dict
    pcm: bytes | None = None


@dataclass
class ShardReport:
    """What ``write_shards`` did. ``shards`` maps a split to the paths of its tar files;
    :meth:`summary` is the text `avssl shards` prints."""

    num_packed: int
    skipped: list[dict]  # [{"file": relative path, "reason": str}]
    splits: dict[str, int]  # samples per split
    hours: float
    shards: dict[str, list[str]] = field(default_factory=dict)
    out_dir: str = ""  # the folder written (a part's folder for a part)
    unused_label_ids: int = 0  # ids of the labels csv that match no video
    searched: str | None = None  # where no video file was found at all ("under DIR", "in this part")
    merged_parts: int = 0  # parts merged by merge_parts

    def summary(self) -> str:
        """What was packed where, then every skipped file with its reason."""
        lines = [f"merged {self.merged_parts} parts"] if self.merged_parts else []
        if self.searched is not None:
            lines.append(f"no video found {self.searched} (extensions: {' '.join(VIDEO_EXTENSIONS)})")
        per_split = ", ".join(
            f"{split}: {count} videos in {len(self.shards[split])} shards" for split, count in self.splits.items()
        )
        line = f"packed {self.num_packed} videos ({self.hours:.3f} h) into {self.out_dir}"
        lines.append(line + (f" ({per_split})" if per_split else ""))
        if self.unused_label_ids:
            lines.append(f"labels: {self.unused_label_ids} ids of the csv match no video")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} files (also in {Path(self.out_dir) / 'skipped.json'}):")
            lines.extend(f"  {entry['file']}: {entry['reason']}" for entry in self.skipped)
        else:
            lines.append("skipped 0 files")
        return "\n".join(lines)


class SkipVideo(Exception):
    """Raised by :func:`reencode_video` for a file that cannot be packed; str = the reason."""


class LabelsError(ValueError):
    """The labels file cannot be read; the message names the file, the line and what is accepted."""


class OutputBusyError(RuntimeError):
    """Another ``avssl shards`` is writing into the same output folder."""


class MergeError(RuntimeError):
    """The parts cannot be merged (one missing, failed or cut from other inputs); one line."""


@dataclass(frozen=True)
class Part:
    """Part ``index`` of ``count`` of one input: the contiguous slice
    ``[n*index//count, n*(index+1)//count)`` of the sorted list of videos that every part
    plans in full, so ids, labels and splits do not depend on ``count``, and the merge
    gives each sample the dataset-wide ``index`` a single run gives it."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"the number of parts must be >= 1, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ValueError(f"part must be in 0..{self.count - 1} for {self.count} parts, got {self.index}")

    @property
    def name(self) -> str:
        """The part's folder under ``parts/`` and the infix of its merged shard names."""
        return f"p{self.index:0{max(3, len(str(self.count - 1)))}d}"

    def bounds(self, num_jobs: int) -> tuple[int, int]:
        return num_jobs * self.index // self.count, num_jobs * (self.index + 1) // self.count


def part_folder(out_dir: Path, part: Part) -> Path:
    """Where part ``part`` of a run writing to ``out_dir`` puts its shards and part manifest."""
    return Path(out_dir) / PARTS_DIR / part.name


# --------------------------------------------------------------------------- discovery


@dataclass(frozen=True)
class VideoJob:
    """One video to pack, with everything decided before any decoding."""

    path: Path
    source: str  # relative path, posix
    id: str  # relative path without extension
    key: str  # sanitised id: no dots, "/" → "__"
    split: str | None  # None only while planning
    label: int
    label_name: str | None
    sidecars: tuple[tuple[str, Path], ...]  # (entry name, file)


def sample_key(video_id: str) -> str:
    """The WebDataset key of a video id: ``a/b.c`` → ``a__b_c`` (keys may not hold dots)."""
    return video_id.replace("\\", "/").replace("/", "__").replace(".", "_")


def _broken_link_reason(path: Path) -> str | None:
    """Why the symlink ``path`` leads to no file (a loop, a missing target), else None."""
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return f"symlink loop: {path.name} -> {os.readlink(path)} never reaches a file"
        if error.errno == errno.ENOENT:
            return f"broken symlink: its target {os.readlink(path)} does not exist"
        return f"unreadable symlink: {error.strerror}"
    return None


def list_input_files(videos_dir: Path) -> tuple[list[Path], list[dict]]:
    """Every regular file under ``videos_dir`` (symlinks followed, folders too) and the
    entries that lead to no file, as skip records ``{"file", "reason"}``: broken links,
    symlink loops, a linked folder already searched, an unreadable folder. Nothing under
    the folder is dropped without a record."""
    videos_dir = Path(videos_dir)
    files: list[Path] = []
    problems: list[dict] = []

    def relative(path: str | Path) -> str:
        return Path(path).relative_to(videos_dir).as_posix()

    def unreadable(error: OSError) -> None:
        reason = f"unreadable folder: {error.strerror}"
        problems.append({"file": relative(error.filename or videos_dir), "reason": reason})

    searched = {os.path.realpath(videos_dir): "."}
    for folder, dirs, names in os.walk(videos_dir, onerror=unreadable, followlinks=True):
        kept = []
        # real folders first, so that a link to one of them is the entry reported
        for name in sorted(dirs, key=lambda d: (os.path.islink(os.path.join(folder, d)), d)):
            path = Path(folder) / name
            real = os.path.realpath(path)
            if real in searched:
                reason = f"symlink loop: points to the folder {searched[real]}, searched already"
                problems.append({"file": relative(path), "reason": reason})
                continue
            searched[real] = relative(path)
            kept.append(name)
        dirs[:] = sorted(kept)
        for name in names:
            path = Path(folder) / name
            reason = _broken_link_reason(path) if path.is_symlink() else None
            if reason is not None:
                problems.append({"file": relative(path), "reason": reason})
            elif path.is_file():
                files.append(path)
            elif path.suffix.lower() in VIDEO_EXTENSIONS:
                problems.append({"file": relative(path), "reason": "not a regular file"})
    return files, problems


def find_videos(
    videos_dir: Path, files: list[Path] | None = None
) -> list[tuple[Path, list[tuple[str, Path]]]]:
    """Videos under ``videos_dir`` (recursive, by extension), sorted by relative path, each
    with its sidecars ``(entry name, path)``: the other files of its folder named
    ``<stem>.<rest>``. A file that could belong to several videos (``a.b.json`` next to
    ``a.mp4`` and ``a.b.mp4``) goes to the one with the longest stem. ``files``: the
    result of :func:`list_input_files` when the caller has it already."""
    videos_dir = Path(videos_dir)
    if files is None:
        files = list_input_files(videos_dir)[0]
    by_folder: dict[Path, list[Path]] = {}
    for path in files:
        by_folder.setdefault(path.parent, []).append(path)
    sidecars: dict[Path, list[tuple[str, Path]]] = {}
    videos: list[Path] = []
    for files in by_folder.values():
        stems = {}
        for path in files:
            if path.suffix.lower() in VIDEO_EXTENSIONS:
                videos.append(path)
                stems[path.stem] = path
                sidecars[path] = []
        for path in files:
            if path.suffix.lower() in VIDEO_EXTENSIONS:
                continue
            parts = path.name.split(".")
            for cut in range(len(parts) - 1, 0, -1):  # longest stem first
                owner = stems.get(".".join(parts[:cut]))
                if owner is not None:
                    sidecars[owner].append((".".join(parts[cut:]), path))
                    break
    videos.sort(key=lambda p: p.relative_to(videos_dir).as_posix())
    result = []
    for video in videos:
        entries: list[tuple[str, Path]] = []
        used = set(RESERVED_ENTRIES)
        for rest, path in sorted(sidecars[video], key=lambda item: item[0]):
            name = rest
            while name.lower() in used:
                name = "sidecar." + name
            used.add(name.lower())
            entries.append((name, path))
        result.append((video, entries))
    return result


@dataclass
class Labels:
    """labels.csv read: ``rows`` maps an id to (label, label name, split or None)."""

    rows: dict[str, tuple[int, str | None, str | None]]
    classes: list[str] | None  # None when the labels are integers

    @property
    def has_splits(self) -> bool:
        """Whether any row names a split (else the writer makes train/val/test itself)."""
        return any(split is not None for _, _, split in self.rows.values())


LABELS_FORMAT = "a header id,label[,split] then one row per video (quote a value that holds a comma)"


def read_labels(labels_csv: Path) -> Labels:
    """Read ``id,label[,split]``. Integer labels are kept; otherwise the sorted class names
    are numbered 0..K-1. An empty label means unknown (-1). A malformed file raises
    :class:`LabelsError` naming the file, the line and the accepted format."""
    labels_csv = Path(labels_csv)
    if labels_csv.is_dir():
        raise IsADirectoryError(f"labels file {labels_csv} is a folder; give the csv file")
    if not labels_csv.is_file():
        raise FileNotFoundError(f"labels file {labels_csv} does not exist")
    try:
        raw = _read_label_rows(labels_csv)
    except UnicodeDecodeError as error:
        raise LabelsError(f"{labels_csv}: not UTF-8 text ({error.reason} at byte {error.start}); "
                          f"expected {LABELS_FORMAT}") from None
    except csv.Error as error:
        raise LabelsError(f"{labels_csv}: not a csv file ({error}); expected {LABELS_FORMAT}") from None
    names = sorted({label for label, _ in raw.values() if label})
    if all(re.fullmatch(r"[+-]?\d+", name) for name in names):
        rows = {i: (int(label) if label else -1, None, split) for i, (label, split) in raw.items()}
        return Labels(rows, None)
    number = {name: k for k, name in enumerate(names)}
    rows = {i: (number[label] if label else -1, label or None, split) for i, (label, split) in raw.items()}
    return Labels(rows, names)


def _read_label_rows(labels_csv: Path) -> dict[str, tuple[str, str | None]]:
    """{id: (label text, split or None)} of the csv, every row checked."""
    with labels_csv.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        columns = [c.strip() for c in header]
        if "id" not in columns or "label" not in columns:
            raise LabelsError(f"{labels_csv} line 1: the header must name the columns id,label[,split]; "
                              f"found {columns}")
        raw: dict[str, tuple[str, str | None]] = {}
        for row in reader:
            line = reader.line_num
            if None in row:  # DictReader puts the fields beyond the header under the key None
                raise LabelsError(
                    f"{labels_csv} line {line}: {len(header) + len(row[None])} fields, but the header "
                    f"has {len(header)} ({','.join(columns)}); expected {LABELS_FORMAT}"
                )
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            video_id = row["id"].replace("\\", "/")
            if not video_id:
                continue
            label, split = row["label"], row.get("split") or None
            if split is not None and not SPLIT_NAME.match(split):
                raise LabelsError(f"{labels_csv} line {line}: split {split!r} must be letters, digits, _ or -")
            if video_id in raw and raw[video_id] != (label, split):
                raise LabelsError(
                    f"{labels_csv} line {line}: id {video_id!r} appears twice with different label/split"
                )
            raw[video_id] = (label, split)
    return raw


def resolve_held_out(settings: ShardSettings, labels: Labels | None) -> tuple[float, float]:
    """(val, test) fractions for the videos without a split: the settings' values, and
    where one is None 0.1 when a labels file gives no split at all, else 0."""
    auto = DEFAULT_HELD_OUT if labels is not None and not labels.has_splits else (0.0, 0.0)
    val = auto[0] if settings.val_fraction is None else settings.val_fraction
    test = auto[1] if settings.test_fraction is None else settings.test_fraction
    if val + test >= 1.0:
        raise ValueError(f"invalid shard settings: val_fraction + test_fraction must be < 1, got {val} + {test}")
    return val, test


def _unit_hash(video_id: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}\0{video_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def hash_split(video_id: str, seed: int, val_fraction: float, test_fraction: float = 0.0) -> str:
    """"test" for a deterministic ``test_fraction`` of ids, "val" for a ``val_fraction``,
    else "train": a hash of (seed, id), so a video keeps its split when others are added."""
    value = _unit_hash(video_id, seed)
    if value < test_fraction:
        return "test"
    return "val" if value < test_fraction + val_fraction else "train"


def _held_out_count(size: int, fraction: float, room: int) -> int:
    """round(size × fraction), at least 1 when fraction > 0, at most ``room``."""
    if fraction <= 0 or room <= 0:
        return 0
    return min(room, max(1, math.floor(size * fraction + 0.5)))


def stratified_split(
    labelled_ids: list[tuple[str, int]], seed: int, val_fraction: float, test_fraction: float
) -> dict[str, str]:
    """{id: split} with each label's videos split on their own: ordered by a hash of
    (seed, id), the first round(n × test_fraction) go to test, the next round(n ×
    val_fraction) to val, the rest to train. Each held-out split gets at least one video
    of a label while one stays in train: a label with 1 video is train only, with 2 train
    and test, with 3 or more all three. Hand-written because scikit-learn's
    ``train_test_split(stratify=…)`` refuses labels with fewer than 2 videos."""
    by_label: dict[int, list[str]] = {}
    for video_id, label in labelled_ids:
        by_label.setdefault(label, []).append(video_id)
    splits: dict[str, str] = {}
    for ids in by_label.values():
        ids.sort(key=lambda video_id: (_unit_hash(video_id, seed), video_id))
        num_test = _held_out_count(len(ids), test_fraction, len(ids) - 1)
        num_val = _held_out_count(len(ids), val_fraction, len(ids) - 1 - num_test)
        for position, video_id in enumerate(ids):
            held_out = "test" if position < num_test else "val" if position < num_test + num_val else None
            splits[video_id] = held_out or "train"
    return splits


def split_rule(settings: ShardSettings, labels: Labels | None, val: float, test: float) -> dict:
    """The manifest's record of how the videos without a split were split."""
    if labels is not None:
        method = "stratified"
        text = ("videos with a split in the labels file keep it; the others, per label (no label: -1), "
                "ordered by sha256(seed, id): round(n*test_fraction) to test and round(n*val_fraction) "
                "to val, each at least 1 while 1 video stays in train; the rest to train")
    else:
        method = "hash"
        text = ("per video, u = sha256(seed, id) as a number in [0, 1): test if u < test_fraction, "
                "val if u < test_fraction + val_fraction, else train")
    return {"method": method, "val_fraction": val, "test_fraction": test, "seed": settings.seed, "rule": text}


def plan_jobs(
    videos_dir: Path, labels: Labels | None, settings: ShardSettings
) -> tuple[list[VideoJob], list[dict], set[str]]:
    """Everything decided before decoding: id, key, split, label and sidecars of each video.
    Returns the jobs, the entries skipped already (duplicate keys, broken links) and the
    csv ids used. Videos without a split get one by :func:`stratified_split` when there is
    a labels file, else by :func:`hash_split`."""
    files, skipped = list_input_files(videos_dir)
    planned, used_ids = [], set()
    owner_of_key: dict[str, str] = {}
    for path, sidecars in find_videos(videos_dir, files):
        source = path.relative_to(videos_dir).as_posix()
        video_id = source[: -len(path.suffix)]
        key = sample_key(video_id)
        if key in owner_of_key:
            reason = f"duplicate key: {key} is already used by {owner_of_key[key]}"
            skipped.append({"file": source, "reason": reason})
            continue
        owner_of_key[key] = source
        label, label_name, split = -1, None, None
        if labels is not None:
            for candidate in (video_id, path.stem):
                if candidate in labels.rows:
                    label, label_name, split = labels.rows[candidate]
                    used_ids.add(candidate)
                    break
        planned.append(VideoJob(path, source, video_id, key, split, label, label_name, tuple(sidecars)))
    val, test = resolve_held_out(settings, labels)
    unsplit = [job for job in planned if job.split is None]
    if labels is not None:
        assigned = stratified_split([(job.id, job.label) for job in unsplit], settings.seed, val, test)
    else:
        assigned = {job.id: hash_split(job.id, settings.seed, val, test) for job in unsplit}
    jobs = [job if job.split is not None else replace(job, split=assigned[job.id]) for job in planned]
    return jobs, skipped, used_ids


# --------------------------------------------------------------------------- re-encoding


def _error_text(error: Exception, logs: list) -> str:
    import av

    if isinstance(error, av.FFmpegError):
        text = error.strerror or str(error)
        details = [entry[2].strip() for entry in logs if len(entry) > 2 and entry[2].strip()]
        if details:
            text += f" ({details[-1]})"
        return text
    return str(error) or type(error).__name__


def _seconds(pts: int | None, time_base: Fraction | None) -> Fraction | None:
    if pts is None or time_base is None:
        return None
    return pts * Fraction(time_base)


def _packet_ranges(
    container: Any, video_index: int, audio_index: int | None
) -> dict[int, tuple[Fraction, Fraction]]:
    """Demux without decoding: [first pts, last pts + duration) of each stream, in seconds.
    Packets that the demuxer marks as discarded (AAC priming under an edit list) and empty
    packets do not count. This is what the file really holds (a truncated file's metadata
    may claim more)."""
    # Counted in integer ticks of each stream's time base (the demuxer stamps a packet with
    # its stream's), converted to seconds once: exact, and far cheaper than a Fraction per
    # packet. A packet without a duration advances by the stream's previous step.
    indices = {video_index} | ({audio_index} if audio_index is not None else set())
    streams = [s for s in container.streams if s.index in indices]
    time_bases = {s.index: s.time_base for s in streams}
    spans: dict[int, list] = {}  # index -> [first tick, end tick, last step in ticks]
    for packet in container.demux(streams):
        if packet.size == 0 or packet.is_discard:
            continue
        start = packet.pts if packet.pts is not None else packet.dts
        index = packet.stream.index
        if start is None or time_bases[index] is None:
            continue
        span = spans.get(index)
        step = (packet.duration or (span[2] if span else None)
                or _default_step(packet.stream) / Fraction(time_bases[index]))
        if span is None:
            spans[index] = [start, start + step, step]
            continue
        span[0] = min(span[0], start)
        span[1] = max(span[1], start + step)
        span[2] = step
    return {index: (span[0] * Fraction(time_bases[index]), span[1] * Fraction(time_bases[index]))
            for index, span in spans.items()}


def _default_step(stream: Any) -> Fraction:
    if stream.type == "video":
        rate = stream.guessed_rate or stream.average_rate or 25
        return 1 / Fraction(rate)
    frame_size = stream.codec_context.frame_size or 1024
    return Fraction(frame_size, stream.rate or 48000)


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side ``short_side`` and the aspect ratio kept, both even."""
    if width <= 0 or height <= 0:
        raise ValueError(f"bad frame size {width}x{height}")
    if width <= height:
        return short_side, max(2, 2 * round(height * short_side / width / 2))
    return max(2, 2 * round(width * short_side / height / 2)), short_side


def _quarter_turns(frame: Any) -> int:
    """Counter-clockwise quarter turns asked by the display matrix (phone videos)."""
    try:
        rotation = frame.rotation
    except Exception:  # noqa: BLE001 - no display matrix support
        return 0
    if not rotation:
        return 0
    turns = rotation / 90
    return int(round(turns)) % 4 if abs(turns - round(turns)) < 1e-3 else 0


class _AudioTrack:
    """Places resampled mono chunks by their timestamps into exactly ``num_samples``
    samples starting at ``start`` (source seconds): samples before the start are dropped,
    gaps are filled with zeros, the tail is cut or padded. Small timestamp jitter (below
    ``tolerance``) is treated as a continuous stream so that no click is inserted."""

    def __init__(self, writer_add: Any, start: Fraction, num_samples: int, sample_rate: int) -> None:
        self.add = writer_add
        self.start = start
        self.num_samples = num_samples
        self.rate = sample_rate
        self.written = 0
        self.next_time: Fraction | None = None
        self.tolerance = Fraction(20, 1000)

    def push(self, samples: Any, time: Fraction | None) -> None:
        import numpy as np

        if time is None or (self.next_time is not None and abs(time - self.next_time) <= self.tolerance):
            time = self.next_time if self.next_time is not None else self.start
        self.next_time = time + Fraction(len(samples), self.rate)
        offset = round((time - self.start) * self.rate)  # output index of samples[0]
        if offset > self.written:
            self.pad(offset - self.written)
        elif offset < self.written:
            samples = samples[self.written - offset :]
        samples = samples[: self.num_samples - self.written]
        if len(samples):
            self.add(np.asarray(samples, dtype=np.float32)[None])
            self.written += len(samples)

    def pad(self, count: int) -> None:
        import numpy as np

        count = min(count, self.num_samples - self.written)
        chunk = self.rate  # one second at a time: a long silent track is never held whole
        while count > 0:
            n = min(chunk, count)
            self.add(np.zeros((1, n), dtype=np.float32))
            self.written += n
            count -= n

    @property
    def full(self) -> bool:
        return self.written >= self.num_samples

    def finish(self) -> None:
        self.pad(self.num_samples - self.written)


def reencode_video(
    path: Path, settings: ShardSettings = ShardSettings(), *, threads: int = 1
) -> EncodedVideo:
    """Re-encode one video file to the shard format, streaming. Returns the mp4 bytes, the
    PCM audio when ``settings.audio_format == "pcm"``, and the metadata read back
    (``duration``, ``fps``, ``num_frames``, ``width``, ``height``, ``sample_rate``,
    ``audio_samples``, ``video_start``, ``audio_start``, ``audio_format``, ``has_audio``). Raises
    :class:`SkipVideo` with the reason for a file it cannot pack.
    ``threads`` is the decoder's thread count (0 = FFmpeg's choice)."""
    import av
    import av.logging

    old_level, old_skip = av.logging.get_level(), av.logging.get_skip_repeated()
    av.logging.set_level(av.logging.ERROR)
    av.logging.set_skip_repeated(False)  # the same error in two files must give the same reason
    try:
        with av.logging.Capture(local=True) as logs:
            try:
                return _reencode(Path(path), settings, threads)
            except SkipVideo:
                raise
            except Exception as error:  # noqa: BLE001 - any failure of one file is a skip
                raise SkipVideo(f"undecodable: {_error_text(error, logs)}") from error
    finally:
        av.logging.set_level(old_level)
        av.logging.set_skip_repeated(old_skip)


def _reencode(path: Path, settings: ShardSettings, threads: int) -> EncodedVideo:
    import av

    from avssl.data.decode import MonoResampler
    from avssl.data.encode import MediaWriter

    with av.open(str(path)) as container:
        cover_art = int(av.stream.Disposition.attached_pic)
        video_streams = [s for s in container.streams.video if not int(s.disposition) & cover_art]
        if not video_streams:
            raise SkipVideo("no video stream")
        video_index = video_streams[0].index
        audio_index = container.streams.audio[0].index if container.streams.audio else None
        if audio_index is None and settings.missing_audio == "skip":
            raise SkipVideo("no audio stream")
        ranges = _packet_ranges(container, video_index, audio_index)
    if video_index not in ranges:
        raise SkipVideo("undecodable: the video stream holds no packets")
    if audio_index is not None and audio_index not in ranges:
        if settings.missing_audio == "skip":
            raise SkipVideo("no audio stream (the audio stream holds no packets)")
        audio_index = None
    v0, v1 = ranges[video_index]
    start, end = v0, v1
    if audio_index is not None:
        a0, a1 = ranges[audio_index]
        start, end = max(v0, a0), min(v1, a1)
    rate = settings.frame_rate
    overlap = max(Fraction(0), end - start)
    # whole output frames only, the audio cut to the same length; 2 ms of slack for
    # containers that round timestamps to milliseconds (mkv, webm, flv)
    num_frames = math.floor((overlap + TIMESTAMP_SLACK) * rate)
    if overlap < settings.min_seconds or num_frames == 0:
        detail = ""
        if audio_index is not None and (a0, a1) != (v0, v1):
            detail = (
                f" (video {float(v1 - v0):.2f} s, audio {float(a1 - a0):.2f} s,"
                f" overlap {float(overlap):.2f} s)"
            )
        raise SkipVideo(f"too short: {float(overlap):.2f} s < min_seconds {settings.min_seconds:g}{detail}")
    num_samples = round(num_frames / rate * settings.sample_rate)

    buffer = io.BytesIO()
    writer: MediaWriter | None = None
    pending_audio: list[tuple[Any, Fraction | None]] = []  # audio that came before the first frame
    pcm_chunks: list[Any] = []  # (1, n) float32 chunks when audio_format == "pcm"
    track: _AudioTrack | None = None
    emitted = 0
    last_frame = None
    last_output = None
    turns = 0
    size = (0, 0)
    sample_aspect: Fraction | None = None

    def open_writer(frame: Any) -> None:
        nonlocal writer, track, turns, size
        turns = _quarter_turns(frame)
        width, height = frame.width, frame.height
        if sample_aspect is not None and sample_aspect > 0 and sample_aspect != 1:
            width = width * float(sample_aspect)  # anamorphic: keep the display aspect
        if turns % 2:
            width, height = height, width
        size = output_size(round(width), height, settings.short_side)
        writer = MediaWriter(
            buffer,
            width=size[0],
            height=size[1],
            fps=settings.fps,
            sample_rate=settings.sample_rate,
            audio_channels=1,
            audio_codec="aac" if settings.audio_format == "aac" else None,
            gop_frames=settings.gop_frames,
            audio_bitrate=AUDIO_BITRATE,
        )
        add_audio = writer.add_audio if settings.audio_format == "aac" else pcm_chunks.append
        track = _AudioTrack(add_audio, start, num_samples, settings.sample_rate)
        for samples, time in pending_audio:
            track.push(samples, time)
        pending_audio.clear()

    def to_output(frame: Any) -> Any:
        """The frame at the output size: a yuv420p frame straight from the scaler (what
        ffmpeg's scale filter does; no RGB round trip), or RGB when it must be turned."""
        import numpy as np

        if not turns:
            return frame.reformat(width=size[0], height=size[1], format="yuv420p", interpolation="AREA", threads=1)
        rgb = frame.reformat(
            width=size[1] if turns % 2 else size[0], height=size[0] if turns % 2 else size[1],
            format="rgb24", interpolation="AREA", threads=1,
        ).to_ndarray()
        return np.rot90(rgb, turns)

    def emit_until(limit: Fraction | None) -> None:
        """Write output frames whose slot ends before ``limit`` (None: all remaining)
        from the latest source frame (the fps filter's nearest-timestamp rule)."""
        nonlocal emitted, last_output
        while emitted < num_frames:
            slot = start + (emitted + Fraction(1, 2)) / rate
            if limit is not None and limit <= slot:
                return
            if last_output is None:
                last_output = to_output(last_frame)
            if turns:
                writer.add_frame(last_output)
            else:
                writer.add_video_frame(last_output)
            emitted += 1

    resampler = MonoResampler(settings.sample_rate)  # the reader's downmix path too

    def push_audio(frames: list) -> None:
        for chunk in frames:
            samples = chunk.to_ndarray().reshape(-1)
            time = _seconds(chunk.pts, chunk.time_base)
            if track is None:
                pending_audio.append((samples, time))
            else:
                track.push(samples, time)

    with av.open(str(path)) as container:
        video = container.streams[video_index]
        sample_aspect = video.codec_context.sample_aspect_ratio
        video.codec_context.thread_count = threads
        if threads != 1:
            video.codec_context.thread_type = "AUTO"
        streams = [video] + ([container.streams[audio_index]] if audio_index is not None else [])
        step = _default_step(video)
        guess = None
        for packet in container.demux(streams):
            if packet.stream.type == "audio":
                for frame in packet.decode():
                    push_audio(resampler.frames(frame))
                continue
            for frame in packet.decode():
                time = _seconds(frame.pts, frame.time_base)
                if time is None:  # no timestamp: continue from the previous frame
                    time = guess if guess is not None else v0
                guess = time + step
                if time >= end:
                    continue
                if writer is None:
                    open_writer(frame)
                if last_frame is not None:
                    emit_until(time)
                if emitted >= num_frames:
                    continue
                last_frame, last_output = frame, None
            if emitted >= num_frames and (audio_index is None or (track is not None and track.full)):
                break  # both streams are complete: the rest of the file lies outside the overlap
        if writer is None:
            raise SkipVideo("undecodable: no video frame could be decoded")
        emit_until(None)
        if audio_index is not None:
            push_audio(resampler.frames(None))
        track.finish()
    writer.close()
    data = buffer.getvalue()
    pcm = None
    if settings.audio_format == "pcm":
        import numpy as np

        samples = np.concatenate(pcm_chunks, axis=1)[0] if pcm_chunks else np.zeros(0, np.float32)
        pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype("<i2").tobytes()
        meta = probe_written(data, pcm_samples=samples.size, sample_rate=settings.sample_rate)
    else:
        meta = probe_written(data)
    meta["audio_format"] = settings.audio_format
    meta["has_audio"] = audio_index is not None
    if meta["num_frames"] != num_frames or meta["audio_samples"] != num_samples:
        raise RuntimeError(
            f"internal: wrote {meta['num_frames']} frames / {meta['audio_samples']} samples, "
            f"expected {num_frames} / {num_samples}"
        )
    return EncodedVideo(data, meta, pcm)


def probe_written(data: bytes, pcm_samples: int | None = None, sample_rate: int | None = None) -> dict:
    """Metadata of a written sample mp4, read back from its bytes (demux only). With
    ``pcm_samples`` the audio is the sample's PCM entry, which starts with the video."""
    import av

    with av.open(io.BytesIO(data)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if pcm_samples is None else None
        video_start = float(_seconds(video.start_time or 0, video.time_base))
        audio_start = float(_seconds(audio.start_time or 0, audio.time_base)) if audio else video_start
        audio_rate = audio.rate if audio else sample_rate
        rate = video.average_rate or video.guessed_rate
        num_frames = 0
        audio_samples = pcm_samples or 0
        for packet in container.demux(*[s for s in (video, audio) if s is not None]):
            if packet.size == 0 or packet.is_discard:
                continue
            if packet.stream.type == "video":
                num_frames += 1
            else:
                audio_samples += int(packet.duration * packet.time_base * audio.rate)
        video_end = video_start + num_frames / float(rate)
        audio_end = audio_start + audio_samples / audio_rate
        return {
            "duration": round(max(0.0, min(video_end, audio_end) - max(video_start, audio_start)), 6),
            "fps": float(rate),
            "num_frames": num_frames,
            "width": video.codec_context.width,
            "height": video.codec_context.height,
            "sample_rate": audio_rate,
            "audio_samples": audio_samples,
            "video_start": video_start,
            "audio_start": audio_start,
        }


# --------------------------------------------------------------------------- packing


def _encode_job(args: tuple[VideoJob, ShardSettings, int]) -> tuple[str, Any, Any]:
    """Pool worker: ("ok", EncodedVideo, sidecar bytes by entry name) or ("skip", reason, None)."""
    job, settings, threads = args
    try:
        encoded = reencode_video(job.path, settings, threads=threads)
        extras = {}
        for name, sidecar in job.sidecars:
            try:
                extras[name] = sidecar.read_bytes()
            except OSError as error:
                raise SkipVideo(f"undecodable: cannot read sidecar {sidecar.name}: {error}") from error
    except SkipVideo as skip:
        return "skip", str(skip), None
    except Exception as error:  # noqa: BLE001 - never stop on one file
        return "skip", f"undecodable: {error or type(error).__name__}", None
    return "ok", encoded, extras


class _ShardSink:
    """One open tar per split, a new one every ``shard_size`` samples."""

    def __init__(self, out_dir: Path, shard_size: int) -> None:
        self.out_dir = out_dir
        self.shard_size = shard_size
        self.files: dict[str, list[dict]] = {}
        self._open: dict[str, Any] = {}

    def write(self, split: str, sample: dict) -> None:
        import webdataset

        files = self.files.setdefault(split, [])
        if split not in self._open or files[-1]["num_samples"] >= self.shard_size:
            self._close(split)
            name = f"{split}-{len(files):06d}.tar"
            # mtime fixed so that the same videos and settings give the same bytes
            self._open[split] = webdataset.TarWriter(str(self.out_dir / name), encoder=False, mtime=0)
            files.append({"file": name, "num_samples": 0})
        self._open[split].write(sample)
        files[-1]["num_samples"] += 1

    def _close(self, split: str) -> None:
        writer = self._open.pop(split, None)
        if writer is not None:
            writer.close()

    def close(self) -> None:
        for split in list(self._open):
            self._close(split)


def _listed_shards(manifest_path: Path) -> list[str]:
    """The shard file names a manifest lists (only names the writer makes: never a path)."""
    try:
        old = json.loads(manifest_path.read_text())
        names = [entry["file"] for split in old.get("splits", {}).values() for entry in split.get("shards", [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []
    return [str(name) for name in names if SHARD_NAME.match(str(name))]


def _output_error(out_dir: Path, error: OSError) -> OSError:
    """One line saying why the output folder cannot be made or written to."""
    if isinstance(error, (FileExistsError, NotADirectoryError)):
        blocker = next((p for p in [out_dir, *out_dir.parents] if p.exists() and not p.is_dir()), out_dir)
        what = "is a file" if blocker == out_dir else f"cannot be made: {blocker} is a file"
        return NotADirectoryError(f"output folder {out_dir} {what}")
    if isinstance(error, PermissionError):
        return PermissionError(f"output folder {out_dir}: permission denied (cannot write there)")
    return type(error)(error.errno, f"output folder {out_dir}: {error.strerror}")


def _lock_output(out_dir: Path) -> int:
    """Make ``out_dir`` and take an exclusive lock on it (held until the descriptor is
    closed), so that two writers never share it and a staging folder found there is stale."""
    import fcntl

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as error:
        raise _output_error(out_dir, error) from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise OutputBusyError(f"output folder {out_dir} is being written by another avssl shards") from None
    return descriptor


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Finish a commit: the staging folder's shards, then skipped.json, then manifest.json
    (the commit point) replace the files of ``out_dir``, then the previous output's shards
    that the new manifest does not list are deleted. ``os.replace`` renames within one
    file system and replaces a symlink at the target, never the file it points to.
    Safe to run again after an interruption: what was moved already is not in staging."""
    commit = json.loads((staging / COMMIT_FILE).read_text())
    for name in commit["shards"]:
        if (staging / name).exists():
            os.replace(staging / name, out_dir / name)
    for name in ("skipped.json", "manifest.json"):
        if (staging / name).exists():
            os.replace(staging / name, out_dir / name)
    for name in commit["remove"]:
        if SHARD_NAME.match(name):
            (out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(staging)


def _commit(staging: Path, out_dir: Path, shard_names: list[str]) -> None:
    """Replace the previous output by the complete one in ``staging``."""
    previous = set(_listed_shards(out_dir / "manifest.json"))
    commit = {"shards": shard_names, "remove": sorted(previous - set(shard_names))}
    try:
        _write_json(staging / COMMIT_FILE, commit)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _move_into_place(staging, out_dir)


def _clear_stale_staging(out_dir: Path) -> None:
    """Staging folders of a run that was killed: one whose output was complete and being
    moved is finished (the manifest is then consistent again); any other is deleted."""
    for staging in sorted(out_dir.glob(STAGING_PREFIX + "*")):
        if staging.is_symlink() or not staging.is_dir():
            continue
        if (staging / COMMIT_FILE).is_file():
            log.warning("finishing the interrupted move of %s into %s", staging.name, out_dir)
            _move_into_place(staging, out_dir)
        else:
            log.info("removing %s, left by an interrupted run", staging)
            shutil.rmtree(staging)


def _write_json(path: Path, value: Any) -> None:
    """Write ``value`` to ``path`` through a temporary file beside it (never half a file)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    with open(temporary, "x", encoding="utf-8") as handle:
        handle.write(json.dumps(value, indent=2) + "\n")
    os.replace(temporary, path)


def _results(jobs: list[VideoJob], settings: ShardSettings, workers: int) -> Iterator[tuple[str, Any, Any]]:
    workers = max(min(workers, len(jobs)), 1)
    import multiprocessing

    # Always in fresh spawned processes, one thread each, even for workers=1: the bytes
    # written must not depend on --workers, and FFmpeg's float encoders gave different
    # bytes inside a process that had loaded torch and friends (seen in the test of it).
    # spawn is also safe when the caller has torch (and its threads) loaded.
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        yield from pool.imap(_encode_job, [(job, settings, 1) for job in jobs], chunksize=1)


def write_shards(
    videos_dir: Path,
    out_dir: Path,
    labels_csv: Path | None = None,
    settings: ShardSettings = ShardSettings(),
    workers: int = 1,
    part: Part | None = None,
) -> ShardReport:
    """Re-encode every video under ``videos_dir`` and pack it into WebDataset shards
    ``{out_dir}/{split}-{NNNNNN}.tar``, with ``manifest.json`` and ``skipped.json``.

    Videos are processed in sorted relative-path order by ``workers`` processes; the
    output (indices, shard contents) does not depend on ``workers``. A file that cannot be
    packed is skipped with a reason, listed in the returned report (whose
    :meth:`~ShardReport.summary` the CLI prints); ``num_packed == 0`` there means nothing
    could be packed.

    With ``part``, only that part's slice of the videos is packed, into
    ``{out_dir}/parts/pNNN/`` (:func:`part_folder`) with a part manifest; :func:`merge_parts`
    then builds the one output. A part that raises leaves ``failed.json`` there, which the
    merge reports.

    The new output is built in a staging folder inside ``out_dir`` and replaces the
    previous one only once complete (:func:`_commit`), so an error, a full disk or a kill
    leaves the previous output as it was; the next run removes the stale staging folder.
    """
    videos_dir, out_dir = Path(videos_dir), Path(out_dir)
    if not videos_dir.exists():
        raise FileNotFoundError(f"videos folder {videos_dir} does not exist")
    if not videos_dir.is_dir():
        raise NotADirectoryError(f"videos folder {videos_dir} is a file; give the folder that holds the videos")
    labels = read_labels(labels_csv) if labels_csv is not None else None
    val, test = resolve_held_out(settings, labels)
    settings = replace(settings, val_fraction=val, test_fraction=test)
    if part is None:
        return _write(videos_dir, out_dir, labels, settings, workers, None)
    target = part_folder(out_dir, part)
    (target / FAILED_FILE).unlink(missing_ok=True)
    try:
        return _write(videos_dir, target, labels, settings, workers, part)
    except BaseException as error:
        if target.is_dir() and not isinstance(error, OutputBusyError):  # a busy folder is another run's
            reason = " ".join(str(error).split()) or type(error).__name__
            _write_json(target / FAILED_FILE, {"part": part.index, "num_parts": part.count,
                                               "error": f"{type(error).__name__}: {reason}"})
        raise


def _write(
    videos_dir: Path, out_dir: Path, labels: Labels | None, settings: ShardSettings, workers: int,
    part: Part | None,
) -> ShardReport:
    """write_shards once the inputs are checked: ``out_dir`` is the part's folder for a part."""
    lock = _lock_output(out_dir)
    try:
        _clear_stale_staging(out_dir)
        jobs, skipped, used_ids = plan_jobs(videos_dir, labels, settings)
        part_info = None
        if part is not None:
            first, stop = part.bounds(len(jobs))
            part_info = {"index": part.index, "num_parts": part.count, "first_video": first,
                         "num_videos": stop - first, "total_videos": len(jobs),
                         "input_digest": _input_digest(jobs, skipped)}
            jobs = jobs[first:stop]
            skipped = skipped if part.index == 0 else []  # found while planning: every part sees them
        try:
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
        except OSError as error:
            raise _output_error(out_dir, error) from None
        try:
            report = _pack(jobs, skipped, settings, labels, staging, workers, part_info)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        # from here an interruption leaves a complete staging folder that the next start moves in
        _commit(staging, out_dir, [Path(p).name for paths in report.shards.values() for p in paths])
    finally:
        os.close(lock)
    report.shards = {split: [str(out_dir / Path(p).name) for p in paths] for split, paths in report.shards.items()}
    report.out_dir = str(out_dir)
    report.unused_label_ids = len(labels.rows) - len(used_ids) if labels is not None else 0
    if len(jobs) == 0 and not report.skipped:
        report.searched = "in this part" if part is not None else f"under {videos_dir}"
    return report


def _input_digest(jobs: list[VideoJob], skipped: list[dict]) -> str:
    """sha256 of the planned input (every video's source, split and label, and the files
    skipped while planning): the parts of one run agree on it, else they saw other inputs."""
    digest = hashlib.sha256()
    for job in jobs:
        digest.update(json.dumps([job.source, job.split, job.label, job.label_name]).encode() + b"\n")
    digest.update(json.dumps(skipped, sort_keys=True).encode())
    return digest.hexdigest()


def _pack(
    jobs: list[VideoJob], skipped: list[dict], settings: ShardSettings, labels: Labels | None,
    staging: Path, workers: int, part_info: dict | None = None,
) -> ShardReport:
    """Encode ``jobs`` into shards in ``staging`` and write its manifest.json and
    skipped.json; the report's shard paths are in ``staging``. ``part_info``: recorded as
    the manifest's ``part``, with the unrounded seconds of each split for the merge."""
    from tqdm import tqdm

    sink = _ShardSink(staging, settings.shard_size)
    next_index: dict[str, int] = {}
    seconds: dict[str, float] = {}
    results = _results(jobs, settings, workers)
    try:
        progress = tqdm(total=len(jobs), desc="avssl shards", unit="video", dynamic_ncols=True)
        for position, (status, payload, extra) in enumerate(results):
            job = jobs[position]
            progress.update(1)
            if status != "ok":
                skipped.append({"file": job.source, "reason": payload})
                progress.set_postfix(skipped=len(skipped), refresh=False)
                continue
            encoded: EncodedVideo = payload
            meta, extras = encoded.meta, extra  # extra: sidecar bytes by entry name
            index = next_index.get(job.split, 0)
            next_index[job.split] = index + 1
            seconds[job.split] = seconds.get(job.split, 0.0) + meta["duration"]
            record = {
                "index": index,
                "id": job.id,
                "split": job.split,
                "source": job.source,
                **meta,
                "label": job.label,
                "label_name": job.label_name,
                "extras": sorted(extras),
            }
            sample = {"__key__": job.key, "mp4": encoded.mp4, "json": json.dumps(record).encode("utf-8")}
            if encoded.pcm is not None:
                sample["pcm"] = encoded.pcm
            sample.update(extras)
            sink.write(job.split, sample)
        progress.close()
    finally:
        results.close()  # stops the worker pool if writing failed
        sink.close()

    skipped.sort(key=lambda entry: entry["file"])
    splits = {split: next_index[split] for split in sorted(next_index)}
    total_seconds = sum(seconds.values())
    manifest = {
        "format": "avssl-shards/1",
        "settings": asdict(settings),
        "split_rule": split_rule(settings, labels, settings.val_fraction, settings.test_fraction),
        "classes": labels.classes if labels is not None else None,
        "splits": {
            split: {
                "shards": sink.files[split],
                "num_samples": splits[split],
                "hours": round(seconds[split] / 3600, 6),
            }
            for split in splits
        },
        "num_samples": sum(splits.values()),
        "hours": round(total_seconds / 3600, 6),
        "skipped": skipped,
    }
    if part_info is not None:
        manifest["part"] = {**part_info, "seconds": {split: seconds[split] for split in splits}}
    _write_json(staging / "skipped.json", skipped)
    _write_json(staging / "manifest.json", manifest)
    return ShardReport(
        num_packed=sum(splits.values()),
        skipped=skipped,
        splits=splits,
        hours=total_seconds / 3600,
        shards={split: [str(staging / entry["file"]) for entry in sink.files[split]] for split in splits},
    )


# --------------------------------------------------------------------------- merging parts


def merge_parts(out_dir: Path, num_parts: int | None = None, workers: int = 1) -> ShardReport:
    """Build ``{out_dir}/manifest.json`` (splits, labels, counts, skipped files) and its
    shards from the parts in ``{out_dir}/parts/`` written by ``write_shards(part=…)``.

    Refuses with a :class:`MergeError` naming every part that is missing (no part
    manifest), failed (``failed.json``) or inconsistent (other inputs, settings or number
    of parts). Each part's shards become ``{split}-pNNN-{KKKKKK}.tar``; the ``index`` in
    their samples' json is shifted by the samples of the earlier parts in that split, which
    gives every sample the index a single run gives it (parts are contiguous slices of one
    sorted list). Part 0's shards need no change and are hard-linked; the others are
    rewritten member by member (no re-encoding). The result is committed like a single run
    (staging folder, then :func:`_commit`), and ``parts/`` is then removed.
    ``num_parts``: how many parts to expect (default: what the part manifests say).
    ``workers``: processes rewriting shards (~200 MB/s each on one core; the disk may cap it)."""
    out_dir = Path(out_dir)
    parts_root = out_dir / PARTS_DIR
    if not parts_root.is_dir():
        raise MergeError(f"no parts to merge: {parts_root} does not exist (write them with avssl shards --part I "
                         f"--num-parts N --out {out_dir})")
    lock = _lock_output(out_dir)
    try:
        _clear_stale_staging(out_dir)
        manifests = _read_parts(parts_root, num_parts)
        try:
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
        except OSError as error:
            raise _output_error(out_dir, error) from None
        try:
            report = _merge_into(manifests, parts_root, staging, workers)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _commit(staging, out_dir, [Path(p).name for paths in report.shards.values() for p in paths])
        shutil.rmtree(parts_root)
    finally:
        os.close(lock)
    report.shards = {split: [str(out_dir / Path(p).name) for p in paths] for split, paths in report.shards.items()}
    report.out_dir, report.merged_parts = str(out_dir), len(manifests)
    return report


def _read_json_or_none(path: Path) -> tuple[Any, str | None]:
    """(the parsed file, None), (None, None) when it does not exist, or (None, why not)."""
    try:
        return json.loads(path.read_text()), None
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as error:
        return None, f"unreadable {path}: {error}"


def _part_record(manifest: Any) -> dict:
    """The ``part`` record of a part manifest ({} when there is none)."""
    record = manifest.get("part") if isinstance(manifest, dict) else None
    return record if isinstance(record, dict) else {}


def _count_of_parts(parts_root: Path) -> int:
    """The number of parts the part manifests and failure records under ``parts_root`` name."""
    counts: dict[int, list[str]] = {}
    for folder in sorted(parts_root.iterdir()):
        if not PART_NAME.match(folder.name):
            continue
        manifest, _ = _read_json_or_none(folder / "manifest.json")
        failed, _ = _read_json_or_none(folder / FAILED_FILE)
        candidates = [record.get("num_parts") for record in (failed if isinstance(failed, dict) else {},
                                                             _part_record(manifest))]
        count = next((value for value in candidates if isinstance(value, int)), None)
        if count is not None:
            counts.setdefault(count, []).append(folder.name)
    if not counts:
        raise MergeError(f"no part manifest under {parts_root}: no part has finished")
    if len(counts) > 1:
        found = ", ".join(f"{count} parts ({' '.join(names)})" for count, names in sorted(counts.items()))
        raise MergeError(f"the parts under {parts_root} come from runs split differently: {found}; "
                         f"give --num-parts or clear {parts_root} and rerun the parts")
    return next(iter(counts))


def _read_parts(parts_root: Path, num_parts: int | None) -> list[dict]:
    """The part manifests, in order, once every part is present, finished and consistent."""
    count = num_parts if num_parts is not None else _count_of_parts(parts_root)
    problems: list[str] = []
    manifests: list[dict] = []
    for index in range(count):
        part = Part(index, count)
        folder = part_folder(parts_root.parent, part)
        failed, _ = _read_json_or_none(folder / FAILED_FILE)
        manifest, unreadable = _read_json_or_none(folder / "manifest.json")
        if failed is not None or (folder / FAILED_FILE).exists():
            error = failed.get("error") if isinstance(failed, dict) else None
            problems.append(f"part {index} of {count} failed ({error or 'see ' + str(folder / FAILED_FILE)})")
        elif unreadable:
            problems.append(f"part {index} of {count}: {unreadable}")
        elif manifest is None:
            problems.append(f"part {index} of {count} is missing (no part manifest {folder / 'manifest.json'})")
        elif (_part_record(manifest).get("index"), _part_record(manifest).get("num_parts")) != (index, count):
            record = _part_record(manifest)
            says = f"that of part {record.get('index')} of {record.get('num_parts')}" if record else "no part manifest"
            problems.append(f"part {index} of {count}: {folder / 'manifest.json'} is {says}")
        else:
            manifests.append(manifest)
    if not problems:
        problems = _inconsistencies(manifests)
    if problems:
        raise MergeError(f"cannot merge {parts_root}: " + "; ".join(problems))
    return manifests


def _inconsistencies(manifests: list[dict]) -> list[str]:
    """Why complete parts do not belong to one run: other inputs or settings, or a gap."""
    first, problems, expected_start = manifests[0], [], 0
    for manifest in manifests:
        part = manifest["part"]
        name = f"part {part['index']} of {part['num_parts']}"
        for key in ("settings", "split_rule", "classes"):
            if manifest.get(key) != first.get(key):
                problems.append(f"{name} was written with other {key.replace('_', ' ')} than part 0")
        reference = first["part"]
        if part["input_digest"] != reference["input_digest"] or part["total_videos"] != reference["total_videos"]:
            problems.append(f"{name} saw other videos or labels than part 0 (input digest differs)")
        elif part["first_video"] != expected_start:
            problems.append(f"{name} starts at video {part['first_video']}, expected {expected_start}")
        expected_start = part["first_video"] + part["num_videos"]
    return problems


def _merge_into(manifests: list[dict], parts_root: Path, staging: Path, workers: int = 1) -> ShardReport:
    """Write the merged shards, manifest.json and skipped.json into ``staging``."""
    first = manifests[0]
    split_names = sorted({split for manifest in manifests for split in manifest["splits"]})
    splits: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    copies: list[tuple[Path, Path, int]] = []  # (part's shard, merged shard, index offset)
    for split in split_names:
        offset, entries, seconds[split] = 0, [], 0.0
        for manifest in manifests:
            if split not in manifest["splits"]:
                continue
            part = Part(manifest["part"]["index"], manifest["part"]["num_parts"])
            for number, entry in enumerate(manifest["splits"][split]["shards"]):
                name = f"{split}-{part.name}-{number:06d}.tar"
                copies.append((part_folder(parts_root.parent, part) / entry["file"], staging / name, offset))
                entries.append({"file": name, "num_samples": entry["num_samples"]})
            offset += manifest["splits"][split]["num_samples"]
            seconds[split] += manifest["part"]["seconds"][split]
        splits[split] = {"shards": entries, "num_samples": offset, "hours": round(seconds[split] / 3600, 6)}
    _copy_shards(copies, workers)
    skipped = sorted((entry for manifest in manifests for entry in manifest["skipped"]), key=lambda e: e["file"])
    manifest = {
        "format": first["format"],
        "settings": first["settings"],
        "split_rule": first["split_rule"],
        "classes": first["classes"],
        "splits": splits,
        "num_samples": sum(split["num_samples"] for split in splits.values()),
        "hours": round(sum(seconds.values()) / 3600, 6),
        "skipped": skipped,
        "merged_from_parts": len(manifests),
    }
    _write_json(staging / "skipped.json", skipped)
    _write_json(staging / "manifest.json", manifest)
    return ShardReport(
        num_packed=manifest["num_samples"],
        skipped=skipped,
        splits={split: splits[split]["num_samples"] for split in splits},
        hours=sum(seconds.values()) / 3600,
        shards={split: [str(staging / e["file"]) for e in splits[split]["shards"]] for split in splits},
    )


def _copy_shards(copies: list[tuple[Path, Path, int]], workers: int) -> None:
    """:func:`_copy_shard` for each (source, target, offset), by ``workers`` spawned processes
    (tarfile is pure Python: one core reads and writes ~200 MB/s)."""
    workers = max(1, min(workers, len(copies)))
    if workers == 1:
        for copy in copies:
            _copy_shard(*copy)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for _ in pool.map(_copy_shard, *zip(*copies)):
            pass


def _copy_shard(source: Path, target: Path, index_offset: int) -> None:
    """``source`` as ``target`` with every sample's json ``index`` raised by ``index_offset``:
    a hard link when there is nothing to change (no copy), else the tar rewritten member by
    member with the same headers (USTAR, as webdataset's TarWriter writes) and only the
    json members changed."""
    import tarfile

    if index_offset == 0:
        try:
            os.link(source, target)
            return
        except OSError:  # another file system, or no hard links there
            shutil.copyfile(source, target)
            return
    with tarfile.open(source, "r") as reader, tarfile.open(target, "w", format=tarfile.USTAR_FORMAT) as writer:
        for member in reader:
            data = reader.extractfile(member) if member.isfile() else None
            if data is not None and member.name.endswith(".json") and member.name.count(".") == 1:
                record = json.loads(data.read())
                record["index"] += index_offset
                payload = json.dumps(record).encode("utf-8")
                member.size = len(payload)
                data = io.BytesIO(payload)
            writer.addfile(member, data)
