"""Online linear probe and kNN monitors, driven through their Lightning hooks with a fake
trainer and module; 2 processes (gloo) against one; the recipe section."""
from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from avssl.config import MonitorsConfig, load_recipe
from avssl.errors import RecipeError
from avssl.tasks import monitors
from avssl.tasks.monitors import FeatureQueue, OnlineKNN, OnlineLinearProbe, build_monitors, knn_vote

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TRAINER = SimpleNamespace(sanity_checking=False)


class FakeModule:
    """What the callbacks use of a LightningModule: ``log`` and ``device``."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.logged: dict[str, list[float]] = {}

    def log(self, name: str, value, **kwargs) -> None:
        self.logged.setdefault(name, []).append(float(value))


def blobs(n: int, generator: torch.Generator, dim: int = 8, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Linearly separable: class c is a tight cluster around 3·e_c (plus an offset)."""
    labels = torch.randint(0, classes, (n,), generator=generator)
    centres = 3.0 * torch.eye(classes, dim)
    return centres[labels] + 0.3 * torch.randn(n, dim, generator=generator) + 1.0, labels


def step(callback, module, video: torch.Tensor, audio: torch.Tensor, labels: torch.Tensor) -> None:
    outputs = {"loss": torch.tensor(0.0), "embeddings": {"video": video, "audio": audio}}
    callback.on_train_batch_end(TRAINER, module, outputs, {"label": labels}, 0)


