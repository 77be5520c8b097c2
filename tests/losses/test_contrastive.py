"""AVTS margin loss, over paired and in-batch negatives, against hand computation."""
from __future__ import annotations

import pytest
import torch

from avssl.losses.contrastive import (
    embedding_distance,
    in_batch_margin_loss,
    margin_contrastive_loss,
    paired_margin_loss,
)


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


def test_paired_and_in_batch_margin_losses_by_hand() -> None:
    m = 0.99
    video = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    audio = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    index = torch.tensor([0, 1, 1])
    unit = [[x / sum(v * v for v in row) ** 0.5 for x in row] for row in video.tolist()]
    unit_audio = [[x / sum(v * v for v in row) ** 0.5 for x in row] for row in audio.tolist()]
    d = [[sum((p - q) ** 2 for p, q in zip(unit[i], unit_audio[j])) ** 0.5 for j in range(3)] for i in range(3)]
    d_pos = embedding_distance(video, audio)
    d_neg = torch.tensor([0.2, 1.5, 0.7])
    paired = (sum(d[i][i] ** 2 for i in range(3)) + sum(max(0.0, m - x) ** 2 for x in (0.2, 1.5, 0.7))) / 6
    assert paired_margin_loss(d_pos, d_neg, m).item() == pytest.approx(paired, rel=1e-6)
    positive = sum(d[i][i] ** 2 for i in range(3)) / 3
    other_video = [(0, 1), (0, 2), (1, 0), (2, 0)]  # rows 1 and 2: clips of one video
    easy = sum(max(0.0, m - d[i][j]) ** 2 for i, j in other_video) / 4
    no_hard = in_batch_margin_loss(video, audio, index, d_pos, torch.zeros(0), 0.25, m)
    assert no_hard.item() == pytest.approx(0.5 * (positive + easy), rel=1e-6)
    hard = in_batch_margin_loss(video, audio, index, d_pos, torch.tensor([0.3]), 0.25, m)
    assert hard.item() == pytest.approx(0.5 * (positive + 0.75 * easy + 0.25 * (m - 0.3) ** 2), rel=1e-6)
