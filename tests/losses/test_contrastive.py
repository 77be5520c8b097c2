"""AVTS margin loss against hand computation."""
from __future__ import annotations

import pytest
import torch

from avssl.losses.contrastive import embedding_distance, margin_contrastive_loss


def test_distance_of_normalised_embeddings() -> None:
    d = embedding_distance(torch.tensor([[2.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 5.0], [-3.0, 0.0]]))
    torch.testing.assert_close(d, torch.tensor([2 ** 0.5, 2.0]))


def test_margin_loss_by_hand() -> None:
    d = torch.tensor([0.3, 0.5, 1.2, 0.9])
    y = torch.tensor([1, 0, 0, 1])
    # positives: d²; negatives: max(0, 0.99 − d)²
    expected = (0.3 ** 2 + (0.99 - 0.5) ** 2 + 0.0 + 0.9 ** 2) / 4
    assert margin_contrastive_loss(d, y, margin=0.99).item() == pytest.approx(expected, rel=1e-6)


def test_negatives_beyond_the_margin_have_no_gradient() -> None:
    d = torch.tensor([1.5, 0.2], requires_grad=True)
    margin_contrastive_loss(d, torch.tensor([0, 0]), margin=0.99).backward()
    assert d.grad[0].item() == 0.0 and d.grad[1].item() == pytest.approx(-2 * (0.99 - 0.2) / 2)
