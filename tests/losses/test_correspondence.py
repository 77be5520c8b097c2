"""AVC's correspondence losses and the one-negative-per-clip pairing, against hand computation."""
from __future__ import annotations

import math

import pytest
import torch

from avssl.losses.correspondence import balanced_pair_bce, paired_bce, paired_negative_permutation


def _bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_balanced_pair_bce_by_hand() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -3.0], [1.5, -0.5, -2.0]])
    same = torch.eye(3, dtype=torch.bool)
    positives = [_bce(2.0, 1), _bce(1.0, 1), _bce(-2.0, 1)]
    negatives = [_bce(v, 0) for v in (-1.0, 0.5, 0.0, -3.0, 1.5, -0.5)]
    expected = 0.5 * (sum(positives) / 3 + sum(negatives) / 6)
    assert balanced_pair_bce(logits, same).item() == pytest.approx(expected, rel=1e-6)


def test_same_instance_pairs_are_not_negatives() -> None:
    logits = torch.tensor([[1.0, 5.0], [5.0, 1.0]])
    same = torch.ones(2, 2, dtype=torch.bool)  # both rows are clips of one video
    # no negatives left: only the positives count (and nothing is NaN)
    assert balanced_pair_bce(logits, same).item() == pytest.approx(_bce(1.0, 1), rel=1e-6)
    same = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])
    logits3 = torch.zeros(3, 3)
    logits3[0, 1] = 100.0  # would be a terrible negative, but it is the same video
    assert balanced_pair_bce(logits3, same).item() == pytest.approx(0.5 * (_bce(0, 1) + _bce(0, 0)), rel=1e-6)


def test_paired_negatives_come_from_other_videos() -> None:
    index = torch.tensor([4, 4, 7, 9, 9, 9])
    partner = paired_negative_permutation(index)
    assert torch.all(index[partner] != index)
    distinct = torch.arange(5)
    torch.testing.assert_close(paired_negative_permutation(distinct), torch.roll(distinct, 1))


def test_paired_bce_by_hand() -> None:
    positives, negatives = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    expected = 0.5 * ((_bce(2.0, 1) + _bce(-1.0, 1)) / 2 + (_bce(0.5, 0) + _bce(-3.0, 0)) / 2)
    assert paired_bce(positives, negatives).item() == pytest.approx(expected, rel=1e-6)
