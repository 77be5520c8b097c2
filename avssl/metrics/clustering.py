"""Clustering quality against labels ("Labelling Unlabelled Videos from Scratch with Multi-modal Self-supervision",
NeurIPS 2020): NMI and ARI from scikit-learn, and purity (the share of samples whose cluster's majority label is
their own; a one-liner scikit-learn does not have).

scikit-learn, not torchmetrics: torchmetrics' ARI multiplies int64 pair counts, which
overflow above ~65k samples (ARI of 2.5 or −2.4 where the true value is 0.25), and its NMI
sums in float32. scikit-learn counts pairs with Python integers and works in float64.
Conventions (docs/evaluation.md): NMI uses the arithmetic mean of the two entropies, and two
labelings that are each one constant group score NMI 1 and ARI 1 (identical partitions).
"""
from __future__ import annotations

import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def purity(clusters: torch.Tensor, labels: torch.Tensor) -> float:
    contingency = torch.zeros(int(clusters.max()) + 1, int(labels.max()) + 1, dtype=torch.long)
    contingency.index_put_((clusters.long(), labels.long()), torch.ones_like(clusters, dtype=torch.long),
                           accumulate=True)
    return float(contingency.max(dim=1).values.sum()) / clusters.numel()


def clustering_scores(clusters: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """{"nmi", "ari", "purity"} of cluster ids against class ids (1-D, same length)."""
    if clusters.shape != labels.shape or clusters.dim() != 1:
        raise ValueError(f"clusters and labels must be 1-D and of equal length, got {tuple(clusters.shape)} "
                         f"and {tuple(labels.shape)}")
    cluster_ids, label_ids = clusters.cpu().long().numpy(), labels.cpu().long().numpy()
    return {"nmi": float(normalized_mutual_info_score(label_ids, cluster_ids, average_method="arithmetic")),
            "ari": float(adjusted_rand_score(label_ids, cluster_ids)),
            "purity": purity(clusters.cpu(), labels.cpu())}
