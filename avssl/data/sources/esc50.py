"""ESC-50: ``meta/esc50.csv`` + ``audio/*.wav`` → one shard set per test fold.

The clips are audio only; each is packed with a black video track (see
:mod:`avssl.data.sources.media`; ``annotation.json`` says ``"video": "blank"``). One run
packs one cross-validation fold: ``test`` is fold ``fold``, ``train`` the other four, and
``val`` is held out of those four by whole source recordings (``src_file``), so fragments
of one freesound recording never straddle train and val. The label is the csv's
``target`` (0..49); ``classes`` in the manifest are the ``category`` names by target.
"""
from __future__ import annotations

import csv
from pathlib import Path

from avssl.data.shards import ShardSettings
from avssl.data.sources.common import (
    PrepareReport,
    Sample,
    check_numbering,
    default_settings,
    hashed_split,
    require_file,
    write_benchmark,
)

FOLDS = (1, 2, 3, 4, 5)
COLUMNS = ("filename", "fold", "target", "category")


def read_esc50(meta_csv: Path) -> list[dict[str, str]]:
    """The rows of ``esc50.csv`` (filename, fold, target, category, esc10, src_file, take)."""
    with Path(meta_csv).open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{meta_csv}: missing columns {missing} (found {reader.fieldnames})")
        return [{k.strip(): (v or "").strip() for k, v in row.items()} for row in reader]


def prepare_esc50(
    root: Path, out_dir: Path, *, fold: int = 1, val_fraction: float = 0.1, seed: int = 0,
    settings: ShardSettings | None = None, workers: int = 1,
) -> PrepareReport:
    """ESC-50 as released (the GitHub archive unpacked): ``meta/esc50.csv`` and
    ``audio/<fold>-<clip>-<take>-<target>.wav``. Ids are the wav stems."""
    if fold not in FOLDS:
        raise ValueError(f"fold must be one of {FOLDS}, got {fold}")
    root = Path(root)
    meta_csv = require_file(root / "meta" / "esc50.csv", "ESC-50 metadata")
    rows = read_esc50(meta_csv)
    names: dict[int, str] = {}
    samples = []
    for row in rows:
        target, row_fold = int(row["target"]), int(row["fold"])
        if names.setdefault(target, row["category"]) != row["category"]:
            raise ValueError(f"{meta_csv}: target {target} names both {names[target]!r} and {row['category']!r}")
        audio = root / "audio" / row["filename"]
        source = row.get("src_file") or Path(row["filename"]).stem
        split = "test" if row_fold == fold else hashed_split(source, seed, val_fraction)
        samples.append(Sample(
            id=Path(row["filename"]).stem,
            split=split,
            label=target,
            media=audio if audio.is_file() else None,
            expected=f"audio/{row['filename']}",
            listed_in="meta/esc50.csv",
            annotation={"benchmark": "esc50", "fold": row_fold, "category": row["category"],
                        "esc10": row.get("esc10", "").lower() == "true",
                        "src_file": row.get("src_file"), "take": row.get("take")},
        ))
    check_numbering(sorted(names), 0, str(meta_csv), "the targets",
                    " (a subset csv? the labels index all 50 classes: use the release's complete esc50.csv)")
    classes = [names[k] for k in range(len(names))]
    options = {"fold": fold, "val_fraction": val_fraction, "seed": seed}
    settings = default_settings(settings, "esc50")
    return write_benchmark("esc50", samples, root, out_dir, classes, settings, workers, options)
