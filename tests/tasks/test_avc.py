"""AVC: the fusion head, the balanced loss against hand-computed values, negatives."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from avssl.tasks.pretext.avc import PairwiseFusion, balanced_pair_bce
from avssl.tasks.pretext.base import paired_negative_permutation

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


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


def test_all_pairs_matches_concatenated_mlp() -> None:
    torch.manual_seed(0)
    fusion = PairwiseFusion(5, 4, 7)
    video, audio = torch.randn(3, 5), torch.randn(3, 4)
    grid = fusion.all_pairs(video, audio)
    weight = torch.cat([fusion.video_proj.weight, fusion.audio_proj.weight], dim=1)
    for i in range(3):
        for j in range(3):
            hidden = torch.relu(weight @ torch.cat([video[i], audio[j]]) + fusion.video_proj.bias)
            assert grid[i, j].item() == pytest.approx((fusion.out.weight @ hidden + fusion.out.bias).item(), abs=1e-5)
    torch.testing.assert_close(fusion(video, audio), grid.diagonal())


def test_paired_negatives_come_from_other_videos() -> None:
    index = torch.tensor([4, 4, 7, 9, 9, 9])
    partner = paired_negative_permutation(index)
    assert torch.all(index[partner] != index)
    distinct = torch.arange(5)
    torch.testing.assert_close(paired_negative_permutation(distinct), torch.roll(distinct, 1))


def _avc(**task: object) -> torch.nn.Module:
    from omegaconf import OmegaConf

    from avssl.config import load_recipe
    from avssl.tasks.pretext.avc import AVC

    overrides = [f"task.{key}={value}" for key, value in task.items()]
    config = load_recipe(RECIPES / "synth" / "avc_small.yaml", overrides)
    return AVC(OmegaConf.to_container(config, resolve=True))


def test_embedding_batchnorm_makes_the_loss_blind_to_embedding_offset_and_scale() -> None:
    torch.manual_seed(0)
    model = _avc(embedding_norm="batchnorm").train()
    d = model.video_encoder.embedding_dim
    video, audio, index = torch.rand(8, d), torch.rand(8, d), torch.arange(8)
    loss, _ = model.correspondence(video, audio, index, "in_batch")
    shifted, _ = model.correspondence(3 * video + 5, 0.5 * audio - 2, index, "in_batch")
    assert shifted.item() == pytest.approx(loss.item(), rel=1e-4)
    plain = _avc(embedding_norm="none").train()
    plain.load_state_dict(model.state_dict(), strict=False)
    base, _ = plain.correspondence(video, audio, index, "in_batch")
    moved, _ = plain.correspondence(3 * video + 5, 0.5 * audio - 2, index, "in_batch")
    assert moved.item() != pytest.approx(base.item(), rel=1e-2)


def test_unknown_embedding_norm_is_an_error() -> None:
    with pytest.raises(ValueError, match="embedding_norm must be batchnorm or none"):
        _avc(embedding_norm="layernorm")
