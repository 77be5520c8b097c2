"""Pooled features of frozen encoders, one row per evaluation clip of a split, cached on
disk by encoder, shards, split and windows: what the linear probe, k-NN, clustering and
event localization read."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from avssl.data.datamodule import DataConfig, ShardList, base_views
from avssl.data.remote import shard_stamp
from avssl.data.views import AUDIO, CLIP, INDEX, LABEL, VIDEO
from avssl.evaluation.io import split_loader

MODALITIES = ("video", "audio", "both")


@dataclass
class Features:
    """Pooled features of one split: per modality N×D, with labels, video index, clip, and
    any ground-truth targets asked for (``extra``, e.g. ``event``)."""

    by_modality: dict[str, np.ndarray]
    label: np.ndarray
    index: np.ndarray
    clip: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def _cache_key(encoder_id: str, shards: ShardList, split: str, views: Any) -> str:
    h = hashlib.sha256()
    h.update(encoder_id.encode())
    for file, count in zip(shards.files, shards.counts):
        h.update(f"{Path(file).name}:{count}:{shard_stamp(file)}".encode())
    h.update(split.encode())
    h.update(repr(views).encode())
    return h.hexdigest()[:24]


@torch.inference_mode()
def extract_features(
    encoders: dict[str, torch.nn.Module], data: DataConfig, split: str, clips_per_video: int,
    batch_size: int, device: torch.device, cache: Path | None = None, encoder_id: str = "",
    targets: tuple[str, ...] = (),
) -> Features:
    """Pooled features of every clip of a split, from a cache when one exists; ``targets``
    (e.g. ``("event",)``) are read beside the windows and returned in ``Features.extra``."""
    shards = ShardList.from_manifest(data.shards, split)
    views = replace(base_views(data, clips_per_video=clips_per_video), targets=targets)
    path = None
    if cache is not None:
        path = cache / f"{_cache_key(encoder_id, shards, split, views)}.npz"
        if path.exists():
            stored = np.load(path)
            return Features({m: stored[m] for m in encoders}, stored["label"], stored["index"], stored["clip"],
                            {t: stored[t] for t in targets})
    loader, finish = split_loader(data, split, views, batch_size)
    outputs: dict[str, list[np.ndarray]] = {m: [] for m in encoders}
    meta: dict[str, list[np.ndarray]] = {LABEL: [], INDEX: [], CLIP: [], **{t: [] for t in targets}}
    inputs = {"video": VIDEO, "audio": AUDIO}
    for module in encoders.values():
        module.eval().to(device)
    finish = finish.to(device)
    for batch in tqdm(loader, desc=f"features {split}", unit="batch", total=len(loader.stream), leave=False):
        batch = finish({k: v.to(device) for k, v in batch.items()}, train=False)
        for modality, module in encoders.items():
            outputs[modality].append(module(batch[inputs[modality]].to(device)).float().cpu().numpy())
        for key in meta:
            meta[key].append(batch[key].cpu().numpy())
    features = Features({m: np.concatenate(v) for m, v in outputs.items()},
                        *(np.concatenate(meta[k]) for k in (LABEL, INDEX, CLIP)),
                        {t: np.concatenate(meta[t]) for t in targets})
    if path is not None:  # written beside and renamed: a run killed mid-write leaves no truncated cache entry
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as file:
            np.savez(file, label=features.label, index=features.index, clip=features.clip, **features.by_modality,
                     **features.extra)
        os.replace(temporary, path)
    return features


def encoder_names(modality: str) -> list[str]:
    """The encoders a probe modality reads: itself, or video and audio for ``both``."""
    return ["video", "audio"] if modality == "both" else [modality]


def standardiser(reference: Features, modality: str) -> Callable[[Features], torch.Tensor]:
    """Features → N×D float tensor of the modality's features (``both``: concatenated),
    each encoder's standardised with the statistics of ``reference`` (the train split)."""
    names = encoder_names(modality)
    stats = {n: (reference.by_modality[n].mean(0), reference.by_modality[n].std(0) + 1e-6) for n in names}

    def standardise(features: Features) -> torch.Tensor:
        parts = [(features.by_modality[n] - stats[n][0]) / stats[n][1] for n in names]
        return torch.from_numpy(np.concatenate(parts, axis=1)).float()

    return standardise


__all__ = ["MODALITIES", "Features", "encoder_names", "extract_features", "standardiser"]
