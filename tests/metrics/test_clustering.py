"""Clustering metrics against known answers."""
from __future__ import annotations

import math

import pytest
import sklearn.metrics
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


@pytest.mark.parametrize("num_samples", [40_000, 150_000])
def test_ari_and_nmi_match_scikit_learn_at_scale(num_samples: int) -> None:
    # two labelings of K = 2 that agree on 75 % of samples: ARI ≈ 0.25. torchmetrics' int64
    # pair counts overflowed past ~65k samples (−2.38 at 100k); NMI was float32.
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (num_samples,), generator=g)
    clusters = torch.where(torch.rand(num_samples, generator=g) < 0.75, labels, 1 - labels)
    scores = clustering_scores(clusters, labels)
    assert scores["ari"] == pytest.approx(sklearn.metrics.adjusted_rand_score(labels.numpy(), clusters.numpy()),
                                          rel=1e-12, abs=0)
    assert scores["nmi"] == pytest.approx(
        sklearn.metrics.normalized_mutual_info_score(labels.numpy(), clusters.numpy()), rel=1e-12, abs=0)
    assert 0.24 < scores["ari"] < 0.26


def test_ari_of_many_clusters_at_scale_by_its_formula() -> None:
    # 200k samples in 1000 clusters against 10 classes: ARI from the pair counts in exact integers
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 10, (200_000,), generator=g)
    clusters = labels * 100 + torch.randint(0, 100, (200_000,), generator=g)
    contingency = torch.zeros(1000, 10, dtype=torch.long).index_put_(
        (clusters, labels), torch.ones(200_000, dtype=torch.long), accumulate=True)

    def pairs(counts: torch.Tensor) -> int:
        return sum(c * (c - 1) // 2 for c in counts.flatten().tolist())

    index, rows, cols = pairs(contingency), pairs(contingency.sum(1)), pairs(contingency.sum(0))
    total = 200_000 * 199_999 // 2
    expected = (index - rows * cols / total) / ((rows + cols) / 2 - rows * cols / total)
    assert clustering_scores(clusters, labels)["ari"] == pytest.approx(expected, rel=1e-12)


def test_two_constant_labelings_are_identical_partitions() -> None:
    same = torch.zeros(5, dtype=torch.long)
    assert clustering_scores(same, same) == {"nmi": 1.0, "ari": 1.0, "purity": 1.0}
    assert clustering_scores(same, torch.tensor([0, 1, 0, 1, 2])) == pytest.approx({"nmi": 0.0, "ari": 0.0,
                                                                                       "purity": 0.4})
