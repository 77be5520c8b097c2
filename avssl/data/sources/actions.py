"""UCF101 and HMDB51: the official split files → one shard set per split fold.

One run packs one fold (``fold=1``, 2 or 3): splits ``train``, ``val`` and ``test``. The
official lists have no validation set; ``val`` is held out of the fold's training list
by whole groups (UCF101: the clips of one source video, ``gXX``; HMDB51: the clips cut
from one source film), so that a weight decay or a head is never chosen on the test list
and near-duplicate clips never straddle train and val. ``val_fraction=0`` keeps the whole
training list. Each sample's ``annotation.json`` records its role in all three folds.

Many clips of both sets have no audio track: they are packed with a silent track
(``missing_audio="silence"``, ``has_audio: false`` in the sample json).
"""
from __future__ import annotations

import re
from pathlib import Path

from avssl.data.shards import ShardSettings
from avssl.data.sources.common import (
    PrepareError,
    PrepareReport,
    Sample,
    check_numbering,
    default_settings,
    hashed_split,
    read_lines,
    require_file,
    write_benchmark,
)

FOLDS = (1, 2, 3)
VIDEO_FOLDERS = ("UCF-101", "UCF101")


def _check_fold(fold: int) -> None:
    if fold not in FOLDS:
        raise ValueError(f"fold must be one of {FOLDS}, got {fold}")


def _index_avi(folder: Path, exclude: tuple[Path, ...] = ()) -> dict[str, Path]:
    """Videos under ``folder`` by lower-case file name (the release's names are unique),
    outside the ``exclude`` folders."""
    index: dict[str, Path] = {}
    skip = tuple(p.resolve() for p in exclude)
    for path in sorted(folder.rglob("*")):
        if skip and any(folder_ in path.resolve().parents for folder_ in skip):
            continue
        if path.suffix.lower() in (".avi", ".mp4", ".mkv", ".webm") and path.is_file():
            index.setdefault(path.name.lower(), path)
    return index


# --------------------------------------------------------------------------- UCF101


def read_ucf101_classes(lists_dir: Path) -> list[str]:
    """``classInd.txt``: lines ``<1-based index> <ClassName>`` → names by 0-based index."""
    path = require_file(lists_dir / "classInd.txt", "UCF101 class list")
    pairs = []
    for number, line in enumerate(read_lines(path), start=1):
        fields = line.split(maxsplit=1)
        if len(fields) != 2 or not fields[0].isdigit():
            raise ValueError(f"{path} line {number}: expected '<1-based index> <ClassName>', got {line!r}")
        pairs.append((int(fields[0]), fields[1].strip()))
    check_numbering([i for i, _ in pairs], 1, str(path), "the indices")
    return [name for _, name in sorted(pairs)]


def _ucf_list(path: Path) -> list[str]:
    """Relative clip paths of a train/test list (``Class/v_Class_gXX_cYY.avi [label]``)."""
    return [line.split()[0].replace("\\", "/") for line in read_lines(path)]


def prepare_ucf101(
    root: Path, out_dir: Path, *, fold: int = 1, val_fraction: float = 0.1, seed: int = 0,
    settings: ShardSettings | None = None, workers: int = 1,
) -> PrepareReport:
    """UCF101 as released: ``ucfTrainTestlist/`` (classInd.txt, trainlist0N.txt,
    testlist0N.txt) and ``UCF-101/<Class>/v_<Class>_gXX_cYY.avi``. Labels are classInd's
    index − 1; ids are ``<Class>/v_<Class>_gXX_cYY``."""
    _check_fold(fold)
    root = Path(root)
    lists_dir = root / "ucfTrainTestlist"
    classes = read_ucf101_classes(lists_dir)
    number = {name.lower(): k for k, name in enumerate(classes)}
    roles: dict[str, dict[str, str]] = {}  # clip → {fold: train|test}
    for k in FOLDS:
        for role in ("train", "test"):
            path = lists_dir / f"{role}list0{k}.txt"
            if k == fold:
                require_file(path, f"UCF101 {role} list of fold {k}")
            elif not path.is_file():
                continue
            for clip in _ucf_list(path):
                roles.setdefault(clip, {})[str(k)] = role
    videos_dir = next((root / name for name in VIDEO_FOLDERS if (root / name).is_dir()), None)
    if videos_dir is None:
        raise PrepareError(f"UCF101 videos: expected the folder {root / VIDEO_FOLDERS[0]}/<Class>/*.avi")
    index = _index_avi(videos_dir, exclude=(Path(out_dir),))
    samples = []
    for clip, by_fold in roles.items():
        role = by_fold.get(str(fold))
        if role is None:
            continue
        class_name = clip.split("/")[0]
        if class_name.lower() not in number:
            raise ValueError(f"UCF101: class {class_name!r} of {clip} is not in classInd.txt")
        name = Path(clip).name
        group = re.search(r"_(g\d+)_", name)
        group_key = f"{class_name}/{group.group(1) if group else Path(name).stem}"
        split = "test" if role == "test" else hashed_split(group_key, seed, val_fraction)
        samples.append(Sample(
            id=f"{class_name}/{Path(name).stem}",
            split=split,
            label=number[class_name.lower()],
            media=index.get(name.lower()),
            expected=f"{videos_dir.name}/{clip}",
            listed_in=f"ucfTrainTestlist/{role}list0{fold}.txt",
            annotation={"benchmark": "ucf101", "folds": dict(sorted(by_fold.items())),
                        "group": group.group(1) if group else None},
        ))
    samples.sort(key=lambda s: s.id)
    options = {"fold": fold, "val_fraction": val_fraction, "seed": seed}
    settings = default_settings(settings, "ucf101")
    return write_benchmark("ucf101", samples, root, out_dir, classes, settings, workers, options)


