"""k-means clustering of frozen features, scored against labels."""
from __future__ import annotations

import numpy as np
import pytest

from avssl.evaluation.clustering import ClusterConfig, cluster_features, kmeans
from avssl.evaluation.features import Features


def test_kmeans_recovers_separated_blobs_whatever_the_label_names() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = np.repeat([2, 0, 1], 30)  # label ids are a permutation of the blob order
    x = centres[np.repeat([0, 1, 2], 30)] + rng.normal(0, 0.5, (90, 2))
    ids = kmeans(x, 3, restarts=3)
    assert len(set(zip(ids.tolist(), labels.tolist()))) == 3  # one label per cluster
    features = Features({"video": x, "audio": rng.normal(size=(90, 2))}, labels, np.arange(90), np.zeros(90, int))
    scores = cluster_features(features, ClusterConfig(modalities=["video", "audio"]))
    assert scores["video"]["nmi"] == pytest.approx(1.0) and scores["video"]["purity"] == 1.0
    assert scores["audio"]["nmi"] < 0.2, "noise features carry no label information"
    assert scores["num_clusters"] == 3


def test_unlabelled_split_is_an_error() -> None:
    features = Features({"video": np.zeros((4, 2))}, np.full(4, -1), np.arange(4), np.zeros(4, int))
    with pytest.raises(ValueError, match="no labels"):
        cluster_features(features, ClusterConfig(modalities=["video"]))
