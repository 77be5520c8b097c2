"""Clustering metrics against known answers."""
from __future__ import annotations

import math

import pytest
import torch

from avssl.metrics.clustering import clustering_scores, purity


def test_a_relabelled_perfect_clustering_scores_one() -> None:
    scores = clustering_scores(torch.tensor([2, 2, 0, 0, 1, 1]), torch.tensor([0, 0, 1, 1, 2, 2]))
    assert scores == pytest.approx({"nmi": 1.0, "ari": 1.0, "purity": 1.0})


def test_known_values() -> None:
    clusters, labels = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 1])
    assert purity(clusters, labels) == pytest.approx(0.75)
    # NMI (arithmetic mean): I = H(labels) + H(clusters) - H(joint)
    h = lambda ps: -sum(p * math.log(p) for p in ps)  # noqa: E731
    mutual = h([0.5, 0.5]) + h([0.75, 0.25]) - h([0.5, 0.25, 0.25])
    expected = mutual / ((h([0.5, 0.5]) + h([0.75, 0.25])) / 2)
    assert clustering_scores(clusters, labels)["nmi"] == pytest.approx(expected, rel=1e-5)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="equal length"):
        clustering_scores(torch.tensor([0, 1]), torch.tensor([0, 1, 1]))