def validate(callback, module, batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    callback.on_validation_epoch_start(TRAINER, module)
    for i, (video, audio, labels) in enumerate(batches):
        callback.on_validation_batch_end(TRAINER, module, {"embeddings": {"video": video, "audio": audio}},
                                         {"label": labels}, i)
    callback.on_validation_epoch_end(TRAINER, module)


def test_linear_probe_learns_a_separable_problem() -> None:
    g = torch.Generator().manual_seed(0)
    probe, module = OnlineLinearProbe(num_classes=3, lr=0.05), FakeModule()
    # audio carries no information
    val = [(x, torch.randn(32, 4, generator=g), y) for x, y in (blobs(32, g) for _ in range(2))]
    validate(probe, module, val)
    assert "online/video_linear_top1" not in module.logged, "nothing to predict with before training"
    for _ in range(60):
        x, y = blobs(32, g)
        step(probe, module, x, torch.randn(32, 4, generator=g), y)
    validate(probe, module, val)
    assert module.logged["online/video_linear_top1"][-1] >= 0.97
    assert module.logged["online/audio_linear_top1"][-1] < 0.7  # noise: near chance (1/3)
    assert module.logged["online/video_linear_train_top1"][-1] >= 0.9
    assert probe.classifiers["audio"].in_features == 4


def test_unknown_labels_are_masked_and_unlabelled_batches_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    monkeypatch.setattr(monitors, "rank_zero_info", said.append)
    g = torch.Generator().manual_seed(1)
    x, y = blobs(16, g)
    audio = torch.randn(16, 4, generator=g)
    masked = y.clone()
    masked[::2] = -1
    garbage = torch.randn(16, 8, generator=g) * 100  # what the masked rows hold must not matter
    x_masked = torch.where((masked < 0)[:, None], garbage, x)
    a_masked = torch.where((masked < 0)[:, None], garbage[:, :4], audio)
    full, partial = OnlineLinearProbe(num_classes=3), OnlineLinearProbe(num_classes=3)
    knn_full, knn_partial = OnlineKNN(queue_size=32), OnlineKNN(queue_size=32)
    module = FakeModule()
    for callback in (partial, knn_partial):
        callback.on_train_epoch_start(TRAINER, module)
        step(callback, module, x_masked, a_masked, masked)
        step(callback, module, x, audio, torch.full((16,), -1))  # no label at all: skipped
        callback.on_train_epoch_end(TRAINER, module)
    known = masked >= 0
    step(full, module, x[known], audio[known], y[known])
    step(knn_full, module, x[known], audio[known], y[known])
    for name, value in full.classifiers.state_dict().items():
        torch.testing.assert_close(partial.classifiers.state_dict()[name], value)
    for modality in ("video", "audio"):
        torch.testing.assert_close(knn_partial.queues[modality].filled(), knn_full.queues[modality].filled())
    assert int((knn_partial.queues["video"].labels >= 0).sum()) == 8
    assert said == [], "labelled samples were seen this epoch"

    idle = OnlineLinearProbe(num_classes=3)
    for _ in range(2):  # two epochs without a label: said once, nothing built, nothing logged
        idle.on_train_epoch_start(TRAINER, module)
        step(idle, module, x, audio, torch.full((16,), -1))
        idle.on_train_epoch_end(TRAINER, module)
    assert idle.classifiers is None and idle.state_dict() == {}
    assert len(said) == 1 and "no training sample has a label" in said[0]
    validate(idle, module, [(x, audio, y)])
    assert not any(k.startswith("online/video_linear") for k in module.logged if k != "online/video_linear_train_top1")


def test_linear_probe_state_round_trips() -> None:
    g = torch.Generator().manual_seed(2)
    probe, module = OnlineLinearProbe(num_classes=3, lr=0.01), FakeModule()
    for _ in range(5):
        x, y = blobs(16, g)
        step(probe, module, x, x[:, :4], y)
    buffer = io.BytesIO()
    torch.save(probe.state_dict(), buffer)  # what Lightning does with callback state
    buffer.seek(0)
    restored = OnlineLinearProbe(num_classes=3, lr=0.01)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    x, y = blobs(64, g)
    for modality, features in (("video", x), ("audio", x[:, :4])):
        torch.testing.assert_close(restored.predict(modality, features), probe.predict(modality, features))
    # the optimiser state came along: one more step keeps them identical
    step(probe, module, x, x[:, :4], y)
    step(restored, module, x, x[:, :4], y)
    for name, value in probe.classifiers.state_dict().items():
        torch.testing.assert_close(restored.classifiers.state_dict()[name], value)
    with pytest.raises(ValueError, match="num_classes"):
        OnlineLinearProbe(num_classes=4).load_state_dict(probe.state_dict())
    with pytest.raises(ValueError, match="modalities"):
        OnlineLinearProbe(num_classes=3, modalities=["video"]).load_state_dict(probe.state_dict())


def test_knn_vote_by_hand() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])
    labels = torch.tensor([0, 1, 1, 2, 0])
    query = torch.tensor([[2.0, 0.2], [0.1, 1.0]])
    t = 0.5

    def cos(a: list[float], b: list[float]) -> float:
        return (a[0] * b[0] + a[1] * b[1]) / math.hypot(*a) / math.hypot(*b)

    # query 0: nearest three are rows 0 (label 0), 4 (label 0), 2 (label 1)
    q0 = [2.0, 0.2]
    votes0 = {0: math.exp(cos(q0, [1, 0]) / t) + math.exp(cos(q0, [0.6, 0.8]) / t), 1: math.exp(cos(q0, [1, 1]) / t)}
    assert max(votes0, key=votes0.get) == 0
    # query 1: nearest three are rows 1 (label 1), 4 (label 0), 2 (label 1)
    q1 = [0.1, 1.0]
    votes1 = {1: math.exp(cos(q1, [0, 1]) / t) + math.exp(cos(q1, [1, 1]) / t), 0: math.exp(cos(q1, [0.6, 0.8]) / t)}
    assert max(votes1, key=votes1.get) == 1
    torch.testing.assert_close(knn_vote(query, bank, labels, 3, k=3, temperature=t), torch.tensor([0, 1]))
    # weights, not counts: one very close neighbour outvotes two far ones at a low temperature
    bank2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.05, 1.0]])
    query2 = torch.tensor([[1.0, 0.9]])  # cos 0.74 to row 0 (label 0); 0.67 and 0.71 to rows 1, 2 (label 1)
    assert knn_vote(query2, bank2, torch.tensor([0, 1, 1]), 2, k=3, temperature=0.01).item() == 0
    assert knn_vote(query2, bank2, torch.tensor([0, 1, 1]), 2, k=3, temperature=10.0).item() == 1
    assert knn_vote(query2, bank2, torch.tensor([0, 1, 1]), 2, k=1, temperature=10.0).item() == 0


def test_queue_overwrites_the_oldest() -> None:
    queue = FeatureQueue(size=4, dim=2)
    assert queue.filled()[1].numel() == 0
    queue.push(torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]]), torch.tensor([10, 11, 12]))
    torch.testing.assert_close(queue.labels, torch.tensor([10, 11, 12, -1]))
    torch.testing.assert_close(queue.features[0], torch.tensor([0.6, 0.8]), msg="rows are L2-normalised")
    queue.push(torch.ones(3, 2), torch.tensor([13, 14, 15]))  # wraps: 10 and 11 go
    torch.testing.assert_close(queue.labels, torch.tensor([14, 15, 12, 13]))
    queue.push(torch.ones(6, 2), torch.arange(20, 26))  # more than fits: the latest four stay
    assert sorted(queue.labels.tolist()) == [22, 23, 24, 25]
    assert int(queue.pointer) == (3 + 3 + 4) % 4


