"""k-means over a whole training set whose features are split over ranks, for the pseudo-labels of
XDC ("Self-Supervised Learning by Cross-Modal Audio-Video Clustering", Alwassel et al., NeurIPS 2020, §3).

Hand-written because the official code's faiss is not installed here and scikit-learn's
KMeans needs every feature in one process; this is Lloyd's algorithm with faiss's
choices, made deterministic:

* initialisation: k distinct training rows drawn uniformly (faiss's default) by a
  generator seeded with ``seed`` over the *global* row numbers (rank r's rows follow
  ranks 0..r−1's), so the draw does not depend on the number of ranks;
* update: per-cluster sums and counts all-reduced over ranks (float64);
* empty clusters (faiss's split): each empty cluster, in index order, takes over half of
  the currently largest cluster (the lowest index among equals; faiss draws one at
  random by size): both start from that centroid, nudged apart by ±1/1024 relative
  per coordinate in alternating signs;
* stop after ``iterations`` updates or when no label changed on any rank.

One process and several give the same labels and the same centroids up to the last bits
of float64 sums taken in another order.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from avssl.distributed import all_reduce, gather, rank

logger = logging.getLogger(__name__)

#: faiss's relative nudge between the two halves of a split cluster
SPLIT_EPSILON = 1.0 / 1024


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # k×D float64, the same on every rank
    labels: torch.Tensor  # this rank's rows' clusters (int64)
    iterations: int  # centroid updates done
    inertia: float  # Σ squared distance of every row (all ranks) to its centroid
    splits: int  # empty clusters re-seeded by splitting, over all iterations


def global_offset(num_local: int, device: torch.device) -> tuple[int, int]:
    """(number of rows before this rank's, number of rows on all ranks)."""
    counts = gather(torch.tensor([num_local], dtype=torch.int64, device=device))
    return int(counts[:rank()].sum()), int(counts.sum())


def initial_centroids(x: torch.Tensor, num_clusters: int, seed: int) -> torch.Tensor:
    """k distinct rows drawn uniformly over all ranks' rows (float64, k×D)."""
    offset, total = global_offset(x.shape[0], x.device)
    if total < num_clusters:
        raise ValueError(f"k-means needs at least as many rows as clusters: {total} rows for {num_clusters} clusters")
    chosen = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:num_clusters].to(x.device)
    mine = (chosen >= offset) & (chosen < offset + x.shape[0])
    centroids = torch.zeros(num_clusters, x.shape[1], dtype=torch.float64, device=x.device)
    centroids[mine] = x[chosen[mine] - offset]
    return all_reduce(centroids)  # the other ranks add exact zeros


def assign(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each row (the lowest index among equals) and its squared distance."""
    distances = (x * x).sum(1, keepdim=True) - 2 * x @ centroids.T + (centroids * centroids).sum(1)
    nearest = distances.min(dim=1)
    return nearest.indices, nearest.values.clamp_min(0)


def split_empty_clusters(centroids: torch.Tensor, counts: torch.Tensor) -> int:
    """Re-seed every empty cluster (in place) by splitting the largest one; returns how many."""
    empty = (counts == 0).nonzero().flatten().tolist()
    sign = torch.ones(centroids.shape[1], dtype=centroids.dtype, device=centroids.device)
    sign[1::2] = -1
    for j in empty:
        largest = int(torch.argmax(counts))
        centroids[j] = centroids[largest] * (1 + SPLIT_EPSILON * sign)
        centroids[largest] = centroids[largest] * (1 - SPLIT_EPSILON * sign)
        counts[j] = counts[largest] // 2
        counts[largest] -= counts[j]
    return len(empty)


def update_centroids(x: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Means of the rows of each cluster over all ranks; empty clusters split (see the module doc)."""
    k, d = centroids.shape
    totals = torch.zeros(k, d + 1, dtype=torch.float64, device=x.device)
    totals[:, :d].index_add_(0, labels, x)
    totals[:, d] = torch.bincount(labels, minlength=k).to(torch.float64)
    totals = all_reduce(totals)
    counts = totals[:, d].clone()
    new = centroids.clone()
    filled = counts > 0
    new[filled] = totals[filled, :d] / counts[filled, None]
    return new, split_empty_clusters(new, counts)


@torch.no_grad()
def distributed_kmeans(features: torch.Tensor, num_clusters: int, iterations: int = 25,
                       seed: int = 0) -> KMeansResult:
    """k-means of this rank's N_r×D ``features`` together with every other rank's (collective:
    every rank calls it, in the same order). ``iterations``: faiss's default of 25."""
    if num_clusters < 1 or iterations < 1:
        raise ValueError(f"need num_clusters ≥ 1 and iterations ≥ 1, got {num_clusters} and {iterations}")
    x = features.detach().to(torch.float64)
    centroids = initial_centroids(x, num_clusters, seed)
    labels, _ = assign(x, centroids)
    splits, done = 0, 0
    while done < iterations:
        centroids, new_splits = update_centroids(x, labels, centroids)
        splits, done = splits + new_splits, done + 1
        new_labels, distances = assign(x, centroids)
        changed = int(all_reduce(torch.tensor(int((new_labels != labels).sum()), device=x.device)))
        labels = new_labels
        if changed == 0:
            break
    inertia = float(all_reduce(distances.sum()))
    if splits:
        logger.info("k-means: %d empty clusters re-seeded by splitting", splits)
    return KMeansResult(centroids, labels, done, inertia, splits)


__all__ = ["SPLIT_EPSILON", "KMeansResult", "global_offset", "initial_centroids", "assign", "split_empty_clusters",
           "update_centroids", "distributed_kmeans"]
