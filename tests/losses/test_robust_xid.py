"""Robust xID pieces against hand computation."""
from __future__ import annotations

import math

import pytest
import torch

from avssl.losses.nce import MemoryBank, softmax_instance_loss
from avssl.losses.robust_xid import (
    bank_positive_similarity,
    faulty_positive_weights,
    smoothed_targets,
    soft_instance_loss,
    within_modal_similarity,
)


def _phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def _bank(rows: list[list[float]]) -> MemoryBank:
    bank = MemoryBank(len(rows), len(rows[0]))
    bank.bank.copy_(torch.tensor(rows))
    return bank


def test_weights_by_hand() -> None:
    reference = torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8])  # μ = 0.4, σ (unbiased) = √0.1
    sigma = math.sqrt(0.1)
    s = torch.tensor([0.4, 0.0, 0.8])
    w = faulty_positive_weights(s, reference, delta=-1.0, kappa=0.5)
    expected = [_phi((x - (0.4 - sigma)) / (0.5 * sigma)) for x in (0.4, 0.0, 0.8)]
    torch.testing.assert_close(w, torch.tensor(expected))
    assert w[1] < w[0] < w[2]  # the least corresponding pair weighs least
    assert faulty_positive_weights(torch.tensor([0.4]), reference, 0.0, 1.0).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="kappa must be positive"):
        faulty_positive_weights(s, reference, 0.0, 0.0)


def test_bank_positive_similarity() -> None:
    video, audio = _bank([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]), _bank([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
    torch.testing.assert_close(bank_positive_similarity(video, audio), torch.tensor([0.6, 1.0, 0.6]))


def test_within_modal_similarity_and_targets_by_hand() -> None:
    bank = _bank([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
    relations = within_modal_similarity(bank, torch.tensor([0, 2]), torch.tensor([[1, 3], [0, 3]]))
    torch.testing.assert_close(relations, torch.tensor([[1.0, 0.0, 0.8], [1.0, 0.6, 0.96]]))
    targets = smoothed_targets(relations, smoothing=0.5, temperature=0.1)
    row = [math.exp(x / 0.1) for x in (1.0, 0.0, 0.8)]
    expected = [0.5 + 0.5 * row[0] / sum(row), 0.5 * row[1] / sum(row), 0.5 * row[2] / sum(row)]
    torch.testing.assert_close(targets[0], torch.tensor(expected))
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(2))
    assert torch.equal(smoothed_targets(relations, 0.0, 0.1), torch.tensor([[1.0, 0, 0], [1.0, 0, 0]]))
    with pytest.raises(ValueError, match="smoothing must lie in"):
        smoothed_targets(relations, 1.5, 0.1)


def test_soft_weighted_loss_by_hand() -> None:
    positive = torch.tensor([2.0, 0.0])
    negative = torch.tensor([[1.0, 0.0], [1.0, 3.0]])
    # no targets, no weights: xID's softmax loss
    torch.testing.assert_close(soft_instance_loss(positive, negative), softmax_instance_loss(positive, negative))
    targets = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    weights = torch.tensor([0.25, 0.75])
    lse = [math.log(math.exp(2) + math.exp(1) + 1), math.log(1 + math.exp(1) + math.exp(3))]
    per_query = [0.5 * (lse[0] - 2) + 0.5 * (lse[0] - 1), lse[1] - 0]
    expected = (0.25 * per_query[0] + 0.75 * per_query[1]) / 1.0
    assert soft_instance_loss(positive, negative, targets, weights).item() == pytest.approx(expected, rel=1e-6)


def test_weights_carry_no_gradient_and_zero_weight_drops_a_query() -> None:
    positive = torch.tensor([2.0, 0.0], requires_grad=True)
    negative = torch.tensor([[1.0, 0.0], [1.0, 3.0]], requires_grad=True)
    weights = torch.tensor([0.0, 2.0], requires_grad=True)
    soft_instance_loss(positive, negative, weights=weights).backward()
    assert positive.grad[0].item() == 0.0 and positive.grad[1].item() != 0.0 and weights.grad is None


def test_a_masked_candidate_adds_nothing() -> None:
    """A −inf score with target 0 (a batch negative of the query's own instance) leaves the
    loss as without that column, and finite, gradient included."""
    positive = torch.tensor([[1.0]], requires_grad=True)
    negative = torch.tensor([[0.5, -float("inf")]])
    targets = torch.tensor([[0.75, 0.25, 0.0]])
    loss = soft_instance_loss(positive, negative, targets)
    p = torch.softmax(torch.tensor([1.0, 0.5]), dim=0)
    assert loss.item() == pytest.approx(-(0.75 * math.log(p[0]) + 0.25 * math.log(p[1])), rel=1e-6)
    loss.backward()
    assert torch.isfinite(positive.grad).all()
