"""Classification metrics against hand-computed answers."""
from __future__ import annotations

import pytest
import torch

from avssl.metrics.classification import mean_average_precision, top_k_accuracy, video_level_scores


def test_top5_succeeds_where_top1_fails() -> None:
    scores = torch.tensor([[6.0, 5, 4, 3, 2, 1, 0],    # label 4: 5th highest -> top-5 only
                           [0.0, 1, 2, 3, 4, 5, 6],    # label 0: lowest -> neither
                           [0.0, 9, 1, 1, 1, 1, 1]])   # label 1: highest -> both
    labels = torch.tensor([4, 0, 1])
    assert top_k_accuracy(scores, labels, k=1) == pytest.approx(100 / 3)
    assert top_k_accuracy(scores, labels, k=5) == pytest.approx(200 / 3)


def test_top_k_shares_ties_at_the_kth_place() -> None:
    # a constant row is chance (k/C) whatever the label; torchmetrics followed torch.topk's
    # order (top-1 of an all-zero row: class 0 only, top-2: classes 2 and 3)
    zeros = torch.zeros(4, 4)
    labels = torch.arange(4)
    assert top_k_accuracy(zeros, labels, k=1) == pytest.approx(25.0)
    assert top_k_accuracy(zeros, labels, k=2) == pytest.approx(50.0)
    assert top_k_accuracy(zeros, labels, k=4) == pytest.approx(100.0)
    # label 1 tied with 2 and 3 below class 0: top-2 keeps it with chance 1/3, top-3 with 2/3
    row = torch.tensor([[5.0, 1.0, 1.0, 1.0, 0.0]])
    assert top_k_accuracy(row, torch.tensor([1]), k=1) == 0.0
    assert top_k_accuracy(row, torch.tensor([1]), k=2) == pytest.approx(100 / 3)
    assert top_k_accuracy(row, torch.tensor([1]), k=3) == pytest.approx(200 / 3)
    assert top_k_accuracy(row, torch.tensor([1]), k=4) == 100.0


def test_top_k_input_errors() -> None:
    with pytest.raises(ValueError, match="^labels must be in 0..2, got 0..3$"):
        top_k_accuracy(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="^scores contain NaN$"):
        top_k_accuracy(torch.tensor([[0.0, float("nan")]]), torch.tensor([0]))


def test_top_k_rejects_k_above_the_number_of_classes() -> None:
    with pytest.raises(ValueError, match="number of classes"):
        top_k_accuracy(torch.zeros(2, 3), torch.tensor([0, 1]), k=5)


def test_video_level_averages_softmax_scores_per_video() -> None:
    # Video 7: clips say class 0 (weakly) and class 1 (strongly); averaging softmax picks 1.
    logits = torch.tensor([[1.0, 0.0], [0.0, 4.0], [3.0, 0.0]])
    labels = torch.tensor([1, 1, 0])
    index = torch.tensor([7, 7, 2])
    scores, video_labels = video_level_scores(logits, labels, index)
    p = logits.softmax(dim=1)
    # rows in ascending video index: video 2 first, then video 7
    assert torch.allclose(scores, torch.stack([p[2], (p[0] + p[1]) / 2]))
    assert video_labels.tolist() == [0, 1]
    assert top_k_accuracy(logits, labels) == pytest.approx(200 / 3)   # clip accuracy: clip 0 wrong
    assert top_k_accuracy(scores, video_labels) == pytest.approx(100.0)


def test_video_level_without_softmax_averages_raw_scores() -> None:
    scores, _ = video_level_scores(torch.tensor([[2.0, 0.0], [0.0, 4.0]]), torch.tensor([0, 0]),
                                   torch.tensor([5, 5]), apply_softmax=False)
    assert scores.tolist() == [[1.0, 2.0]]


def test_video_with_conflicting_labels_is_an_error() -> None:
    with pytest.raises(ValueError, match="video 3"):
        video_level_scores(torch.zeros(2, 2), torch.tensor([0, 1]), torch.tensor([3, 3]))


def test_mean_average_precision_by_hand() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.3],
                           [0.8, 0.7, 0.2],
                           [0.3, 0.6, 0.1],
                           [0.2, 0.4, 0.5]])
    targets = torch.tensor([[1, 0, 0],
                            [0, 1, 0],
                            [1, 1, 0],
                            [0, 0, 0]])
    # Class 0 ranked 0.9(+) 0.8(-) 0.3(+) 0.2(-): hits at ranks 1 and 3,
    #   AP = 1/2 * (1/1) + 1/2 * (2/3) = 5/6.
    # Class 1 ranked 0.7(+) 0.6(+) 0.4(-) 0.1(-): hits at ranks 1 and 2, AP = 1.
    # Class 2 has no positive: skipped (counting it as 0 would give 11/18).
    assert mean_average_precision(scores, targets) == pytest.approx((5 / 6 + 1) / 2)


def test_mean_average_precision_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="N×C"):
        mean_average_precision(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="no class has a positive"):
        mean_average_precision(torch.zeros(3, 2), torch.zeros(3, 2))
