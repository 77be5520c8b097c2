"""Clustering quality of frozen features ("Labelling Unlabelled Videos from Scratch with Multi-modal Self-supervision",
NeurIPS 2020): k-means (scipy's ``kmeans2``, k-means++ seeding, several restarts, the lowest inertia kept) on
standardised features of a split, K = the number of classes, scored with NMI, ARI and purity against the labels.
Labels are used only to score, never to cluster."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy.cluster.vq import kmeans2

from avssl.evaluation.linear_probe import MODALITIES, Features, standardiser
from avssl.metrics.clustering import clustering_scores


@dataclass
class ClusterConfig:
    """The ``cluster`` section of an evaluation recipe."""

    encoders: str = "random"  # an `avssl export` folder, a Lightning .ckpt, or "random"
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    split: str = "test"
    num_clusters: int | None = None  # None: the classes in the manifest (else in the split's labels)
    restarts: int = 5
    batch_size: int = 64
    cache_dir: str = "runs/.feature_cache"
    device: str = "auto"


def kmeans(x: np.ndarray, k: int, restarts: int, seed: int = 0) -> np.ndarray:
    """Cluster ids of the rows of ``x``: the lowest-inertia of ``restarts`` k-means++ runs."""
    best, best_inertia = None, np.inf
    for r in range(restarts):
        centroids, ids = kmeans2(x, k, minit="++", seed=np.random.default_rng([seed, r]), iter=50)
        inertia = float(((x - centroids[ids]) ** 2).sum())
        if inertia < best_inertia:
            best, best_inertia = ids, inertia
    assert best is not None
    return best


def cluster_features(features: Features, cfg: ClusterConfig, seed: int = 0, figures_dir: Path | None = None,
                     class_names: Sequence[str] = ()) -> dict[str, Any]:
    """NMI/ARI/purity of k-means on each modality's (and both's) standardised features; with
    ``figures_dir``, the contingency tables and the embedding map there."""
    known = features.label >= 0
    if not known.any():
        raise ValueError(f"split {cfg.split!r} has no labels: clustering is scored against labels")
    labels = features.label[known]
    labelled = Features({m: v[known] for m, v in features.by_modality.items()}, labels, features.index[known],
                        features.clip[known])
    k = cfg.num_clusters or int(labels.max()) + 1
    results: dict[str, Any] = {"num_clusters": k, "num_samples": int(known.sum())}
    standardised, assignments = {}, {}
    for modality in cfg.modalities:
        if modality not in MODALITIES:
            raise ValueError(f"cluster.modalities: {modality!r} is not one of {MODALITIES}")
        x = standardiser(labelled, modality)(labelled).double().numpy()  # standardised on the split itself
        ids = kmeans(x, k, cfg.restarts, seed)
        results[modality] = clustering_scores(torch.from_numpy(ids), torch.from_numpy(labels))
        standardised[modality], assignments[modality] = x, ids
    if figures_dir is not None:
        from avssl.evaluation.figures import write_cluster_figures

        write_cluster_figures(standardised, labels, assignments, results, class_names, cfg.split, figures_dir)
    return results


__all__ = ["ClusterConfig", "cluster_features", "kmeans"]
