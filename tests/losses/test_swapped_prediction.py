"""SwAV's swapped prediction across modalities against SwAV's own loop."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from avssl.losses.swapped_prediction import swapped_prediction_loss


def _swav_codes_by_hand(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    # SwAV's loop on Q = exp(s/ε)ᵀ (K×B): rows (prototypes) to 1/K, columns (samples) to 1/B
    q = torch.exp(scores.double() / epsilon).T
    q /= q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True) / k
        q = q / q.sum(dim=0, keepdim=True) / b
    return (q * b).T  # B×K, each sample's code sums to 1


def test_swapped_prediction_loss_by_hand_and_symmetric() -> None:
    g = torch.Generator().manual_seed(0)
    video, audio = torch.randn(6, 3, generator=g).tanh(), torch.randn(6, 3, generator=g).tanh()
    q_v, q_a = _swav_codes_by_hand(video, 0.5, 3), _swav_codes_by_hand(audio, 0.5, 3)
    expected = 0.5 * (-(q_v * F.log_softmax(audio.double() / 0.1, 1)).sum(1).mean()
                      - (q_a * F.log_softmax(video.double() / 0.1, 1)).sum(1).mean())
    got = swapped_prediction_loss(video, audio, epsilon=0.5, temperature=0.1, iterations=3)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert swapped_prediction_loss(audio, video, 0.5, 0.1, 3).item() == pytest.approx(got.item(), rel=1e-6)
