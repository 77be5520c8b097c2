"""XDC as a task: the warm-up, clustering at epoch start (and not again on resume), the loss of
every variant against hand computation, the heads re-initialised, the labels in the checkpoint."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from avssl.config import load_recipe
from avssl.errors import RecipeError
from avssl.losses.xdc import balancing_weights
from avssl.tasks.pretext.xdc import XDC

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _xdc(*overrides: str) -> XDC:
    config = load_recipe(RECIPES / "synth" / "xdc_small.yaml",
                         ["data.video.size=32", "task.num_instances=24", "task.num_clusters=3",
                          "task.contrastive_warmup_epochs=0", "task.contrastive_weight=0.0", "task.reset_heads=true",
                          "task.align_labels=false", *overrides])  # the paper's loop
    return XDC(OmegaConf.to_container(config, resolve=True))


def _batch(index: list[int]) -> dict[str, torch.Tensor]:
    b = len(index)
    return {"video": torch.randn(b, 3, 1, 32, 32), "audio": torch.randn(b, 1, 64, 101), "index": torch.tensor(index),
            "label": torch.tensor(index) % 2}


def _features(model: XDC, n: int = 24) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    video = torch.randn(n, model.video_encoder.embedding_dim, generator=g)
    audio = torch.randn(n, model.audio_encoder.embedding_dim, generator=g)
    sets = {"video": video, "audio": audio, "joint": torch.cat([video, audio], 1)}
    return torch.arange(n), {s: sets[s] for s in model.pseudo_labels.sets}, torch.arange(n) % 2


@pytest.fixture
def epoch(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """The task's current epoch, set by the test (no trainer)."""
    now = {"epoch": 0}
    monkeypatch.setattr(XDC, "current_epoch", property(lambda self: now["epoch"]))
    return now


def test_cluster_counts_are_checked() -> None:
    with pytest.raises(RecipeError, match="task.audio_clusters must be ≥ 2, got 1"):
        _xdc("task.audio_clusters=1")
    with pytest.raises(RecipeError, match="contrastive_weight > 0 needs task.contrastive_warmup_epochs > 0"):
        _xdc("task.contrastive_weight=1.0")


@pytest.mark.parametrize("variant", ["xdc", "sdc", "mdc", "cdc"])
def test_loss_of_each_variant_by_hand(variant: str, epoch: dict[str, int]) -> None:
    model = _xdc(f"task.variant={variant}", "task.video_clusters=4", "task.audio_clusters=3")
    model.relabel(*_features(model))
    assert int(model.pseudo_labels.clusterings_done) == 1 and (model.pseudo_labels.labels("video" if variant != "cdc"
                                                                                        else "joint") >= 0).all()
    model.eval()  # running BN statistics: two passes agree
    batch = _batch([0, 5, 9, 17])
    out = model.training_step(batch, 0)
    video, audio = model.video_encoder(batch["video"]), model.audio_encoder(batch["audio"])
    supervising = {"xdc": {"video": ["audio"], "audio": ["video"]}, "sdc": {"video": ["video"], "audio": ["audio"]},
                   "mdc": {"video": ["video", "audio"], "audio": ["video", "audio"]},
                   "cdc": {"video": ["joint"], "audio": ["joint"]}}[variant]
    expected = 0.0
    for encoder, features in (("video", video), ("audio", audio)):
        for name in supervising[encoder]:
            labels = model.pseudo_labels.labels(name)
            weights = balancing_weights(labels, {"video": 4, "audio": 3, "joint": 3}[name])
            logits = model.heads.heads[encoder][name](features)
            assert logits.shape == (4, {"video": 4, "audio": 3, "joint": 3}[name])
            expected = expected + F.cross_entropy(logits, labels[batch["index"]], weight=weights)
    assert out["loss"].detach().item() == pytest.approx(float(expected), rel=1e-5)


def test_balancing_is_optional(epoch: dict[str, int]) -> None:
    model = _xdc("task.balance_clusters=false")
    model.relabel(*_features(model))
    model.eval()
    batch = _batch([1, 2, 3])
    out = model.training_step(batch, 0)
    v, a = model.video_encoder(batch["video"]), model.audio_encoder(batch["audio"])
    labels = model.pseudo_labels.targets(batch["index"])
    expected = (F.cross_entropy(model.heads.heads["video"]["audio"](v), labels["audio"])
                + F.cross_entropy(model.heads.heads["audio"]["video"](a), labels["video"]))
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_clusters_at_epoch_start_and_not_again_when_resumed(monkeypatch: pytest.MonkeyPatch,
                                                            epoch: dict[str, int]) -> None:
    model = _xdc("task.recluster_epochs=2")
    calls = []

    def features() -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        calls.append(epoch["epoch"])
        return _features(model)

    monkeypatch.setattr(model, "training_set_features", features)
    for e in (0, 0, 1, 2, 3, 4):  # epoch 0 twice: a run resumed within it keeps its labels
        epoch["epoch"] = e
        model.on_train_epoch_start()
    assert calls == [0, 2, 4] and int(model.pseudo_labels.solved_epoch) == 4
    assert int(model.pseudo_labels.clusterings_done) == 3
    assert model.clustering_nmi.keys() == {"video", "audio"}


