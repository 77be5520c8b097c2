"""Clustering quality against labels (METHODS.md §8): NMI and ARI from torchmetrics, and
purity (the share of samples whose cluster's majority label is their own; a one-liner
torchmetrics does not have)."""
from __future__ import annotations

import warnings

import torch
from torchmetrics.functional.clustering import adjusted_rand_score, normalized_mutual_info_score


def purity(clusters: torch.Tensor, labels: torch.Tensor) -> float:
    contingency = torch.zeros(int(clusters.max()) + 1, int(labels.max()) + 1, dtype=torch.long)
    contingency.index_put_((clusters.long(), labels.long()), torch.ones_like(clusters, dtype=torch.long), accumulate=True)
    return float(contingency.max(dim=1).values.sum()) / clusters.numel()


def clustering_scores(clusters: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """{"nmi", "ari", "purity"} of cluster ids against class ids (1-D, same length)."""
    if clusters.shape != labels.shape or clusters.dim() != 1:
        raise ValueError(f"clusters and labels must be 1-D and of equal length, got {tuple(clusters.shape)} "
                         f"and {tuple(labels.shape)}")
    clusters, labels = clusters.cpu().long(), labels.cpu().long()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse invariant.*")
        nmi = float(normalized_mutual_info_score(clusters, labels))
        ari = float(adjusted_rand_score(clusters, labels))
    return {"nmi": nmi, "ari": ari, "purity": purity(clusters, labels)}
