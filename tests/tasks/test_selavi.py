"""SeLaVi: labelling schedule, shared labels from both modalities, the bank, the loss."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from avssl.config import load_recipe
from avssl.losses.sinkhorn import SinkhornResult
from avssl.tasks.pretext import selavi as selavi_module
from avssl.tasks.pretext.selavi import (
    SeLaVi,
    check_cluster_sizes,
    gaussian_marginal,
    labeling_steps,
    swapped_prediction_loss,
)

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


def test_labeling_steps_are_front_loaded() -> None:
    steps = labeling_steps(total_steps=1000, first_step=100, count=5)
    assert steps[0] == 100 and steps[-1] == 1000
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    assert gaps == sorted(gaps), "spacing grows over the run"


def test_gaussian_marginal_sums_to_one_and_follows_current_sizes() -> None:
    marginal = gaussian_marginal(torch.tensor([5.0, 50.0, 20.0]), 0.1, torch.Generator().manual_seed(0))
    assert marginal.sum().item() == pytest.approx(1.0)
    assert marginal.argmax().item() == 1 and marginal.argmin().item() == 0
    torch.testing.assert_close(gaussian_marginal(torch.ones(4), 0.0, torch.Generator()), torch.full((4,), 0.25,
                                                                                                 dtype=torch.float64))


def test_num_clusters_is_required() -> None:
    with pytest.raises(ValueError, match="num_clusters"):
        _selavi("task.num_clusters=0")


def test_first_epoch_only_fills_the_bank_then_labels_are_shared_and_balanced() -> None:
    model = _selavi()
    for start in range(0, 24, 8):
        out = model.training_step(_batch(list(range(start, start + 8))), 0)
        assert out["loss"].item() == 0.0
    assert bool(model.seen.all())
    model.relabel()
    counts = torch.stack([torch.bincount(model.labels[h], minlength=3) for h in range(2)])
    assert counts.min() >= 5, "Gaussian marginals around 8 per cluster"
    model.eval()  # no dropout, running BN statistics: two passes agree
    batch = _batch([0, 1, 2, 3])
    out = model.training_step(batch, 0)
    # ½ CE(video heads) + ½ CE(audio heads) against the same labels, by hand:
    v, a = model.head_logits(model.video_encoder(batch["video"]), model.audio_encoder(batch["audio"]))
    targets = model.labels[:, :4]
    expected = sum(0.5 * (F.cross_entropy(v[h], targets[h]) + F.cross_entropy(a[h], targets[h])) for h in range(2)) / 2
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_contrastive_warmup_trains_the_encoders_before_the_first_labels() -> None:
    model = _selavi("task.contrastive_warmup_epochs=3")
    batch = _batch(list(range(8)))
    out = model.training_step(batch, 0)
    assert out["loss"].item() > 0 and int(model.labelings_done) == 0
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
    with pytest.raises(ValueError, match="contrastive_warmup_epochs"):
        _selavi("task.contrastive_warmup_epochs=-1")


def test_contrastive_weight_keeps_the_info_nce_beside_the_clustering_loss() -> None:
    model = _selavi("task.contrastive_warmup_epochs=1", "task.contrastive_weight=0.5", "task.head_dropout=0")
    for start in range(0, 24, 8):
        model.training_step(_batch(list(range(start, start + 8))), 0)
    model.relabel()
    batch = _batch(list(range(8)))
    out = model.training_step(batch, 0)  # training mode (as the warm-up test), no head dropout
    video, audio = model.video_encoder(batch["video"]), model.audio_encoder(batch["audio"])
    v, a = model.head_logits(video, audio)
    targets = model.labels[:, :8]
    clustering = sum(0.5 * (F.cross_entropy(v[h], targets[h]) + F.cross_entropy(a[h], targets[h]))
                     for h in range(2)) / 2
    z_v = F.normalize(model.video_warmup_projection(video), dim=1)
    z_a = F.normalize(model.audio_warmup_projection(audio), dim=1)
    logits = (z_v @ z_a.T / 0.5).double()
    info_nce = -0.5 * (logits.log_softmax(1).diagonal().mean() + logits.log_softmax(0).diagonal().mean())
    assert out["loss"].item() == pytest.approx(clustering.item() + 0.5 * info_nce.item(), rel=1e-5)
    with pytest.raises(ValueError, match="contrastive_weight"):
        _selavi("task.contrastive_weight=0.5")  # no warm-up: no projections


def test_joint_log_probs_is_the_mean_of_the_modalities() -> None:
    v, a = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    expected = 0.5 * (F.log_softmax(v, -1) + F.log_softmax(a, -1))
    torch.testing.assert_close(SeLaVi.joint_log_probs(v, a), expected)


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


def test_online_variant_trains_without_a_bank_and_freezes_prototypes() -> None:
    model = _selavi("task.variant=online", "task.swav_hidden=32", "task.swav_dim=16", "task.swav_epsilon=0.5",
                    "task.swav_freeze_prototypes_steps=1")
    assert not hasattr(model, "log_prob_bank")
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
    with pytest.raises(ValueError, match="variant"):
        _selavi("task.variant=swav")


def test_relabel_labels_every_cluster_when_one_is_disliked_by_all() -> None:
    # λ = 50 and cluster 0 thirty nats below the others for every sample: e^(−1500) is 0 in
    # float64, so the probability-domain iteration lost cluster 0 (no label, column error 1/3)
    model = _selavi("task.lam=50.0", "task.marginal_std=0.0")
    g = torch.Generator().manual_seed(0)
    logits = 0.3 * torch.randn(2, 24, 3, generator=g)
    logits[..., 0] -= 30.0
    model.log_prob_bank.copy_(torch.log_softmax(logits, dim=-1).half())
    model.seen.fill_(True)
    model.relabel()
    for head in range(2):
        assert torch.bincount(model.labels[head], minlength=3).tolist() == [8, 8, 8]


def _result(column_error: float) -> SinkhornResult:
    return SinkhornResult(plan=torch.eye(3, dtype=torch.float64), iterations=2000, column_error=column_error,
                          tolerance=1e-9)


def test_cluster_sizes_rule_passes_warns_or_stops(caplog: pytest.LogCaptureFixture) -> None:
    marginal = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="avssl.tasks.pretext.selavi"):
        check_cluster_sizes(_result(0.002), marginal, head=0)  # 1 % of the smallest target: silent
        assert caplog.messages == []
        check_cluster_sizes(_result(0.02), marginal, head=1)
    assert caplog.messages == [("SeLaVi head 1: Sinkhorn–Knopp stopped after 2000 iterations with cluster masses "
                                "off by up to 10.0% of the smallest target (column error 0.02); the labels are used")]
    with pytest.raises(RuntimeError, match=r"^SeLaVi head 2: Sinkhorn–Knopp stopped after 2000 iterations with "
                                           r"cluster masses off by up to 100\.0% of the smallest target \(column "
                                           r"error 0\.2\): the labels do not follow the cluster-size marginal; "
                                           r"lower task\.lam$"):
        check_cluster_sizes(_result(0.2), marginal, head=2)


def test_relabel_stops_on_labels_that_miss_the_marginal(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _selavi("task.marginal_std=0.0")
    model.seen.fill_(True)
    monkeypatch.setattr(selavi_module, "sinkhorn_knopp", lambda *args, **kwargs: _result(0.2))
    with pytest.raises(RuntimeError, match="SeLaVi head 0: .* off by up to 60.0% of the smallest target"):
        model.relabel()
    assert (model.labels == -1).all() and int(model.labelings_done) == 0
