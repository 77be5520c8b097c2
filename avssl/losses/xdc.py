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

:class:`PseudoLabels` is the state: every training video's current label per cluster set,
keyed by the shard ``index``, solved from the whole training set's features (each rank
clusters its own rows with :func:`~avssl.losses.kmeans.distributed_kmeans`, the labels are
then gathered by index), in the checkpoint so that a resumed run trains on the same labels.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from avssl.distributed import all_reduce, gather
from avssl.losses.kmeans import distributed_kmeans

logger = logging.getLogger(__name__)

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


def pseudo_label_loss(logits: dict[str, dict[str, torch.Tensor]], labels: dict[str, torch.Tensor],
                      class_weights: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Σ over heads of the cross-entropy against that cluster set's labels (B, −1 ignored).
    A head whose batch has no labelled row contributes 0. ``class_weights``: per cluster set a
    k-vector weighting each cluster's rows (:func:`balancing_weights`)."""
    total = None
    for heads in logits.values():
        for name, head_logits in heads.items():
            target = labels[name]
            weight = None if class_weights is None else class_weights[name].to(head_logits)
            term = (F.cross_entropy(head_logits, target, weight=weight, ignore_index=-1)
                    if bool((target >= 0).any()) else head_logits.sum() * 0)
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


def balancing_weights(labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """k-vector n / (k_filled · n_c) of a cluster set's labels (−1 ignored; an empty cluster 0):
    DeepCluster draws its batches uniformly over the clusters ("Deep Clustering for
    Unsupervised Learning of Visual Features", §3.3, avoiding trivial parametrisation);
    a streamed epoch cannot, so each row's loss is weighted by the inverse of its
    cluster's size instead (the same expected gradient)."""
    counts = torch.bincount(labels[labels >= 0], minlength=num_clusters).to(torch.float64)
    filled = counts > 0
    weights = torch.zeros(num_clusters, dtype=torch.float64)
    weights[filled.cpu()] = (counts.sum() / (int(filled.sum()) * counts[filled])).cpu()
    return weights.float()


@torch.no_grad()
def preprocess_features(x: torch.Tensor, pca_dim: int | None, l2_normalize: bool) -> torch.Tensor:
    """DeepCluster's preprocessing before k-means (§3.3 of its paper, which XDC follows): PCA to
    ``pca_dim`` dimensions with whitening (mean and covariance over every rank's rows,
    float64; None: none), then L2 normalisation of each row. Whitening makes the distances
    invariant to the eigenvectors' signs, so one process and several agree."""
    x = x.to(torch.float64)
    if pca_dim is not None:
        count = all_reduce(torch.tensor(float(x.shape[0]), dtype=torch.float64, device=x.device))
        mean = all_reduce(x.sum(0)) / count
        centred = x - mean
        covariance = all_reduce(centred.T @ centred) / (count - 1).clamp_min(1)
        values, vectors = torch.linalg.eigh(covariance)  # ascending
        keep = min(pca_dim, x.shape[1])
        values, vectors = values.flip(0)[:keep], vectors.flip(1)[:, :keep]
        x = centred @ vectors / (values.clamp_min(0) + 1e-5).sqrt()
    if l2_normalize:
        x = F.normalize(x, dim=1)
    return x


@torch.no_grad()
def align_labels(new: torch.Tensor, previous: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """``new`` with its cluster ids renamed so that they overlap ``previous`` the most (the
    Hungarian assignment on the k×k contingency of the rows labelled in both; −1 kept):
    k-means numbers its clusters arbitrarily, and a head kept from one clustering to the next
    (``task.reset_heads: false``) predicts the old numbering."""
    both = (new >= 0) & (previous >= 0)
    if not bool(both.any()):
        return new
    contingency = torch.zeros(num_clusters, num_clusters, dtype=torch.long)
    contingency.index_put_((new[both].cpu(), previous[both].cpu()), torch.ones(int(both.sum()), dtype=torch.long),
                           accumulate=True)
    rows, cols = linear_sum_assignment(contingency.numpy(), maximize=True)
    rename = torch.empty(num_clusters, dtype=torch.long)
    rename[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return torch.where(new >= 0, rename.to(new.device)[new.clamp_min(0)], new)


class PseudoLabels(nn.Module):
    """Per cluster set (``video``, ``audio``, ``joint``), every training video's current
    label (−1: not clustered, e.g. a video skipped as undecodable); the epoch they were solved
    at and how many clusterings were done. Buffers, so that a checkpoint keeps them: a run
    resumed mid-epoch trains on the labels it had, without clustering again."""

    def __init__(self, sets: tuple[str, ...], num_instances: int, num_clusters: dict[str, int]) -> None:
        super().__init__()
        self.sets, self.num_clusters = sets, dict(num_clusters)
        for name in sets:
            self.register_buffer(f"labels_{name}", torch.full((num_instances,), -1, dtype=torch.long))
        self.register_buffer("solved_epoch", torch.tensor(-1, dtype=torch.long))
        self.register_buffer("clusterings_done", torch.zeros((), dtype=torch.long))

    def labels(self, name: str) -> torch.Tensor:
        return getattr(self, f"labels_{name}")

    def targets(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cluster set → B labels of these videos."""
        return {name: self.labels(name)[index] for name in self.sets}

    def class_weights(self) -> dict[str, torch.Tensor]:
        return {name: balancing_weights(self.labels(name), self.num_clusters[name]) for name in self.sets}

    @torch.no_grad()
    def relabel(self, index: torch.Tensor, features: dict[str, torch.Tensor], epoch: int, seed: int,
                iterations: int = 25, pca_dim: int | None = None, l2_normalize: bool = True,
                align: bool = False) -> dict[str, float]:
        """Cluster this rank's rows (``index``: N_r shard indices; ``features``: cluster set →
        N_r×D) together with every other rank's (collective), and store every rank's labels
        by index (``align``: renamed to match the previous clustering, :func:`align_labels`).
        Each clustering draws its initial centroids from (seed, clusterings done).
        Returns each set's k-means inertia."""
        inertia = {}
        draw = seed * 1_000_003 + int(self.clusterings_done)
        for name in self.sets:
            x = preprocess_features(features[name], pca_dim, l2_normalize)
            result = distributed_kmeans(x, self.num_clusters[name], iterations, seed=draw)
            labels = labels_by_index(index, result.labels, self.labels(name).numel())
            if align:
                labels = align_labels(labels, self.labels(name), self.num_clusters[name])
            self.labels(name).copy_(labels)
            inertia[name] = result.inertia
        self.solved_epoch.fill_(epoch)
        self.clusterings_done += 1
        return inertia


__all__ = ["VARIANTS", "supervision", "cluster_sets", "clustering_features", "ClusterHeads", "pseudo_label_loss",
           "labels_by_index", "balancing_weights", "preprocess_features", "align_labels",
           "PseudoLabels"]
