"""Cross-modal retrieval ("Contrastive Audio-Visual Masked Autoencoder", ICLR 2023, §4.4):
every test video queries every test audio (video→audio) and every audio every video
(audio→video); recall@1/5/10 (% of queries whose own partner is among the top K) and the
median rank of the partner.

The protocol: one clip per video (the centre window, as CAV-MAE's single middle frame), no
training, the whole split (or a subset: ``per_class``, CAV-MAE's five clips per class, and
``max_items``) scored all against all.

The score is the method's own cross-modal score
(:meth:`~avssl.tasks.pretext.base.PretextTask.pair_scores`) of the pooled embeddings: the
cosine where the encoders share one space (CAV-MAE's choice), else through the method's
head (AVC's correspondence logit, AVTS's distance, AVID's projections, SeLaVi's cluster
agreement). The heads live in the pretext run's checkpoint, not in an export folder, so the
verb reads a ``.ckpt`` (or ``random``), as ``avssl localize`` does.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from omegaconf import DictConfig

from avssl.config import data_config, start_evaluation
from avssl.data.skips import split_clips
from avssl.errors import RecipeError
from avssl.evaluation.encoders import load_task, resolve_device
from avssl.evaluation.features import Features, extract_features
from avssl.evaluation.io import write_metrics

DIRECTIONS = ("video_to_audio", "audio_to_video")


@dataclass
class RetrievalConfig:
    """The ``retrieval`` section of an evaluation recipe."""

    checkpoint: str = "random"  # a pretext run's Lightning .ckpt (encoders + cross-modal head), or "random"
    split: str = "test"
    per_class: int | None = None  # the first N clips of each class (CAV-MAE: 5); None: all
    max_items: int | None = None  # then at most the first N clips; None: all
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    batch_size: int = 64  # clips per feature batch
    pairs_per_batch: int = 65536  # (video, audio) pairs scored at once
    cache_dir: str = "runs/.feature_cache"
    device: str = "auto"


def subset(features: Features, per_class: int | None, max_items: int | None) -> np.ndarray:
    """Row numbers of the clips retrieved among: the first ``per_class`` of each label (in the
    split's order), then the first ``max_items`` of those."""
    rows = np.arange(len(features.label))
    if per_class is not None:
        if (features.label < 0).any():
            raise ValueError("retrieval.per_class needs one label per clip, and this split has clips without one "
                             "(multi-label, e.g. AudioSet): shard the subset's clips alone and leave per_class null")
        seen: dict[int, int] = {}
        keep = []
        for row, label in zip(rows, features.label.tolist()):
            seen[label] = seen.get(label, 0) + 1
            if seen[label] <= per_class:
                keep.append(row)
        rows = np.asarray(keep, dtype=np.int64)
    return rows[:max_items] if max_items is not None else rows


@torch.no_grad()
def score_matrix(score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], video: torch.Tensor,
                 audio: torch.Tensor, pairs_per_batch: int = 65536) -> torch.Tensor:
    """N×M scores, row i column j = ``score`` of video i with audio j: the method's row-wise
    pair score applied to every pair, ``pairs_per_batch`` pairs at a time."""
    rows_per_batch = max(pairs_per_batch // len(audio), 1)
    blocks = []
    for start in range(0, len(video), rows_per_batch):
        block = video[start:start + rows_per_batch]
        scores = score(block.repeat_interleave(len(audio), dim=0), audio.repeat(len(block), 1))
        blocks.append(scores.reshape(len(block), len(audio)).float().cpu())
    return torch.cat(blocks)


def partner_ranks(scores: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row's partner (the diagonal) among its row's scores. Ties count
    against the query (rank = 1 + the others scoring at least as high): a constant score
    retrieves nothing rather than everything.

    Hand-written beside torchmetrics' RetrievalRecall, which breaks ties by its sort order
    and gives no ranks (the median rank needs them)."""
    return (scores >= scores.diagonal()[:, None]).sum(dim=1)  # the partner counts itself: 1 + the others


def recall_at(ranks: torch.Tensor, ks: list[int]) -> dict[str, float]:
    """R@K (% of queries whose partner ranks within the top K) and the median rank (MedR)."""
    result = {f"r@{k}": float((ranks <= k).double().mean() * 100) for k in ks}
    result["median_rank"] = float(np.median(ranks.numpy()))  # the mean of the middle two for an even count
    return result


def retrieval_scores(scores: torch.Tensor, ks: list[int]) -> dict[str, Any]:
    """Both directions from one video×audio score matrix: video→audio ranks each video's
    row, audio→video each audio's column."""
    if scores.shape[0] != scores.shape[1]:
        raise ValueError(f"retrieval needs as many videos as audios, got {tuple(scores.shape)}")
    return {"video_to_audio": recall_at(partner_ranks(scores), ks),
            "audio_to_video": recall_at(partner_ranks(scores.T), ks), "num_items": int(scores.shape[0])}


def evaluate(config: DictConfig) -> dict[str, Any]:
    """`avssl retrieve`: video→audio and audio→video retrieval on ``retrieval.split`` with the
    cross-modal score of ``retrieval.checkpoint``'s task; metrics.json in ``run_dir``."""
    cfg, run_dir = start_evaluation(config, "retrieval", RetrievalConfig)
    if any(k < 1 for k in cfg.ks):
        raise RecipeError(f"retrieval.ks: each K must be at least 1, got {list(cfg.ks)}")
    task, encoder_id = load_task(config, cfg.checkpoint, "retrieval")
    data = data_config(config)
    device = resolve_device(cfg.device)
    encoders = {"video": task.video_encoder, "audio": task.audio_encoder}
    features = extract_features(encoders, data, cfg.split, 1, cfg.batch_size, device, Path(cfg.cache_dir),
                                encoder_id)
    clips = split_clips(data.shards, cfg.split, 1, len(features.label), test=True,
                        allow_missing=data.allow_missing_test_clips)
    rows = subset(features, cfg.per_class, cfg.max_items)
    if len(rows) < 2:
        raise ValueError(f"split {cfg.split!r}: {len(rows)} clip(s) to retrieve among; retrieval needs at least 2")
    video = torch.from_numpy(features.by_modality["video"][rows]).to(device)
    audio = torch.from_numpy(features.by_modality["audio"][rows]).to(device)
    task.eval().to(device)
    scores = score_matrix(task.pair_scores, video, audio, cfg.pairs_per_batch)
    results = {**retrieval_scores(scores, list(cfg.ks)), "checkpoint": cfg.checkpoint, "clips": {"test": clips}}
    return {**results, "metrics_file": str(write_metrics(results, run_dir))}


def report(results: dict[str, Any]) -> str:
    """What `avssl retrieve` prints: R@K and the median rank in each direction."""
    lines = [f"retrieval with {results['checkpoint']} ({results['clips']['test']['split']}, "
             f"{results['num_items']} clips, one per video):"]
    for direction in DIRECTIONS:
        scores = results[direction]
        recalls = " ".join(f"{k.upper()} {v:.1f}" for k, v in scores.items() if k.startswith("r@"))
        lines.append(f"  {direction.replace('_', ' ')}: {recalls}, median rank {scores['median_rank']:g}")
    lines.append(f"written: {results['metrics_file']}")
    return "\n".join(lines)


__all__ = ["DIRECTIONS", "RetrievalConfig", "evaluate", "partner_ranks", "recall_at", "report", "retrieval_scores",
           "score_matrix", "subset"]
