"""SeLaVi: shared labels from both modalities, the warm-up, the online variant, checkpoints of the bank."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from avssl.config import load_recipe
from avssl.errors import RecipeError
from avssl.tasks.pretext.selavi import SeLaVi

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _selavi(*overrides: str) -> SeLaVi:
    config = load_recipe(RECIPES / "synth" / "selavi_small.yaml",
                         ["data.video.size=32", "task.num_instances=24", "task.num_clusters=3", "task.num_heads=2",
                          "task.contrastive_warmup_epochs=0", "task.contrastive_weight=0.0",
                          *overrides])  # the paper's loss (the CPU recipe warms up and keeps the InfoNCE)
    return SeLaVi(OmegaConf.to_container(config, resolve=True))


def _batch(index: list[int]) -> dict[str, torch.Tensor]:
    b = len(index)
    return {"video": torch.randn(b, 3, 1, 32, 32), "audio": torch.randn(b, 1, 64, 101), "index": torch.tensor(index),
            "label": torch.zeros(b, dtype=torch.long)}


def test_num_clusters_is_required() -> None:
    with pytest.raises(ValueError, match="num_clusters"):
        _selavi("task.num_clusters=0")


def test_first_epoch_only_fills_the_bank_then_labels_are_shared_and_balanced() -> None:
    model = _selavi()
    for start in range(0, 24, 8):
        out = model.training_step(_batch(list(range(start, start + 8))), 0)
        assert out["loss"].item() == 0.0
    assert bool(model.label_bank.seen.all())
    model.label_bank.relabel()
    counts = torch.stack([torch.bincount(model.label_bank.labels[h], minlength=3) for h in range(2)])
    assert counts.min() >= 5, "Gaussian marginals around 8 per cluster"
    model.eval()  # no dropout, running BN statistics: two passes agree
    batch = _batch([0, 1, 2, 3])
    out = model.training_step(batch, 0)
    # ½ CE(video heads) + ½ CE(audio heads) against the same labels, by hand:
    v, a = model.head_logits(model.video_encoder(batch["video"]), model.audio_encoder(batch["audio"]))
    targets = model.label_bank.labels[:, :4]
    expected = sum(0.5 * (F.cross_entropy(v[h], targets[h]) + F.cross_entropy(a[h], targets[h])) for h in range(2)) / 2
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_contrastive_warmup_trains_the_encoders_before_the_first_labels() -> None:
    model = _selavi("task.contrastive_warmup_epochs=3")
    batch = _batch(list(range(8)))
    out = model.training_step(batch, 0)
    assert out["loss"].item() > 0 and int(model.label_bank.labelings_done) == 0
    out["loss"].backward()
    assert model.video_encoder.blocks[0][0].weight.grad.abs().sum() > 0
    head_parameters = model.video_heads.parameters()
    assert all(p.grad is None or not p.grad.any() for p in head_parameters), "no labels, no head gradient"
    # training mode (batch statistics): in eval mode fresh BatchNorm maps every clip to ~one
    # point, all scores are equal and the loss is ln B whatever the temperature
    z_v = F.normalize(model.video_warmup_projection(model.video_encoder(batch["video"])), dim=1)
    z_a = F.normalize(model.audio_warmup_projection(model.audio_encoder(batch["audio"])), dim=1)
    assert (z_v @ z_a.T).std() > 0.01
    assert model.task_config.contrastive_temperature == 0.5  # the recipe's
    logits = (z_v @ z_a.T / 0.5).double()
    by_hand = -0.5 * (logits.log_softmax(1).diagonal().mean() + logits.log_softmax(0).diagonal().mean())
    assert model.training_step(batch, 0)["loss"].item() == pytest.approx(by_hand.item(), rel=1e-5)
    model.trainer = type("T", (), {"estimated_stepping_batches": 100, "max_epochs": 10})()  # 10 steps an epoch
    assert model.schedule()[0] == 30, "first labelling at the end of the warm-up"
    with pytest.raises(RecipeError) as caught:
        _selavi("task.contrastive_warmup_epochs=-1")
    assert str(caught.value) == "task.contrastive_warmup_epochs must be an integer >= 0, got -1"


def test_contrastive_weight_keeps_the_info_nce_beside_the_clustering_loss() -> None:
    model = _selavi("task.contrastive_warmup_epochs=1", "task.contrastive_weight=0.5", "task.head_dropout=0")
    for start in range(0, 24, 8):
        model.training_step(_batch(list(range(start, start + 8))), 0)
    model.label_bank.relabel()
    batch = _batch(list(range(8)))
    out = model.training_step(batch, 0)  # training mode (as the warm-up test), no head dropout
    video, audio = model.video_encoder(batch["video"]), model.audio_encoder(batch["audio"])
    v, a = model.head_logits(video, audio)
    targets = model.label_bank.labels[:, :8]
    clustering = sum(0.5 * (F.cross_entropy(v[h], targets[h]) + F.cross_entropy(a[h], targets[h]))
                     for h in range(2)) / 2
    z_v = F.normalize(model.video_warmup_projection(video), dim=1)
    z_a = F.normalize(model.audio_warmup_projection(audio), dim=1)
    logits = (z_v @ z_a.T / 0.5).double()
    info_nce = -0.5 * (logits.log_softmax(1).diagonal().mean() + logits.log_softmax(0).diagonal().mean())
    assert out["loss"].item() == pytest.approx(clustering.item() + 0.5 * info_nce.item(), rel=1e-5)
    with pytest.raises(RecipeError) as caught:
        _selavi("task.contrastive_weight=0.5")  # no warm-up: no projections
    assert str(caught.value) == ("task.contrastive_weight > 0 needs task.contrastive_warmup_epochs > 0 "
                                 "(its projections), got 0.5")


def test_joint_log_probs_is_the_mean_of_the_modalities() -> None:
    v, a = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    expected = 0.5 * (F.log_softmax(v, -1) + F.log_softmax(a, -1))
    torch.testing.assert_close(SeLaVi.joint_log_probs(v, a), expected)


def test_online_variant_trains_without_a_bank_and_freezes_prototypes() -> None:
    model = _selavi("task.variant=online", "task.swav_hidden=32", "task.swav_dim=16", "task.swav_epsilon=0.5",
                    "task.swav_freeze_prototypes_steps=1")
    assert not hasattr(model, "label_bank")
    with torch.no_grad():
        model.prototypes.weight.mul_(3.0)
    batch = _batch([0, 1, 2, 3, 4, 5])
    model.on_train_batch_start(batch, 0)
    torch.testing.assert_close(model.prototypes.weight.norm(dim=1), torch.ones(3))
    out = model.training_step(batch, 0)
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    out["loss"].backward()
    model.on_after_backward()  # step 0 < 1: prototypes frozen
    assert model.prototypes.weight.grad is None
    assert model.video_projection.layers[0].weight.grad is not None
    v, a = model.head_logits(model.video_encoder(batch["video"]), model.audio_encoder(batch["audio"]))
    assert v.shape == a.shape == (1, 6, 3)


def test_variant_is_checked() -> None:
    with pytest.raises(RecipeError) as caught:
        _selavi("task.variant=swav")
    assert str(caught.value) == "task.variant must be one of 'offline', 'online', got 'swav'"


def test_checkpoint_with_the_banks_former_flat_keys_loads_into_the_label_bank() -> None:
    trained = _selavi()
    trained.label_bank.log_probs.normal_()
    trained.label_bank.seen[::2] = True
    trained.label_bank.labels.random_(0, 3)
    trained.label_bank.labelings_done.fill_(4)
    former = {"label_bank.log_probs": "log_prob_bank", "label_bank.seen": "seen", "label_bank.labels": "labels",
              "label_bank.labelings_done": "labelings_done"}
    old_state = {former.get(key, key): value for key, value in trained.state_dict().items()}
    assert "log_prob_bank" in old_state and not any(key.startswith("label_bank.") for key in old_state)
    fresh = _selavi()
    fresh.load_state_dict(old_state, strict=True)
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[key], value)
    assert int(fresh.label_bank.labelings_done) == 4


def test_load_pretext_task_reads_a_checkpoint_written_before_the_bank_was_a_module(tmp_path: Path) -> None:
    from avssl.tasks.pretext import load_pretext_task

    trained = _selavi()
    trained.label_bank.labels.random_(0, 3)
    trained.label_bank.labelings_done.fill_(2)
    former = {"label_bank.log_probs": "log_prob_bank", "label_bank.seen": "seen", "label_bank.labels": "labels",
              "label_bank.labelings_done": "labelings_done"}
    state = {former.get(key, key): value for key, value in trained.state_dict().items()}
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": dict(trained.hparams), "global_step": 0}, path)
    loaded = load_pretext_task(path)
    torch.testing.assert_close(loaded.label_bank.labels, trained.label_bank.labels)
    assert int(loaded.label_bank.labelings_done) == 2