def test_knn_monitor_logs_top1_and_its_bank_round_trips() -> None:
    g = torch.Generator().manual_seed(3)
    knn, module = OnlineKNN(k=5, temperature=0.1, queue_size=64), FakeModule()
    for _ in range(6):  # 96 rows through a 64-row queue
        x, y = blobs(16, g)
        step(knn, module, x, -x, y)
    assert int((knn.queues["video"].labels >= 0).sum()) == 64
    x, y = blobs(40, g)
    validate(knn, module, [(x[:20], -x[:20], y[:20]), (x[20:], -x[20:], y[20:])])
    assert module.logged["online/video_knn_top1"][-1] >= 0.97
    assert module.logged["online/audio_knn_top1"][-1] >= 0.97
    buffer = io.BytesIO()
    torch.save(knn.state_dict(), buffer)
    buffer.seek(0)
    restored = OnlineKNN(k=5, temperature=0.1, queue_size=64)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for modality in ("video", "audio"):
        torch.testing.assert_close(restored.queues[modality].state_dict(), knn.queues[modality].state_dict())
        torch.testing.assert_close(restored.predict(modality, x), knn.predict(modality, x))


def test_sanity_check_and_missing_embeddings_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    monkeypatch.setattr(monitors, "rank_zero_info", said.append)
    knn, module = OnlineKNN(queue_size=8), FakeModule()
    x, y = blobs(8, torch.Generator().manual_seed(4))
    step(knn, module, x, x, y)
    sanity = SimpleNamespace(sanity_checking=True)
    knn.on_validation_epoch_start(sanity, module)
    knn.on_validation_batch_end(sanity, module, {"embeddings": {"video": x, "audio": x}}, {"label": y}, 0)
    knn.on_validation_epoch_end(sanity, module)
    assert module.logged == {}
    for _ in range(2):
        knn.on_validation_batch_end(TRAINER, module, None, {"label": y}, 0)
    assert len(said) == 1 and "validation_step returned no 'embeddings'" in said[0]
    with pytest.raises(KeyError, match="monitors.modalities"):
        knn.on_train_batch_end(TRAINER, module, {"embeddings": {"video": x}}, {"label": y}, 0)
    with pytest.raises(ValueError, match="num_classes"):
        step(OnlineLinearProbe(num_classes=2), module, x, x, torch.full((8,), 5))


# -- two processes against one --------------------------------------------------------------
GLOBAL_BATCH = 8


