"""Robust-xID: plain xID before the robust terms start, then weights and soft targets as
computed by hand on a tiny bank; recipe checks."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from avssl.config import load_recipe
from avssl.errors import RecipeError
from avssl.tasks.pretext import build_pretext_task
from avssl.tasks.pretext.robust_xid import RobustXID

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _task(*overrides: str) -> RobustXID:
    config = load_recipe(RECIPES / "synth" / "robust_xid_small.yaml",
                         ["data.video.size=32", "task.num_instances=4", "task.embedding_dim=2", *overrides])
    return RobustXID(OmegaConf.to_container(config, resolve=True))


def _at_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    monkeypatch.setattr(RobustXID, "current_epoch", property(lambda self: epoch))


def _phi(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


# unit vectors at these angles (radians): video and audio slots of 4 instances
VIDEO_ANGLES = [0.0, 0.5, 2.0, 3.0]
AUDIO_ANGLES = [0.1, 0.4, 2.2, 1.0]  # instance 3's audio is far from its video: a faulty positive


def _unit(angles: list[float]) -> torch.Tensor:
    return torch.tensor([[math.cos(t), math.sin(t)] for t in angles])


def test_before_the_start_epoch_it_is_in_batch_cross_modal_infonce(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _task()
    _at_epoch(monkeypatch, 15)
    g = torch.Generator().manual_seed(0)
    v, a = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    terms = model.losses(v, a, torch.tensor([0, 2, 3]))
    assert set(terms) == {"xid"}
    logits = F.normalize(v, dim=1) @ F.normalize(a, dim=1).T / 0.5
    expected = 0.5 * sum(-torch.log_softmax(m, dim=1).diag().mean() for m in (logits, logits.T))
    assert terms["xid"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_robust_terms_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """δ = −1, κ = ½, λ = ½, T_s = 0.1 (the CPU recipe's), batch = instances 0, 1 and 3."""
    model = _task()
    _at_epoch(monkeypatch, 16)
    model.video_bank.bank.copy_(_unit(VIDEO_ANGLES))
    model.audio_bank.bank.copy_(_unit(AUDIO_ANGLES))
    index = [0, 1, 3]
    g = torch.Generator().manual_seed(1)
    v, a = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    terms = model.losses(v, a, torch.tensor(index))

    similarity = [math.cos(tv - ta) for tv, ta in zip(VIDEO_ANGLES, AUDIO_ANGLES)]
    mean = sum(similarity) / 4
    std = math.sqrt(sum((s - mean) ** 2 for s in similarity) / 3)
    weights = [_phi((similarity[i] - (mean - std)) / (0.5 * std)) for i in index]
    assert weights[2] < 0.2 < 0.99 < min(weights[:2]), "the faulty positive counts least"
    assert terms["mean_weight"].item() == pytest.approx(sum(weights) / 3, rel=1e-5)

    def direction(query: torch.Tensor, partner: torch.Tensor, angles: list[float]) -> float:
        q, p = F.normalize(query, dim=1), F.normalize(partner, dim=1)
        total = 0.0
        for row, i in enumerate(index):
            # candidates: own positive, then the two other clips of the batch
            others = [c for c in range(3) if c != row]
            scores = torch.tensor([float(q[row] @ p[row])] + [float(q[row] @ p[c]) for c in others]) / 0.5
            relations = torch.tensor([1.0] + [math.cos(angles[i] - angles[index[c]]) for c in others])
            soft = torch.softmax(relations / 0.1, dim=0)
            target = 0.5 * torch.tensor([1.0, 0.0, 0.0]) + 0.5 * soft
            total += weights[row] * float(-(target * torch.log_softmax(scores, dim=0)).sum())
        return total / sum(weights)

    expected = 0.5 * (direction(v, a, VIDEO_ANGLES) + direction(a, v, AUDIO_ANGLES))
    assert terms["xid"].item() == pytest.approx(expected, rel=1e-5)


def test_each_robust_term_can_be_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    _at_epoch(monkeypatch, 16)
    v, a, index = torch.randn(3, 2), torch.randn(3, 2), torch.tensor([0, 1, 3])
    plain = _task("task.robust_start_epoch=null").losses(v, a, index)["xid"]
    neither = _task("task.faulty_positive_weights=false", "task.soft_targets=false").losses(v, a, index)
    assert set(neither) == {"xid"} and neither["xid"].item() == pytest.approx(plain.item(), rel=1e-6)
    assert "mean_weight" in _task("task.soft_targets=false").losses(v, a, index)


def test_bank_negatives_with_bank_positives_run_and_are_symmetric(monkeypatch: pytest.MonkeyPatch) -> None:
    _at_epoch(monkeypatch, 16)
    model = _task("task.positives=bank", "task.batch_negatives=false", "task.num_negatives=2")
    g = torch.Generator().manual_seed(2)
    v, a, index = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g), torch.tensor([0, 1, 3])
    loss = model.losses(v, a, index)["xid"]
    assert torch.isfinite(loss) and loss.item() > 0
    model.video_bank.bank, model.audio_bank.bank = model.audio_bank.bank.clone(), model.video_bank.bank.clone()
    assert model.losses(a, v, index)["xid"].item() == pytest.approx(loss.item(), rel=1e-6)


def test_the_robust_constants_have_no_defaults() -> None:
    config = load_recipe(RECIPES / "synth" / "robust_xid_small.yaml",
                         ["task.num_instances=4", "task.weight_delta=null", "task.target_temperature=null"])
    with pytest.raises(RecipeError) as caught:
        build_pretext_task(config)
    assert str(caught.value) == ("task.robust_start_epoch is set: the recipe must set task.weight_delta, "
                                 "task.target_temperature")


def test_bank_negatives_must_be_fewer_than_the_instances() -> None:
    with pytest.raises(RecipeError, match=r"task.num_negatives \(4\) must be below"):
        _task("task.positives=bank", "task.batch_negatives=false", "task.num_negatives=4")
