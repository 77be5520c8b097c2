"""CAV-MAE's reconstruction and contrastive terms against hand computation and the official
formula."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from avssl.losses.cav_mae import (
    CONTRASTIVE_WEIGHT,
    DECODER_DEPTH,
    DECODER_DIM,
    DECODER_HEADS,
    RECONSTRUCTION_WEIGHT,
    TEMPERATURE,
    cav_mae_contrastive_loss,
    masked_reconstruction_loss,
    normalised_targets,
)


def test_constants_are_the_official_ones():
    assert (RECONSTRUCTION_WEIGHT, CONTRASTIVE_WEIGHT, TEMPERATURE) == (1.0, 0.01, 0.05)
    assert (DECODER_DIM, DECODER_DEPTH, DECODER_HEADS) == (512, 8, 16)


def test_normalised_targets_by_hand():
    out = normalised_targets(torch.tensor([[[1.0, 2.0, 3.0, 4.0]]]))
    var = 5.0 / 3.0  # unbiased: (2.25 + 0.25 + 0.25 + 2.25) / 3
    expected = torch.tensor([-1.5, -0.5, 0.5, 1.5]) / math.sqrt(var + 1e-6)
    torch.testing.assert_close(out[0, 0], expected)


def test_reconstruction_counts_masked_patches_only():
    prediction = torch.zeros(1, 2, 2)
    patches = torch.tensor([[[1.0, 3.0], [0.0, 0.0]]])
    # patch 0: (1 + 9) / 2 = 5; patch 1: 0
    loss = masked_reconstruction_loss(prediction, patches, torch.tensor([[1.0, 0.0]]), normalise=False)
    assert loss.item() == pytest.approx(5.0)
    loss = masked_reconstruction_loss(prediction, patches, torch.tensor([[1.0, 1.0]]), normalise=False)
    assert loss.item() == pytest.approx(2.5)
    # normalised: [1, 3] → mean 2, unbiased var 2 → ±1/√2; MSE against 0 is 1/2
    loss = masked_reconstruction_loss(prediction, patches, torch.tensor([[1.0, 0.0]]))
    assert loss.item() == pytest.approx(0.5, rel=1e-5)
    with pytest.raises(ValueError, match="must be B×N×P, B×N×P and B×N"):
        masked_reconstruction_loss(prediction, patches, torch.ones(1, 3))


def test_contrastive_by_hand():
    video = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    audio = torch.tensor([[2.0, 0.0], [1.0, 1.0]])  # normalised: [1, 0], [1/√2, 1/√2]
    s = 1 / math.sqrt(2) / 0.05
    # video 0 scores audios [20, s]; video 1 scores [0, s]
    one_way = 0.5 * (math.log1p(math.exp(s - 20)) + math.log1p(math.exp(-s)))
    assert cav_mae_contrastive_loss(video, audio).item() == pytest.approx(one_way, rel=1e-5)
    # audio 0 scores videos [20, 0]; audio 1 scores [s, s]
    other_way = 0.5 * (math.log1p(math.exp(-20)) + math.log(2))
    both = cav_mae_contrastive_loss(video, audio, bidirectional=True).item()
    assert both == pytest.approx(0.5 * (one_way + other_way), rel=1e-5)


def test_contrastive_is_the_official_formula():
    """-mean(diag(log_softmax(a·vᵀ / 0.05, dim=0))) of the official forward_contrastive."""
    torch.manual_seed(0)
    video, audio = torch.randn(6, 8), torch.randn(6, 8)
    a, v = F.normalize(audio, dim=-1), F.normalize(video, dim=-1)
    official = -torch.mean(torch.diag(F.log_softmax(a @ v.T / 0.05, dim=0)))
    torch.testing.assert_close(cav_mae_contrastive_loss(video, audio), official)