# --------------------------------------------------------------------------- HMDB51

HMDB_SPLITS = "testTrainMulti_7030_splits"
HMDB_SPLIT_FILE = re.compile(r"^(?P<name>.+)_test_split(?P<fold>[123])\.txt$")
HMDB_ROLES = {"0": "unused", "1": "train", "2": "test"}


def read_hmdb51_splits(splits_dir: Path, fold: int) -> tuple[list[str], dict[str, tuple[str, dict[str, str]]]]:
    """The classes (sorted names of the split files) and, per clip file name,
    (class, {fold: train|test|unused}) from ``<class>_test_split<k>.txt`` lines
    ``<clip>.avi <0|1|2>``."""
    if not splits_dir.is_dir():
        raise PrepareError(f"HMDB51 splits: expected the folder {splits_dir} (testTrainMulti_7030_splits.rar unpacked)")
    files: dict[str, dict[int, Path]] = {}
    for path in sorted(splits_dir.rglob("*.txt")):
        match = HMDB_SPLIT_FILE.match(path.name)
        if match:
            files.setdefault(match["name"], {})[int(match["fold"])] = path
    if not files:
        raise PrepareError(f"HMDB51 splits: no <class>_test_split{fold}.txt file in {splits_dir}")
    classes = sorted(files)
    clips: dict[str, tuple[str, dict[str, str]]] = {}
    for name in classes:
        if fold not in files[name]:
            raise PrepareError(f"HMDB51 splits: expected the file {splits_dir / f'{name}_test_split{fold}.txt'}")
        for k, path in sorted(files[name].items()):
            for line in read_lines(path):
                parts = line.split()
                if len(parts) < 2 or parts[1] not in HMDB_ROLES:
                    raise ValueError(f"{path}: expected '<clip>.avi 0|1|2', got {line!r}")
                clips.setdefault(parts[0], (name, {}))[1][str(k)] = HMDB_ROLES[parts[1]]
    return classes, clips


def _hmdb_group(stem: str, class_name: str) -> str:
    """The source film of a clip: the part of its name before ``_<class>_``."""
    cut = stem.find(f"_{class_name}_")
    return stem[:cut] if cut > 0 else re.sub(r"_\d+$", "", stem)


def prepare_hmdb51(
    root: Path, out_dir: Path, *, fold: int = 1, val_fraction: float = 0.1, seed: int = 0,
    settings: ShardSettings | None = None, workers: int = 1,
) -> PrepareReport:
    """HMDB51 as released: ``<class>/<clip>.avi`` (the 51 class rars unpacked, anywhere
    under ``root``) and ``testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt``
    (1 = train, 2 = test, 0 = not in that fold: not packed). Labels index the sorted class
    names; ids are ``<class>/<clip>``."""
    _check_fold(fold)
    root = Path(root)
    splits_dir = root / HMDB_SPLITS
    classes, clips = read_hmdb51_splits(splits_dir, fold)
    number = {name: k for k, name in enumerate(classes)}
    index = _index_avi(root, exclude=(splits_dir, Path(out_dir)))
    samples = []
    for clip, (class_name, by_fold) in sorted(clips.items()):
        role = by_fold.get(str(fold), "unused")
        if role == "unused":
            continue
        stem = Path(clip).stem
        split = "test" if role == "test" else hashed_split(f"{class_name}/{_hmdb_group(stem, class_name)}",
                                                          seed, val_fraction)
        samples.append(Sample(
            id=f"{class_name}/{stem}",
            split=split,
            label=number[class_name],
            media=index.get(clip.lower()),
            expected=f"{class_name}/{clip}",
            listed_in=f"{HMDB_SPLITS}/{class_name}_test_split{fold}.txt",
            annotation={"benchmark": "hmdb51", "folds": dict(sorted(by_fold.items())),
                        "group": _hmdb_group(stem, class_name)},
        ))
    options = {"fold": fold, "val_fraction": val_fraction, "seed": seed}
    settings = default_settings(settings, "hmdb51")
    return write_benchmark("hmdb51", samples, root, out_dir, classes, settings, workers, options)