def test_clustering_re_initialises_the_heads(epoch: dict[str, int]) -> None:
    model = _xdc()
    before = model.heads.heads["video"]["audio"].weight.detach().clone()
    model.relabel(*_features(model))
    assert not torch.equal(before, model.heads.heads["video"]["audio"].weight)
    kept = model.heads.heads["video"]["audio"].weight.detach().clone()
    model2 = _xdc("task.reset_heads=false")
    model2.heads.load_state_dict(model.heads.state_dict())
    model2.relabel(*_features(model2))
    assert torch.equal(model2.heads.heads["video"]["audio"].weight, kept)


def test_warmup_trains_with_info_nce_then_clusters(monkeypatch: pytest.MonkeyPatch, epoch: dict[str, int]) -> None:
    model = _xdc("task.contrastive_warmup_epochs=2")
    monkeypatch.setattr(model, "training_set_features", lambda: _features(model))
    out = model.training_step(_batch(list(range(8))), 0)
    assert out["loss"].item() > 0
    out["loss"].backward()
    assert all(p.grad is not None for p in model.video_warmup_projection.parameters())
    for e in (0, 1):
        epoch["epoch"] = e
        model.on_train_epoch_start()
        assert int(model.pseudo_labels.clusterings_done) == 0
    epoch["epoch"] = 2
    model.on_train_epoch_start()
    assert int(model.pseudo_labels.clusterings_done) == 1 and int(model.pseudo_labels.solved_epoch) == 2


def test_labels_are_in_the_checkpoint(epoch: dict[str, int]) -> None:
    model = _xdc()
    epoch["epoch"] = 5
    model.relabel(*_features(model))
    state = model.state_dict()
    assert {"pseudo_labels.labels_video", "pseudo_labels.labels_audio", "pseudo_labels.solved_epoch",
            "pseudo_labels.clusterings_done"} <= state.keys()
    fresh = _xdc()
    fresh.load_state_dict(state)
    assert torch.equal(fresh.pseudo_labels.labels("audio"), model.pseudo_labels.labels("audio"))
    assert int(fresh.pseudo_labels.solved_epoch) == 5


def test_nmi_of_each_clustering_against_the_categories(epoch: dict[str, int]) -> None:
    model = _xdc()
    index, features, _ = _features(model)
    labels = torch.arange(24) % 3
    features["video"] = F.one_hot(labels, 64).float() * 10 + 0.01 * features["video"]  # three clean groups
    model.relabel(index, features, labels)
    assert model.clustering_nmi["video"] == pytest.approx(1.0)
    assert model.clustering_nmi["audio"] < 0.5


def test_reset_linear_draws_as_torch_from_its_generator() -> None:
    from avssl.tasks.pretext.xdc import reset_linear

    layer = torch.nn.Linear(5, 3)
    torch.manual_seed(11)
    reference = torch.nn.Linear(5, 3)  # nn.Linear.reset_parameters from the global generator at seed 11
    state = torch.get_rng_state()
    reset_linear(layer, torch.Generator().manual_seed(11))
    assert torch.equal(layer.weight, reference.weight) and torch.equal(layer.bias, reference.bias)
    assert torch.equal(torch.get_rng_state(), state), "the global generator is left alone"


def test_pair_scores(epoch: dict[str, int]) -> None:
    video, audio = torch.randn(5, 64), torch.randn(5, 64)
    warm = _xdc("task.contrastive_warmup_epochs=2").eval()
    expected = F.cosine_similarity(warm.video_warmup_projection(video), warm.audio_warmup_projection(audio), dim=-1)
    torch.testing.assert_close(warm.pair_scores(video, audio), expected)
    model = _xdc("task.variant=mdc").eval()
    logits = model.heads(video, audio)
    same = [(logits["video"][s].softmax(-1) * logits["audio"][s].softmax(-1)).sum(-1) for s in ("video", "audio")]
    torch.testing.assert_close(model.pair_scores(video, audio), (same[0] + same[1]) / 2)
    scores = _xdc().pair_scores(video, audio)
    assert scores.shape == (5,) and bool(((scores > 0) & (scores < 1)).all())
