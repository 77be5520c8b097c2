"""`avssl cluster`: k-means on frozen features of a split, NMI / ARI / purity against its
labels; writes metrics.json."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from avssl.config import start_evaluation
from avssl.data.datamodule import manifest_classes
from avssl.data.skips import split_clips
from avssl.evaluation.clustering import ClusterConfig, cluster_features
from avssl.evaluation.linear_probe import _device, encoder_names, extract_features, write_metrics
from avssl.probe import load_encoders


def cluster_from_recipe(config: DictConfig) -> dict[str, Any]:
    cfg, run_dir = start_evaluation(config, "cluster", ClusterConfig)
    encoders, data, encoder_id = load_encoders(config, cfg.encoders, run_dir)
    needed = sorted({m for mod in cfg.modalities for m in encoder_names(mod)})
    missing = [m for m in needed if encoders.get(m) is None]
    if missing:
        raise ValueError(f"cluster needs the {', '.join(missing)} encoder, which {cfg.encoders} does not have")
    features = extract_features({m: encoders[m] for m in needed}, data, cfg.split, 1, cfg.batch_size,
                                _device(cfg.device), Path(cfg.cache_dir), encoder_id)
    clips = split_clips(data.shards, cfg.split, 1, len(features.label), test=True,
                        allow_missing=data.allow_missing_test_clips)
    class_names = manifest_classes(data.shards)
    if cfg.num_clusters is None and class_names:
        cfg.num_clusters = len(class_names)  # K = the number of classes
    results = cluster_features(features, cfg, seed=int(config.seed), figures_dir=run_dir, class_names=class_names)
    results["encoders"] = cfg.encoders
    results["clips"] = {"test": clips}
    path = write_metrics(results, run_dir)
    rows = ", ".join(f"{m} NMI {results[m]['nmi']:.3f} ARI {results[m]['ari']:.3f} purity {results[m]['purity']:.3f}"
                     for m in cfg.modalities)
    print(f"k-means (K={results['num_clusters']}) on {cfg.split} features of {cfg.encoders}: {rows}\n"
          f"written: {path}, {run_dir / 'contingency.png'}, {run_dir / 'embedding.png'}")
    return results
