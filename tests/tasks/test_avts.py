"""AVTS: curriculum, negative mixing, the views it declares, the sync accuracy."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from avssl.config import load_recipe
from avssl.errors import RecipeError
from avssl.losses.contrastive import embedding_distance
from avssl.tasks.pretext.avts import AVTS, AVTSCurriculum

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _avts(*overrides: str) -> AVTS:
    # the paper's margin loss alone unless a test asks for the CPU recipe's InfoNCE beside it
    config = load_recipe(RECIPES / "synth" / "avts_small.yaml",
                         ["data.video.size=32", "task.contrastive_weight=0.0", *overrides])
    return AVTS(OmegaConf.to_container(config, resolve=True))


def _batch(b: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"video": torch.randn(b, 3, 1, 32, 32, generator=g), "audio": torch.randn(b, 1, 64, 101, generator=g),
            "audio_hard": torch.randn(b, 1, 64, 101, generator=g), "index": torch.arange(b)}


def test_curriculum_switches_from_easy_to_the_hard_fraction() -> None:
    curriculum = AVTSCurriculum(hard_start_epoch=3, hard_fraction=0.25)
    assert [curriculum.fractions(e) for e in (0, 2, 3, 10)] == [(0.0, 0.0), (0.0, 0.0), (0.25, 0.0), (0.25, 0.0)]
    with pytest.raises(ValueError, match="must lie in"):
        AVTSCurriculum(0, 0.8, 0.5)


def test_task_declares_a_non_overlapping_hard_view_and_the_curriculum_callback() -> None:
    model = _avts()
    views = model.views().audio
    assert views["audio_hard"].offset == "shifted" and views["audio_hard"].min_shift_seconds == 0.5
    assert "audio_superhard" not in views, "super-hard negatives are off by default"
    assert any(isinstance(c, AVTSCurriculum) for c in model.configure_callbacks())
    assert "audio_superhard" in _avts("task.super_hard=true").views().audio
    with pytest.raises(RecipeError, match=r"^task\.super_hard_fraction > 0 needs task\.super_hard=true"):
        _avts("task.super_hard_fraction=0.1")


def test_held_out_sync_reads_several_clips_per_video_training_one() -> None:
    model = _avts()  # the CPU recipe: 4
    assert model.eval_views().clips_per_video == 4 and model.views().clips_per_video == 1
    assert model.eval_views().audio["audio_hard"] == model.views().audio["audio_hard"]
    assert _avts("task.held_out_clips_per_video=1").eval_views().clips_per_video == 1
    with pytest.raises(RecipeError, match=r"^task\.held_out_clips_per_video must be at least 1, got 0"):
        _avts("task.held_out_clips_per_video=0")


def test_negative_kinds_follow_the_fractions() -> None:
    model = _avts()
    torch.manual_seed(0)
    assert (model.negative_kinds(1000, torch.device("cpu")) == 0).all()
    model.hard_fraction = 0.25
    kinds = model.negative_kinds(4000, torch.device("cpu"))
    assert abs((kinds == 1).float().mean().item() - 0.25) < 0.03 and not (kinds == 2).any()


def test_every_batch_holds_each_kind_at_its_share() -> None:
    """A kind whose share is a whole number of clips is drawn exactly that often in every
    batch (one draw per clip left 4 clips at 25 % without a hard negative 32 % of the time);
    a fractional share is rounded up or down at random, right on average."""
    model = _avts("task.super_hard=true")
    model.hard_fraction, model.super_hard_fraction = 0.25, 0.25
    torch.manual_seed(0)
    for _ in range(200):
        kinds = model.negative_kinds(4, torch.device("cpu"))
        assert torch.bincount(kinds, minlength=3).tolist() == [2, 1, 1]
    model.super_hard_fraction = 0.0
    model.hard_fraction = 0.3
    counts = [int((model.negative_kinds(5, torch.device("cpu")) == 1).sum()) for _ in range(2000)]
    assert set(counts) == {1, 2} and abs(sum(counts) / 2000 - 1.5) < 0.06


def test_hard_negatives_are_the_shifted_audio() -> None:
    """With every negative hard and the hard window identical to the aligned one, the
    negatives sit at the positives' distance: the loss is then exactly computable."""
    model = _avts().eval()  # eval: BatchNorm uses running stats, so the two passes agree
    batch = _batch()
    batch["audio_hard"] = batch["audio"].clone()
    model.hard_fraction = 1.0
    out = model.training_step(batch, 0)
    _, v = model.embed_video(batch["video"])
    _, a = model.embed_audio(batch["audio"])
    d = embedding_distance(v, a)
    expected = 0.5 * (d.pow(2).mean() + torch.relu(0.99 - d).pow(2).mean())
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert set(out["embeddings"]) == {"video", "audio"}
    assert out["embeddings"]["video"].shape == (8, model.video_encoder.embedding_dim)


