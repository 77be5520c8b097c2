"""Pseudo-label losses of XDC and its single- and multi-modal baselines ("Self-Supervised Learning
by Cross-Modal Audio-Video Clustering", Alwassel et al., NeurIPS 2020, §3).

Every so often the training set's features are clustered (:mod:`avssl.losses.kmeans`);
the cluster ids are pseudo-labels that a linear head on each encoder learns to predict
with cross-entropy. The variants differ only in which clusters supervise which encoder:

* SDC, single-modality deep clustering: each encoder its own modality's clusters;
* XDC, cross-modal: the video encoder the audio clusters and vice versa;
* MDC, multi-head: each encoder both modalities' clusters, one head per cluster set;
* CDC, concatenation: one clustering of the concatenated video and audio features
  supervises both encoders.

The loss is the sum over every head's cross-entropy (XDC's L = ℓ(f_v, y_a) + ℓ(f_a, y_v)).
Instances whose label is −1 (not clustered yet) are ignored.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from avssl.losses.distributed import gather

#: variant → encoder → the cluster sets ("video", "audio" or "joint") that supervise it
VARIANTS: dict[str, dict[str, tuple[str, ...]]] = {
    "sdc": {"video": ("video",), "audio": ("audio",)},
    "xdc": {"video": ("audio",), "audio": ("video",)},
    "mdc": {"video": ("video", "audio"), "audio": ("video", "audio")},
    "cdc": {"video": ("joint",), "audio": ("joint",)},
}


def supervision(variant: str) -> dict[str, tuple[str, ...]]:
    """Which cluster sets supervise each encoder under ``variant``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown clustering variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[variant]


def cluster_sets(variant: str) -> tuple[str, ...]:
    """The clusterings ``variant`` needs, in a fixed order."""
    return tuple(name for name in ("video", "audio", "joint")
                 if any(name in sets for sets in supervision(variant).values()))


def clustering_features(variant: str, video: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
    """The features each needed clustering runs on: a modality's own, or (CDC) both concatenated."""
    available = {"video": video, "audio": audio}
    return {name: torch.cat([video, audio], dim=1) if name == "joint" else available[name]
            for name in cluster_sets(variant)}


class ClusterHeads(nn.Module):
    """One linear classifier per (encoder, supervising cluster set)."""

    def __init__(self, variant: str, video_dim: int, audio_dim: int, num_clusters: int | dict[str, int]) -> None:
        super().__init__()
        self.variant = variant
        dims = {"video": video_dim, "audio": audio_dim}
        sizes = num_clusters if isinstance(num_clusters, dict) else dict.fromkeys(cluster_sets(variant), num_clusters)
        self.heads = nn.ModuleDict({
            encoder: nn.ModuleDict({name: nn.Linear(dims[encoder], sizes[name]) for name in sets})
            for encoder, sets in supervision(variant).items()
        })

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        """encoder → cluster set → B×k logits."""
        features = {"video": video, "audio": audio}
        return {encoder: {name: head(features[encoder]) for name, head in heads.items()}
                for encoder, heads in self.heads.items()}


def pseudo_label_loss(logits: dict[str, dict[str, torch.Tensor]], labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ over heads of the cross-entropy against that cluster set's labels (B, −1 ignored).
    A head whose batch has no labelled row contributes 0."""
    total = None
    for heads in logits.values():
        for name, head_logits in heads.items():
            target = labels[name]
            term = (F.cross_entropy(head_logits, target, ignore_index=-1) if bool((target >= 0).any())
                    else head_logits.sum() * 0)
            total = term if total is None else total + term
    if total is None:
        raise ValueError("no heads to compute a pseudo-label loss for")
    return total


@torch.no_grad()
def labels_by_index(index: torch.Tensor, labels: torch.Tensor, num_instances: int) -> torch.Tensor:
    """Every rank's (instance index, label) pairs gathered into one N-vector (−1 where no
    rank had the instance): the label bank the next epoch's batches look up."""
    device = labels.device
    # ranks may hold different numbers of rows: pad to the largest with index −1, then drop
    size = int(gather(torch.tensor([index.numel()], device=device)).max())
    pairs = torch.full((size, 2), -1, dtype=torch.int64, device=device)
    pairs[:index.numel(), 0], pairs[:index.numel(), 1] = index.to(device), labels.to(torch.int64)
    pairs = gather(pairs)
    pairs = pairs[pairs[:, 0] >= 0]
    bank = torch.full((num_instances,), -1, dtype=torch.int64, device=device)
    bank[pairs[:, 0]] = pairs[:, 1]
    return bank


__all__ = ["VARIANTS", "supervision", "cluster_sets", "clustering_features", "ClusterHeads", "pseudo_label_loss",
           "labels_by_index"]
