"""Frozen-feature classifiers: the k-NN vote on standardised features."""
from __future__ import annotations

import numpy as np

from avssl.tasks.downstream.linear_probe import Features, ProbeConfig, knn_top1


def _features(x: np.ndarray, labels: list[int]) -> Features:
    n = len(labels)
    return Features({"video": x.astype(np.float32), "audio": -x.astype(np.float32)}, np.array(labels),
                    np.arange(n), np.zeros(n, dtype=np.int64))


def test_knn_classifies_by_nearest_direction_after_standardising() -> None:
    # two classes along different axes; the second axis has a huge offset that standardising removes
    train = _features(np.array([[1.0, 1000.0], [1.2, 1000.1], [0.0, 1001.0], [0.1, 1001.2]]), [0, 0, 1, 1])
    test = _features(np.array([[1.1, 1000.0], [0.05, 1001.1]]), [0, 1])
    # raw, every row points along (0, 1): cosine cannot tell them apart; standardised it can
    assert knn_top1(train, test, "video", ProbeConfig(knn_k=1)) == 100.0
    assert knn_top1(train, test, "both", ProbeConfig(knn_k=3)) == 100.0
    flipped = _features(np.array([[1.1, 1000.0], [0.05, 1001.1]]), [1, 0])
    assert knn_top1(train, flipped, "audio", ProbeConfig(knn_k=1)) == 0.0
