"""Frozen-feature classifiers: the k-NN vote on standardised features."""
from __future__ import annotations

import numpy as np

from avssl.evaluation.features import Features
from avssl.evaluation.linear_probe import ProbeConfig, knn_top1


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


def test_multilabel_probe_learns_one_vs_rest_and_scores_map() -> None:
    from avssl.evaluation.linear_probe import multi_hot, probe_multilabel

    rng = np.random.default_rng(0)
    # class c present ⇔ feature c > 0 (three independent labels), two clips per video
    def split(n: int) -> Features:
        x = rng.normal(size=(n, 3)).repeat(2, axis=0) + rng.normal(scale=0.05, size=(2 * n, 3))
        padded = np.full((2 * n, 32), -1)
        for i, row in enumerate(x):
            present = np.flatnonzero(row > 0)
            padded[i, : len(present)] = present
        return Features({"video": x}, np.full(2 * n, -1), np.arange(n).repeat(2), np.tile([0, 1], n),
                        {"labels": padded})

    train, val, test = split(60), split(20), split(20)
    assert multi_hot(np.array([[2, 0, -1]]), 3).tolist() == [[1.0, 0.0, 1.0]]
    result = probe_multilabel(train, val, test, "video", ProbeConfig(weight_decays=[1e-4, 1e-1]))
    assert result["test_clip_map"] > 0.9 and result["test_video_map"] > 0.9
    assert result["weight_decay"] in (1e-4, 1e-1) and set(result["search"]) == {"0.0001", "0.1"}
