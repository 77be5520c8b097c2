"""What every benchmark adapter shares: the listed samples, the staging folder that
`avssl shards` reads, and the report.

An adapter reads a benchmark's own annotation files and returns one :class:`Sample` per
listed clip (label, split, sidecar ground truth, and the file found on disk or ``None``).
:func:`write_benchmark` then builds a staging folder inside the output folder: the found
files as symlinks (audio-only files and frame+audio pairs converted to a video first, see
:mod:`avssl.data.sources.media`), the sidecars as ``<stem>.<name>`` json files and a
``labels.csv``; runs the shard writer on it; adds the listed-but-missing clips to the
skip report and the class list to the manifest; writes ``prepare.json``; and removes the
staging folder. Heavy imports happen inside functions (the CLI imports this module).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from avssl.data.shards import VIDEO_EXTENSIONS, ShardReport, ShardSettings, write_shards

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".aac")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MAX_PRINTED_MISSING = 20


class PrepareError(FileNotFoundError):
    """The benchmark's layout lacks a file the adapter needs (the message names it)."""


@dataclass
class Sample:
    """One clip the benchmark lists.

    ``id`` is the sample's id in the shards (its path in the staging folder without the
    extension). ``media`` is the file found on disk (None: listed but missing; ``expected``
    says what was looked for). An audio file is packed with a black video; with ``image``
    the still image is shown instead. ``sidecars`` maps an entry name (``boxes.json``)
    to a json-able value; ``annotation`` becomes the ``annotation.json`` sidecar.
    """

    id: str
    split: str
    label: int
    media: Path | None
    expected: str
    listed_in: str
    image: Path | None = None
    annotation: dict[str, Any] = field(default_factory=dict)
    sidecars: dict[str, Any] = field(default_factory=dict)


