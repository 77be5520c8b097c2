"""AVE-Net and AVOL-Net heads against hand computation."""
from __future__ import annotations

import math

import pytest
import torch

from avssl.losses.avenet import AVENetHead, AVOLNetHead, avol_loss, correspondence_loss


def test_avenet_distance_and_fc_by_hand() -> None:
    head = AVENetHead()
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor([[1.0], [-2.0]]))
        head.fc.bias.copy_(torch.tensor([0.5, 1.0]))
    video = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    audio = torch.tensor([[1.0, 0.0], [5.0, 0.0]])  # pair 0 aligned (d = 0), pair 1 orthogonal (d = √2)
    logits = head(video, audio)
    d = math.sqrt(2)
    torch.testing.assert_close(logits, torch.tensor([[0.5, 1.0], [0.5 + d, 1.0 - 2 * d]]))
    target = torch.tensor([1, 0])
    by_hand = (math.log(math.exp(0.5) + math.exp(1.0)) - 1.0
               + math.log(math.exp(0.5 + d) + math.exp(1 - 2 * d)) - (0.5 + d)) / 2
    assert correspondence_loss(logits, target).item() == pytest.approx(by_hand, rel=1e-6)
    assert head.fc.weight.shape == (2, 1)


def test_avol_map_calibration_and_max_pool_by_hand() -> None:
    head = AVOLNetHead(scale=2.0, bias=-1.0)
    # clip 0: 1×3 locations [1,0], [0,1], [−1,0]; clip 1: [0,4], [3,0], [0,−1]
    video = torch.tensor([[[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]], [[0.0, 3.0, 0.0], [4.0, 0.0, -1.0]]])[:, :, None, :]
    audio = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    out = head(video, audio)
    cosine = torch.tensor([[[1.0, 0.0, -1.0]], [[1.0, 0.0, -1.0]]])
    torch.testing.assert_close(out.heatmap, 2 * cosine - 1)
    torch.testing.assert_close(out.logit, torch.tensor([1.0, 1.0]))
    target = torch.tensor([1.0, 0.0])
    by_hand = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(1.0))) / 2
    assert avol_loss(out.logit, target).item() == pytest.approx(by_hand, rel=1e-6)


def test_avol_unnormalised_and_gradients() -> None:
    head = AVOLNetHead(normalize=False)
    video = torch.tensor([[[[2.0, 1.0]], [[0.0, 0.0]]]], requires_grad=True)  # 1×2×1×2
    audio = torch.tensor([[3.0, 1.0]], requires_grad=True)
    out = head(video, audio)
    torch.testing.assert_close(out.heatmap, torch.tensor([[[6.0, 3.0]]]))
    avol_loss(out.logit, torch.tensor([1.0])).backward()
    # only the max location (and the audio) get a gradient: multiple-instance pooling
    assert video.grad[0, 0, 0, 1].item() == 0.0 and video.grad[0, 0, 0, 0].item() != 0.0
    assert head.scale.grad.item() == pytest.approx(-(1 - 1 / (1 + math.exp(-6.0))) * 6.0, rel=1e-4)  # float32 σ(6)


def test_avenet_starts_with_log_odds_five_minus_five_times_the_distance() -> None:
    logits = AVENetHead()(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[2.0, 0.0], [-1.0, 0.0]]))
    torch.testing.assert_close(logits[:, 1] - logits[:, 0], torch.tensor([5.0, -5.0]))