def test_sync_accuracy_counts_aligned_closer_than_shifted(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _avts().eval()
    logged: dict[str, float] = {}
    monkeypatch.setattr(model, "log", lambda name, value, **kw: logged.__setitem__(name, float(value)))
    batch = _batch(4)
    batch["audio_hard"] = batch["audio"].clone()  # a tie is not "closer": accuracy 0
    model.validation_step(batch, 0)
    assert logged["val/sync_accuracy"] == 0.0


def test_in_batch_negatives_weigh_hard_ones_by_their_share() -> None:
    # training mode: with fresh BatchNorm statistics in eval mode every clip embeds to ~the
    # same point, and every distance is equal, so no weighing could be told apart
    model = _avts("task.negatives=in_batch").train()
    batch = _batch(6)
    model.hard_fraction = 0.25
    torch.manual_seed(3)
    out = model.training_step(batch, 0)
    torch.manual_seed(3)
    kinds = model.negative_kinds(6, torch.device("cpu"))
    _, v = model.embed_video(batch["video"])
    _, a_all = model.embed_audio(torch.cat([batch["audio"], batch["audio_hard"]]))
    a, hard = a_all[:6], a_all[6:]
    d = torch.cdist(torch.nn.functional.normalize(v, dim=-1), torch.nn.functional.normalize(a, dim=-1))
    off = ~torch.eye(6, dtype=torch.bool)
    positive = d.diagonal().pow(2).mean()
    easy = torch.relu(0.99 - d[off]).pow(2).mean()
    chosen = kinds == 1
    assert bool(chosen.any())
    hard_term = torch.relu(0.99 - embedding_distance(v[chosen], hard[chosen])).pow(2).mean()
    expected = 0.5 * (positive + 0.75 * easy + 0.25 * hard_term)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_contrastive_weight_adds_the_info_nce_to_the_margin_loss() -> None:
    batch = _batch(6)
    losses = {}
    for weight in (0.0, 0.5):
        torch.manual_seed(0)
        model = _avts("task.negatives=in_batch", f"task.contrastive_weight={weight}").train()
        model.hard_fraction = 0.5
        torch.manual_seed(2)
        losses[weight] = model.training_step(batch, 0)
    # the same weights (seed 0) and BatchNorm batches as the steps; the InfoNCE's own projections
    video = model.video_encoder(batch["video"])
    audio = model.audio_encoder(torch.cat([batch["audio"], batch["audio_hard"]]))[:6]
    v = torch.nn.functional.normalize(model.video_contrastive(video), dim=-1)
    a = torch.nn.functional.normalize(model.audio_contrastive(audio), dim=-1)
    logits = (v @ a.T / 0.5).double()
    info_nce = -0.5 * (logits.log_softmax(1).diagonal().mean() + logits.log_softmax(0).diagonal().mean())
    assert set(losses[0.5]["terms"]) == {"margin", "info_nce"}
    assert losses[0.5]["loss"].item() == pytest.approx(losses[0.0]["loss"].item() + 0.5 * info_nce.item(), rel=1e-5)
    assert (v @ a.T).std() > 0.01, "scores that differ: the temperature matters"
    with pytest.raises(RecipeError) as caught:
        _avts("task.contrastive_weight=-1")
    assert str(caught.value) == "task.contrastive_weight must be a number >= 0, got -1"
    with pytest.raises(RecipeError) as caught:
        _avts("task.contrastive_temperature=0")
    assert str(caught.value) == "task.contrastive_temperature must be a number > 0, got 0"