@dataclass
class PrepareReport:
    """What an adapter did: the shard writer's report plus the clips it could not find;
    :meth:`summary` is the text `avssl prepare` prints."""

    benchmark: str
    out_dir: Path
    classes: list[str] | None
    listed: int
    missing: list[dict]  # [{"file": expected, "reason": "missing: …"}]
    shards: ShardReport
    root: Path | None = None  # the release the clips were looked for under
    # the shard writer's summary before the missing clips joined its skips; "" when nothing
    # was staged (it would name the temporary staging folder as where no video was found)
    shards_summary: str = ""

    @property
    def num_packed(self) -> int:
        return self.shards.num_packed

    def summary(self) -> str:
        """The shard writer's summary, then what was listed, found and missing (the first
        ``MAX_PRINTED_MISSING`` missing clips by name)."""
        lines = [self.shards_summary] if self.shards_summary else []
        lines.append(f"{self.benchmark}: {self.listed} clips listed, {self.listed - len(self.missing)} found on "
                     f"disk, {len(self.missing)} missing (listed in skipped.json)")
        lines.extend(f"  missing {entry['file']}" for entry in self.missing[:MAX_PRINTED_MISSING])
        if len(self.missing) > MAX_PRINTED_MISSING:
            lines.append(f"  … and {len(self.missing) - MAX_PRINTED_MISSING} more in {self.out_dir / 'skipped.json'}")
        if self.num_packed == 0:
            lines.append(f"{self.benchmark}: nothing packed: {self.listed - len(self.missing)} of the {self.listed} "
                         f"listed clips were found under {self.root}; the reasons are in "
                         f"{self.out_dir / 'skipped.json'}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- layout helpers


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else a :class:`PrepareError` naming it."""
    if not Path(path).is_file():
        raise PrepareError(f"{what}: expected the file {path} (is --root the unpacked release?)")
    return Path(path)


def first_existing(root: Path, names: Sequence[str], what: str) -> Path:
    """The first of ``names`` (paths relative to ``root``) that is a file, else a one-line
    error listing all of them."""
    for name in names:
        if (Path(root) / name).is_file():
            return Path(root) / name
    raise PrepareError(f"{what}: expected one of the files {', '.join(names)} under {root}")


def format_numbers(numbers: Iterable[int]) -> str:
    """Sorted integers with runs shortened: ``2-9, 11, 13-37``."""
    runs: list[list[int]] = []
    for number in sorted(set(numbers)):
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def check_numbering(numbers: Sequence[int], first: int, where: str, what: str, hint: str = "") -> None:
    """A ValueError unless ``numbers`` are ``first``, ``first + 1``, … each once: the labels
    index the class list, so a gap or a repeat would shift or merge classes. The message
    names the missing, repeated and out-of-range numbers."""
    counts = Counter(numbers)
    problems = []
    if below := [n for n in counts if n < first]:
        problems.append(f"{format_numbers(below)} below {first}")
    if repeated := [n for n, count in counts.items() if count > 1]:
        problems.append(f"{format_numbers(repeated)} listed more than once")
    if missing := sorted(set(range(first, max(counts, default=first) + 1)) - set(counts)):
        problems.append(f"{format_numbers(missing)} missing")
    if problems:
        raise ValueError(f"{where}: {what} must be {first}, {first + 1}, … without gaps; "
                         f"{'; '.join(problems)}{hint}")


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines (release files mix CRLF and LF)."""
    text = Path(path).read_text(encoding="utf-8-sig", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def hashed_split(key: str, seed: int, val_fraction: float, test_fraction: float = 0.0,
                 held_out: str = "val") -> str:
    """Deterministic split of a group ``key``: "test" for a ``test_fraction`` of keys,
    ``held_out`` for a ``val_fraction``, else "train" (sha256 of seed and key)."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    value = int.from_bytes(digest[:8], "big") / 2**64
    if value < test_fraction:
        return "test"
    if value < test_fraction + val_fraction:
        return held_out
    return "train"


class MediaIndex:
    """Every video, audio and image file under a root, by file stem (for releases whose
    clips are found by id wherever the downloader put them)."""

    def __init__(self, root: Path, exclude: Iterable[Path] = ()) -> None:
        self.root = Path(root)
        skip = {Path(p).resolve() for p in exclude}
        self._by_stem: dict[str, list[Path]] = {}
        extensions = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS + IMAGE_EXTENSIONS
        for folder, dirs, files in os.walk(self.root, followlinks=True):
            dirs[:] = sorted(d for d in dirs if (Path(folder) / d).resolve() not in skip)
            for name in sorted(files):
                path = Path(folder) / name
                if path.suffix.lower() in extensions:
                    self._by_stem.setdefault(path.stem, []).append(path)

    def _first(self, stem: str, extensions: tuple[str, ...]) -> Path | None:
        for path in self._by_stem.get(stem, ()):
            if path.suffix.lower() in extensions:
                return path
        return None

    def video(self, stem: str) -> Path | None:
        return self._first(stem, VIDEO_EXTENSIONS)

    def audio(self, stem: str) -> Path | None:
        return self._first(stem, AUDIO_EXTENSIONS)

    def image(self, stem: str) -> Path | None:
        return self._first(stem, IMAGE_EXTENSIONS)

    def media(self, stems: Iterable[str]) -> Path | None:
        """The first candidate stem that has a video (else an audio file)."""
        stems = list(stems)
        for stem in stems:
            if (found := self.video(stem)) is not None:
                return found
        for stem in stems:
            if (found := self.audio(stem)) is not None:
                return found
        return None


def relative(path: Path | None, root: Path) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- staging and writing


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(Path(source).resolve(), target)
    except OSError:  # no symlinks (some file systems): a hard link, else a copy
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)


def _convert_job(args: tuple[str, str, str | None, float]) -> str | None:
    """Pool worker: convert one audio file (and still image); None or the failure."""
    from avssl.data.sources.media import audio_to_video

    audio, target, image, fps = args
    try:
        audio_to_video(Path(audio), Path(target), fps=fps, image=Path(image) if image else None)
    except Exception as error:  # noqa: BLE001 - one bad file is a skip, never fatal
        return f"undecodable: {error or type(error).__name__}"
    return None


def _convert_all(jobs: list[tuple[str, str, str | None, float]], workers: int) -> list[str | None]:
    """Run the conversions in fresh spawned processes, even for one worker: as for the
    shard writer, FFmpeg gave other bytes inside a process that had loaded torch, and the
    output must not depend on ``workers`` or on the caller."""
    if not jobs:
        return []
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max(1, min(workers, len(jobs))), mp_context=context) as pool:
        results = pool.map(_convert_job, jobs, chunksize=8)
        return list(tqdm(results, total=len(jobs), desc="avssl prepare: audio → video", unit="file",
                         dynamic_ncols=True))


def _stage(samples: list[Sample], staging: Path, root: Path, fps: float, workers: int
           ) -> tuple[list[tuple[str, int, str]], list[dict]]:
    """Fill ``staging``; returns the labels rows (id, label, split) and the skips."""
    from tqdm import tqdm

    rows: list[tuple[str, int, str]] = []
    skipped: list[dict] = []
    conversions: list[tuple[str, str, str | None, float]] = []
    converted: list[tuple[Sample, str]] = []
    for sample in tqdm(samples, desc="avssl prepare: staging", unit="clip", dynamic_ncols=True):
        assert sample.media is not None
        suffix = sample.media.suffix.lower()
        is_video = suffix in VIDEO_EXTENSIONS and sample.image is None
        annotation = {
            **sample.annotation,
            "source_file": relative(sample.media, root),
            "video": "original" if is_video else ("still" if sample.image is not None else "blank"),
        }
        if sample.image is not None:
            annotation["image_file"] = relative(sample.image, root)
        stem = staging / sample.id
        stem.parent.mkdir(parents=True, exist_ok=True)
        for name, value in {"annotation.json": annotation, **sample.sidecars}.items():
            Path(f"{stem}.{name}").write_text(json.dumps(value, separators=(",", ":")) + "\n")
        if is_video:
            _link(sample.media, Path(f"{stem}{sample.media.suffix}"))
            rows.append((sample.id, sample.label, sample.split))
        else:
            target = f"{stem}.mkv"
            conversions.append((str(sample.media), target, str(sample.image) if sample.image else None, fps))
            converted.append((sample, relative(sample.media, root) or sample.expected))
    for (sample, source), failure in zip(converted, _convert_all(conversions, workers)):
        if failure is None:
            rows.append((sample.id, sample.label, sample.split))
        else:
            skipped.append({"file": source, "reason": failure})
            Path(f"{staging / sample.id}.mkv").unlink(missing_ok=True)  # a half-written file
    return rows, skipped


def _dedupe(samples: list[Sample]) -> tuple[list[Sample], list[dict]]:
    """The first sample of each id; the others are reported as duplicates."""
    seen: dict[str, Sample] = {}
    skipped = []
    for sample in samples:
        if sample.id in seen:
            skipped.append({"file": sample.expected,
                            "reason": f"duplicate: {sample.id} is listed again in {sample.listed_in}"})
            continue
        seen[sample.id] = sample
    return list(seen.values()), skipped


def write_benchmark(
    benchmark: str,
    samples: list[Sample],
    root: Path,
    out_dir: Path,
    classes: list[str] | None,
    settings: ShardSettings,
    workers: int = 1,
    options: dict[str, Any] | None = None,
) -> PrepareReport:
    """Stage ``samples`` and pack them with the shard writer into ``out_dir``.

    Adds to the writer's output: the listed-but-missing clips in ``skipped.json`` and the
    manifest's ``skipped`` (reason ``missing: …``), ``classes`` in the manifest (the label
    of a sample indexes it), ``source`` in the manifest, ``labels.csv`` and
    ``prepare.json`` (what was listed, found and missing).
    """
    root, out_dir = Path(root), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    samples, duplicates = _dedupe(samples)
    missing = [
        {"file": s.expected, "reason": f"missing: listed in {s.listed_in}, not found under {root}"}
        for s in samples if s.media is None
    ]
    present = [s for s in samples if s.media is not None]
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=out_dir) as staging_name:
        staging = Path(staging_name)
        rows, failed = _stage(present, staging, root, settings.fps, workers)
        labels_csv = staging / "labels.csv"
        with labels_csv.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "label", "split"])
            writer.writerows((video_id, "" if label < 0 else label, split) for video_id, label, split in rows)
        shutil.copyfile(labels_csv, out_dir / "labels.csv")
        report = write_shards(staging, out_dir, labels_csv=labels_csv, settings=settings, workers=workers)
        shards_summary = report.summary() if rows else ""

    extra = sorted(missing + duplicates + failed, key=lambda entry: entry["file"])
    manifest_path = out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["classes"] = classes
    manifest["source"] = {"benchmark": benchmark, **(options or {}), "prepare": "prepare.json"}
    manifest["skipped"] = sorted(manifest["skipped"] + extra, key=lambda entry: entry["file"])
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    (out_dir / "skipped.json").write_text(json.dumps(manifest["skipped"], indent=2) + "\n")
    report.skipped = manifest["skipped"]

    listed_per_split: dict[str, int] = {}
    for sample in samples:
        listed_per_split[sample.split] = listed_per_split.get(sample.split, 0) + 1
    summary = {
        "benchmark": benchmark,
        "root": str(root),
        "options": options or {},
        "classes": classes,
        "listed": len(samples) + len(duplicates),
        "listed_per_split": dict(sorted(listed_per_split.items())),
        "packed_per_split": report.splits,
        "missing": len(missing),
        "duplicates": len(duplicates),
        "unconvertible": len(failed),
    }
    (out_dir / "prepare.json").write_text(json.dumps(summary, indent=2) + "\n")
    return PrepareReport(benchmark, out_dir, classes, len(samples), missing, report, root, shards_summary)


def default_settings(settings: ShardSettings | None, benchmark: str) -> ShardSettings:
    """``settings``, or the adapters' defaults: the shard writer's, with clips down to
    0.5 s kept and the benchmark's choice for videos without audio (``BENCHMARKS``)."""
    from avssl.data.sources import BENCHMARKS

    if settings is not None:
        return settings
    return ShardSettings(min_seconds=0.5, missing_audio=BENCHMARKS[benchmark].missing_audio)
