"""LVS tri-map loss against hand computation."""
from __future__ import annotations

import math

import pytest
import torch

from avssl.losses.lvs import (
    EPSILON_NEGATIVE,
    EPSILON_POSITIVE,
    TEMPERATURE,
    TRIMAP_TAU,
    lvs_logits,
    lvs_loss,
    share_threshold,
    soft_region,
)

# two images of 1×2 locations in 2-D, two audios: every similarity is a number chosen here


def _image(*locations: list[float]) -> torch.Tensor:
    """D×1×L feature map whose locations (left to right) are the given D-vectors."""
    return torch.tensor(locations).T[:, None, :]


VIDEO = torch.stack([_image([1.0, 0.0], [0.0, 1.0]), _image([0.8, 0.6], [0.6, 0.8])])
AUDIO = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # normalised: [1,0], [0,1]
# S[i, j] = image i's locations against audio j
S = {(0, 0): [1.0, 0.0], (0, 1): [0.0, 1.0], (1, 0): [0.8, 0.6], (1, 1): [0.6, 0.8]}


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _mean(values: list[float], weights: list[float]) -> float:
    return sum(w * v for v, w in zip(values, weights)) / sum(weights)


def test_the_official_constants() -> None:
    assert (EPSILON_POSITIVE, EPSILON_NEGATIVE, TRIMAP_TAU, TEMPERATURE) == (0.65, 0.4, 0.03, 0.07)


def test_logits_by_hand() -> None:
    out = lvs_logits(VIDEO, AUDIO)
    assert VIDEO.shape == (2, 2, 1, 2) and out.logits.shape == (2, 3) and out.heatmap.shape == (2, 1, 2)

    def positive(s: list[float]) -> list[float]:
        return [_sigmoid((x - 0.65) / 0.03) for x in s]

    def negative(s: list[float]) -> list[float]:
        return [1 - _sigmoid((x - 0.4) / 0.03) for x in s]

    expected = []
    for i in range(2):
        own, other = S[(i, i)], S[(i, 1 - i)]
        expected.append([_mean(own, positive(own)), _mean(other, positive(other)), _mean(own, negative(own))])
    torch.testing.assert_close(out.logits, torch.tensor(expected) / 0.07)
    # the first row by eye: own audio hits location 0 (S = 1), the other audio location 1
    # (S = 1); the own map's negative region is location 1 (S = 0)
    torch.testing.assert_close(out.logits[0], torch.tensor([1.0, 1.0, 0.0]) / 0.07, atol=1e-4, rtol=0)
    torch.testing.assert_close(out.heatmap, torch.tensor([[S[(0, 0)]], [S[(1, 1)]]]))
    loss = lvs_loss(out.logits)
    by_hand = sum(math.log(sum(math.exp(x / 0.07) for x in row)) - row[0] / 0.07 for row in expected) / 2
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)


def test_uncertain_band_is_in_neither_region() -> None:
    video = _image([0.5, math.sqrt(0.75)], [1.0, 0.0])[None]  # S = 0.5 and 1 with [1,0]
    out = lvs_logits(video, torch.tensor([[1.0, 0.0]]))
    in_band_positive, in_band_negative = out.positive_mask[0, 0, 0].item(), out.negative_mask[0, 0, 0].item()
    assert in_band_positive == pytest.approx(_sigmoid(-0.15 / 0.03), rel=1e-5) and in_band_positive < 0.01
    assert in_band_negative == pytest.approx(1 - _sigmoid(0.1 / 0.03), rel=1e-5) and in_band_negative < 0.04
    assert out.logits.shape == (1, 2)  # one image: no other audio, positive and hard negative


def test_without_hard_negatives_and_empty_region() -> None:
    # every location far above ε_n: the negative region underflows to zero mass, score 0 (not NaN)
    video = torch.ones(2, 2, 2, 2)
    out = lvs_logits(video, torch.ones(2, 2), tau=1e-4)
    assert torch.isfinite(out.logits).all() and out.logits[:, 2].abs().max().item() == 0.0
    assert lvs_logits(video, torch.ones(2, 2), hard_negatives=False).logits.shape == (2, 2)
    with pytest.raises(ValueError, match="must not exceed"):
        lvs_logits(video, torch.ones(2, 2), epsilon_positive=0.3, epsilon_negative=0.4)


def test_gradient_reaches_both_modalities() -> None:
    video = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(0), requires_grad=True)
    audio = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    lvs_loss(lvs_logits(video, audio).logits).backward()
    assert video.grad.abs().sum() > 0 and audio.grad.abs().sum() > 0


def test_region_shares_use_each_maps_own_quantiles() -> None:
    # one image of 1×5 locations against one audio [1, 0]: S = 0.1, 0.3, 0.5, 0.7, 0.9
    values = [0.1, 0.3, 0.5, 0.7, 0.9]
    video = torch.tensor([[x, math.sqrt(1 - x * x)] for x in values]).T[None, :, None, :]  # 1×2×1×5
    audio = torch.tensor([[1.0, 0.0]])
    out = lvs_logits(video, audio, tau=0.05, positive_share=0.2, negative_share=0.4)
    # linear-interpolated quantiles over 5 locations: q(0.8) at position 3.2 → 0.74, q(0.4) at 1.6 → 0.42
    positive = [_sigmoid((x - 0.74) / 0.05) for x in values]
    negative = [1 - _sigmoid((x - 0.42) / 0.05) for x in values]
    torch.testing.assert_close(out.positive_mask[0, 0], torch.tensor(positive))
    torch.testing.assert_close(out.negative_mask[0, 0], torch.tensor(negative))
    torch.testing.assert_close(out.logits[0], torch.tensor([_mean(values, positive), _mean(values, negative)]) / 0.07)
    # the constants would put only S = 0.9 in the positive region; the shares follow the map: the same
    # map lowered by 0.3 keeps the same positive mask
    lowered = torch.tensor([[[x - 0.3 for x in values]]])
    torch.testing.assert_close(soft_region(lowered, share_threshold(lowered, 0.2), 0.05), out.positive_mask)


def test_region_shares_are_checked() -> None:
    video, audio = torch.randn(2, 2, 1, 3), torch.randn(2, 2)
    with pytest.raises(ValueError, match="set both or neither"):
        lvs_logits(video, audio, positive_share=0.2)
    with pytest.raises(ValueError, match=r"negative_share must be in \(0, 1\), got 1.0"):
        lvs_logits(video, audio, positive_share=0.2, negative_share=1.0)
    with pytest.raises(ValueError, match=r"must be at most 1, got 0.5 \+ 0.6"):
        lvs_logits(video, audio, positive_share=0.5, negative_share=0.6)
