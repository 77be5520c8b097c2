"""AVID + CMA: agreement positives, negative sampling, symmetry of the cross-modal loss."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from avssl.config import load_recipe
from avssl.losses.nce import sample_excluding
from avssl.tasks.pretext.avid import AVID, agreement_positives

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _avid(*overrides: str) -> AVID:
    config = load_recipe(RECIPES / "synth" / "avid_cma_small.yaml",
                         ["data.video.size=32", "task.num_instances=50", "task.num_negatives=16",
                          "task.cma_positives=4", "task.cma_negatives=8", *overrides])
    return AVID(OmegaConf.to_container(config, resolve=True))


def test_agreement_positives_match_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    video = F.normalize(torch.randn(30, 8, generator=g), dim=1)
    audio = F.normalize(torch.randn(30, 8, generator=g), dim=1)
    got = agreement_positives(video, audio, k=5, chunk=7)
    for i in range(30):
        rho = [min(float(video[i] @ video[j]), float(audio[i] @ audio[j])) if j != i else -9 for j in range(30)]
        best = sorted(range(30), key=lambda j: -rho[j])[:5]
        assert got[i].tolist() == sorted(best)


def test_sample_excluding_skips_the_excluded_and_splits_over_ranks() -> None:
    excluded = torch.tensor([[0, 3, 4], [1, 2, 9]])
    draws = sample_excluding(excluded, 10, 500, torch.Generator().manual_seed(0))
    for row, ex in zip(draws, excluded):
        assert set(row.tolist()) == set(range(10)) - set(ex.tolist())
    whole = sample_excluding(excluded, 10, 6, torch.Generator().manual_seed(1))
    second = sample_excluding(excluded[1:], 10, 6, torch.Generator().manual_seed(1), total_rows=2, row_offset=1)
    torch.testing.assert_close(second, whole[1:])


def test_num_negatives_must_be_below_the_number_of_instances() -> None:
    with pytest.raises(ValueError, match="num_negatives"):
        _avid("task.num_negatives=50")


def test_cross_modal_loss_is_symmetric_in_the_modalities() -> None:
    model = _avid()
    g = torch.Generator().manual_seed(0)
    v, a, index = torch.randn(6, 128, generator=g), torch.randn(6, 128, generator=g), torch.tensor([3, 7, 11, 20, 21, 40])
    loss = model.losses(v, a, index)["xid"]
    # swap the modalities: video embeddings and bank take the audio's place and vice versa
    model.video_bank.bank, model.audio_bank.bank = model.audio_bank.bank.clone(), model.video_bank.bank.clone()
    model.normalisers["v2a"], model.normalisers["a2v"] = model.normalisers["a2v"], model.normalisers["v2a"]
    swapped = model.losses(a, v, index)["xid"]
    assert swapped.item() == pytest.approx(loss.item(), rel=1e-6)


def test_cma_adds_the_positive_set_term_after_its_start_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _avid("task.cma_start_epoch=1")
    v, a, index = torch.randn(4, 128), torch.randn(4, 128), torch.tensor([0, 1, 2, 3])
    assert set(model.losses(v, a, index)) == {"xid"}
    monkeypatch.setattr(type(model), "current_epoch", property(lambda self: 1))
    model.on_train_epoch_start()
    assert model.positives.shape == (50, 4)
    assert not (model.positives == torch.arange(50)[:, None]).any(), "an instance is never its own positive"
    terms = model.losses(v, a, index)
    assert set(terms) == {"xid", "cma"} and torch.isfinite(terms["cma"])


def test_training_step_updates_the_banks_of_the_batch_only() -> None:
    model = _avid()
    before_v, before_a = model.video_bank.bank.clone(), model.audio_bank.bank.clone()
    batch = {"video": torch.randn(4, 3, 1, 32, 32), "audio": torch.randn(4, 1, 64, 101), "index": torch.tensor([5, 6, 7, 8])}
    out = model.training_step(batch, 0)
    assert torch.isfinite(out["loss"])
    changed = (model.video_bank.bank != before_v).any(1) | (model.audio_bank.bank != before_a).any(1)
    assert changed.nonzero().flatten().tolist() == [5, 6, 7, 8]
