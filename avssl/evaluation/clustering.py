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
from omegaconf import DictConfig
from scipy.cluster.vq import kmeans2

from avssl.config import start_evaluation
from avssl.data.datamodule import manifest_classes
from avssl.data.skips import split_clips
from avssl.evaluation.encoders import load_encoders, resolve_device
from avssl.evaluation.features import MODALITIES, Features, encoder_names, extract_features, standardiser
from avssl.evaluation.io import write_metrics
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


def evaluate(config: DictConfig) -> dict[str, Any]:
    """`avssl cluster`: k-means on frozen features of ``cluster.split`` of the encoders
    ``cluster.encoders`` names, scored against the labels; metrics.json and figures in ``run_dir``."""
    cfg, run_dir = start_evaluation(config, "cluster", ClusterConfig)
    encoders, data, encoder_id = load_encoders(config, cfg.encoders, run_dir)
    needed = sorted({m for mod in cfg.modalities for m in encoder_names(mod)})
    missing = [m for m in needed if encoders.get(m) is None]
    if missing:
        raise ValueError(f"cluster needs the {', '.join(missing)} encoder, which {cfg.encoders} does not have")
    features = extract_features({m: encoders[m] for m in needed}, data, cfg.split, 1, cfg.batch_size,
                                resolve_device(cfg.device), Path(cfg.cache_dir), encoder_id)
    clips = split_clips(data.shards, cfg.split, 1, len(features.label), test=True,
                        allow_missing=data.allow_missing_test_clips)
    class_names = manifest_classes(data.shards)
    if cfg.num_clusters is None and class_names:
        cfg.num_clusters = len(class_names)  # K = the number of classes
    results = cluster_features(features, cfg, seed=int(config.seed), figures_dir=run_dir, class_names=class_names)
    results["encoders"] = cfg.encoders
    results["clips"] = {"test": clips}
    return {**results, "metrics_file": str(write_metrics(results, run_dir))}


def report(results: dict[str, Any]) -> str:
    """What `avssl cluster` prints: NMI, ARI and purity per modality, and where the figures are."""
    run_dir = Path(results["metrics_file"]).parent
    modalities = [m for m in results if m in MODALITIES]
    rows = ", ".join(f"{m} NMI {results[m]['nmi']:.3f} ARI {results[m]['ari']:.3f} purity {results[m]['purity']:.3f}"
                     for m in modalities)
    return (f"k-means (K={results['num_clusters']}) on {results['clips']['test']['split']} features of "
            f"{results['encoders']}: {rows}\n"
            f"written: {results['metrics_file']}, {run_dir / 'contingency.png'}, {run_dir / 'embedding.png'}")


__all__ = ["ClusterConfig", "cluster_features", "evaluate", "kmeans", "report"]