def _monitor_steps(rank: int, world: int, init_file: str, out: str) -> None:
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(5)
    probe, knn, module = OnlineLinearProbe(num_classes=3, lr=0.05), OnlineKNN(k=3, queue_size=12), FakeModule()
    per_rank = GLOBAL_BATCH // world
    for _ in range(4):
        x, y = blobs(GLOBAL_BATCH, g)
        y[torch.randperm(GLOBAL_BATCH, generator=g)[:3]] = -1  # ranks hold different numbers of labelled rows
        rows = slice(rank * per_rank, (rank + 1) * per_rank)
        for callback in (probe, knn):
            step(callback, module, x[rows], 2 * x[rows, :4], y[rows])
    x, y = blobs(GLOBAL_BATCH, g)
    x[[0, GLOBAL_BATCH // 2]] = 0.0  # rows without information: not every prediction is right
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    for callback in (probe, knn):
        validate(callback, module, [(x[rows], 2 * x[rows, :4], y[rows])])
    torch.save({"probe": probe.classifiers.state_dict(), "queue": knn.queues["video"].state_dict(),
                "logged": {k: v[-1] for k, v in module.logged.items() if "train" not in k}},
               os.path.join(out, f"rank{rank}_of{world}.pt"))
    if world > 1:
        dist.destroy_process_group()


def test_monitors_two_processes_match_one(tmp_path: Path) -> None:
    _monitor_steps(0, 1, "", str(tmp_path))
    mp.spawn(_monitor_steps, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    single = torch.load(tmp_path / "rank0_of1.pt")
    assert set(single["logged"]) == {f"online/{m}_{k}_top1" for m in ("video", "audio") for k in ("linear", "knn")}
    for rank in range(2):
        pair = torch.load(tmp_path / f"rank{rank}_of2.pt")
        for name, value in single["probe"].items():
            torch.testing.assert_close(pair["probe"][name], value, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pair["queue"], single["queue"])
        assert pair["logged"] == pytest.approx(single["logged"])


# -- recipe ---------------------------------------------------------------------------------
def test_every_recipe_has_the_monitors_and_unknown_keys_are_errors() -> None:
    for path in sorted((RECIPES / "pretrain").glob("*/*.yaml")) + sorted((RECIPES / "synth").glob("*.yaml")):
        config = load_recipe(path)
        assert config.monitors.linear_probe and config.monitors.knn, path
        assert list(config.monitors.modalities) == ["video", "audio"]
    with pytest.raises(RecipeError, match="monitors.knn_kk"):
        load_recipe(RECIPES / "synth" / "avc_small.yaml", ["monitors.knn_kk=3"])


def test_num_classes_from_config_or_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    said: list[str] = []
    monkeypatch.setattr(monitors, "rank_zero_info", said.append)
    (tmp_path / "manifest.json").write_text(json.dumps({"classes": ["cat", "dog", "owl", "pig"], "splits": {}}))
    probe, knn = build_monitors(MonitorsConfig(), tmp_path)
    assert isinstance(probe, OnlineLinearProbe) and probe.num_classes == 4 and knn.num_classes == 4
    assert build_monitors(MonitorsConfig(num_classes=7), tmp_path)[0].num_classes == 7
    (tmp_path / "manifest.json").write_text(json.dumps({"classes": None, "splits": {}}))  # integer or no labels
    only = build_monitors(MonitorsConfig(knn_k=3), tmp_path)
    assert len(only) == 1 and isinstance(only[0], OnlineKNN) and only[0].k == 3
    assert "linear probe is off" in said[0]
    assert build_monitors(MonitorsConfig(linear_probe=False, knn=False), tmp_path) == []
    with pytest.raises(ValueError, match="modalities"):
        build_monitors(MonitorsConfig(modalities=["depth"]), tmp_path)


# -- through Lightning: logged metrics and a resumed run ----------------------------------
class TinyTask(pl.LightningModule):
    """The task contract in miniature: embeddings from training_step and validation_step."""

    def __init__(self) -> None:
        super().__init__()
        self.video_encoder = torch.nn.Linear(8, 6)
        self.audio_encoder = torch.nn.Linear(8, 5)

    def _embeddings(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"video": self.video_encoder(batch["x"]), "audio": self.audio_encoder(-batch["x"])}

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        e = self._embeddings(batch)
        loss = e["video"].pow(2).mean() + e["audio"].pow(2).mean()
        return {"loss": loss, "terms": {}, "embeddings": {k: v.detach() for k, v in e.items()}}

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return {"embeddings": self._embeddings(batch)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader(seed: int):
    g = torch.Generator().manual_seed(seed)
    x, y = blobs(64, g)
    y[::4] = -1
    return torch.utils.data.DataLoader([{"x": a, "label": b} for a, b in zip(x, y)], batch_size=16)


def test_lightning_fit_logs_and_resume_restores(tmp_path: Path) -> None:
    def trainer(callbacks, epochs):
        return pl.Trainer(max_epochs=epochs, callbacks=callbacks, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1)

    torch.manual_seed(0)
    probe, knn = OnlineLinearProbe(3, lr=0.05), OnlineKNN(k=5, queue_size=40)
    fit = trainer([probe, knn], 2)
    fit.fit(TinyTask(), _loader(0), _loader(1))
    for name in ("online/video_linear_top1", "online/audio_knn_top1", "online/audio_linear_train_top1"):
        assert 0.0 <= float(fit.callback_metrics[name]) <= 1.0, name
    assert int((knn.queues["video"].labels >= 0).sum()) == 40
    fit.save_checkpoint(tmp_path / "last.ckpt")
    probe2, knn2 = OnlineLinearProbe(3, lr=0.05), OnlineKNN(k=5, queue_size=40)
    trainer([probe2, knn2], 2).fit(TinyTask(), _loader(0), _loader(1), ckpt_path=tmp_path / "last.ckpt")
    x = blobs(16, torch.Generator().manual_seed(2))[0][:, :6]
    torch.testing.assert_close(probe2.predict("video", x), probe.predict("video", x))
    torch.testing.assert_close(knn2.queues["audio"].state_dict(), knn.queues["audio"].state_dict())
