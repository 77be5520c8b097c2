"""What every evaluation verb reads and writes: one pass over a split's clips, through the
data module pretraining uses, and its metrics.json."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from avssl.data.datamodule import AVDataModule, DataConfig, ShardLoader, make_loader
from avssl.data.transforms import BatchTransform
from avssl.data.views import ViewSpec


def split_loader(data: DataConfig, split: str, views: ViewSpec, batch_size: int
                 ) -> tuple[ShardLoader, BatchTransform]:
    """(loader, the transform that finishes its batches on the device): every clip of
    ``split`` once, in the manifest's order, ``batch_size`` at a time, evaluation windows
    (``views.clips_per_video`` evenly spaced, centre crop, no augmentation).

    A split is read once here: decoding it into memory first (``data.cache``) would only
    add a pass, and the log-mel runs with the rest of the batch on the device whatever
    ``data.audio_features`` (a training setting) says, so the features do not depend on it."""
    data = replace(data, eval_batch_size=batch_size, audio_features="device", cache="none")
    datamodule = AVDataModule(data, views)
    stream = datamodule.stream(split, train=False, distributed=False)
    return make_loader(stream, data.num_workers, single_pass=True), datamodule.eval_transform


def write_metrics(results: dict[str, Any], run_dir: Path) -> Path:
    """``run_dir/metrics.json``, written beside and renamed into place (never half-written)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "metrics.json"
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(results, indent=2))
    os.replace(temporary, path)
    return path


__all__ = ["split_loader", "write_metrics"]
