"""AVID + CMA: negative sampling, symmetry of the cross-modal loss, the CMA phase, choices."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from avssl.config import load_recipe
from avssl.errors import RecipeError
from avssl.losses.agreement import agreement_positives
from avssl.losses.nce import sample_excluding
from avssl.tasks.pretext import build_pretext_task
from avssl.tasks.pretext.avid_cma import AVIDCMA

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _avid(*overrides: str) -> AVIDCMA:
    config = load_recipe(RECIPES / "synth" / "avid_cma_small.yaml",
                         ["data.video.size=32", "task.num_instances=50", "task.num_negatives=16",
                          "task.cma_positives=4", "task.cma_negatives=8", *overrides])
    return AVIDCMA(OmegaConf.to_container(config, resolve=True))


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
    v, a = torch.randn(6, 128, generator=g), torch.randn(6, 128, generator=g)
    index = torch.tensor([3, 7, 11, 20, 21, 40])
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
    assert model.positives.indices.shape == (50, 4)
    assert not (model.positives.indices == torch.arange(50)[:, None]).any(), "an instance is never its own positive"
    terms = model.losses(v, a, index)
    assert set(terms) == {"xid", "cma"} and torch.isfinite(terms["cma"])


def test_training_step_updates_the_banks_of_the_batch_only() -> None:
    model = _avid()
    before_v, before_a = model.video_bank.bank.clone(), model.audio_bank.bank.clone()
    batch = {"video": torch.randn(4, 3, 1, 32, 32), "audio": torch.randn(4, 1, 64, 101),
             "index": torch.tensor([5, 6, 7, 8])}
    out = model.training_step(batch, 0)
    assert torch.isfinite(out["loss"])
    changed = (model.video_bank.bank != before_v).any(1) | (model.audio_bank.bank != before_a).any(1)
    assert changed.nonzero().flatten().tolist() == [5, 6, 7, 8]


def test_projection_batchnorm_spreads_embeddings_with_a_shared_mean() -> None:
    # Pooled ReLU embeddings: all positive, a large shared mean. The paper's head maps them
    # to nearly one direction; projection_norm=batchnorm standardises before, inside, after.
    d = _avid().video_encoder.embedding_dim
    x = 3.0 + 0.1 * torch.randn(64, d, generator=torch.Generator().manual_seed(0))
    off_diagonal = ~torch.eye(64, dtype=torch.bool)
    for norm, low, high in (("none", 0.95, 1.0), ("batchnorm", -0.1, 0.1)):
        head = _avid(f"task.projection_norm={norm}").video_head.train()
        z = F.normalize(head(x), dim=1)
        assert low < float((z @ z.T)[off_diagonal].mean()) < high, norm


def test_option_values_are_checked() -> None:
    with pytest.raises(RecipeError) as caught:
        _avid("task.projection_norm=layernorm")
    assert str(caught.value) == "task.projection_norm must be one of 'none', 'batchnorm', got 'layernorm'"
    with pytest.raises(RecipeError) as caught:
        _avid("task.positives=queue")
    assert str(caught.value) == "task.positives must be one of 'bank', 'batch', got 'queue'"


def test_former_task_name_avid_still_builds_avid_cma() -> None:
    config = load_recipe(RECIPES / "synth" / "avid_cma_small.yaml",
                         ["data.video.size=32", "task.num_instances=50", "task.name=avid"])
    task = build_pretext_task(config)
    assert type(task) is AVIDCMA and task.hparams["config"]["task"]["name"] == "avid"


def test_batch_positives_and_batch_negatives_by_hand() -> None:
    model = _avid("task.loss=softmax", "task.positives=batch", "task.batch_negatives=true", "task.temperature=0.5")
    g = torch.Generator().manual_seed(0)
    v, a = torch.randn(3, 128, generator=g), torch.randn(3, 128, generator=g)
    index = torch.tensor([4, 9, 4])  # rows 0 and 2: two clips of one video, never each other's negative
    negatives = torch.tensor([[1, 2], [3, 5], [6, 7]])
    qv, qa = F.normalize(v, dim=1), F.normalize(a, dim=1)
    bank = model.audio_bank.bank
    pos = (qv * qa).sum(1) / 0.5
    expected_neg = []
    for i in range(3):
        row = [float(qv[i] @ bank[j]) / 0.5 for j in negatives[i]]
        row += [float(qv[i] @ qa[j]) / 0.5 for j in range(3) if int(index[j]) != int(index[i])]
        expected_neg.append(row)
    expected = sum(-math.log(math.exp(p) / (math.exp(p) + sum(math.exp(n) for n in row)))
                   for p, row in zip(pos.tolist(), expected_neg)) / 3
    got = model._instance_term(v, model.audio_bank, index, negatives, model.normalisers["v2a"], a)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # the paper's setting ignores the partner: bank positive, bank negatives only
    paper = _avid("task.loss=softmax", "task.positives=bank", "task.batch_negatives=false", "task.temperature=0.5")
    paper.audio_bank.bank = bank.clone()
    pos_bank = [float(qv[i] @ bank[index[i]]) / 0.5 for i in range(3)]
    neg_bank = [[float(qv[i] @ bank[j]) / 0.5 for j in negatives[i]] for i in range(3)]
    expected_paper = sum(-math.log(math.exp(p) / (math.exp(p) + sum(math.exp(n) for n in row)))
                         for p, row in zip(pos_bank, neg_bank)) / 3
    got_paper = paper._instance_term(v, paper.audio_bank, index, negatives, paper.normalisers["v2a"], a)
    assert got_paper.item() == pytest.approx(expected_paper, rel=1e-5)


def test_in_batch_only_needs_batch_positives_and_negatives() -> None:
    with pytest.raises(RecipeError, match=r"^task\.num_negatives=0 \(no bank negatives: in-batch InfoNCE\) needs "):
        _avid("task.num_negatives=0", "task.positives=bank")
    model = _avid("task.num_negatives=0", "task.positives=batch", "task.batch_negatives=true", "task.loss=softmax")
    v, a = torch.randn(4, 128), torch.randn(4, 128)
    loss = model.losses(v, a, torch.tensor([0, 1, 2, 3]))["xid"]
    qv, qa = F.normalize(v, dim=1), F.normalize(a, dim=1)
    s = qv @ qa.T / model.task_config.temperature  # CLIP-style: ½ (rows + columns)
    expected = 0.5 * (F.cross_entropy(s, torch.arange(4)) + F.cross_entropy(s.T, torch.arange(4)))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_checkpoint_with_cma_positives_loads_for_evaluation(tmp_path: Path) -> None:
    # `avssl localize localization.checkpoint=...` rebuilds the task from the recipe: its
    # positive-set buffer starts empty and must take the checkpoint's shape, as on resume
    from avssl.tasks.pretext import load_pretext_task

    task = _avid()
    assert task.positives.indices.shape[0] == 0
    positives = torch.randint(task.task_config.num_instances, (task.task_config.num_instances, 3))
    task.positives.indices = positives
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": {"config": task.hparams["config"]}}, path)
    loaded = load_pretext_task(path)
    assert torch.equal(loaded.positives.indices, positives)
    assert not loaded.training


def test_a_checkpoint_of_the_former_layout_loads_its_name_and_positive_sets(tmp_path: Path) -> None:
    # before the rename: task.name avid, and the positive sets a buffer of the task ("positives")
    from avssl.tasks.pretext import load_pretext_task

    trained = _avid("task.name=avid")
    trained.positives.indices = agreement_positives(trained.video_bank.bank, trained.audio_bank.bank, 4)
    state = {("positives" if key == "positives.indices" else key): value for key, value in trained.state_dict().items()}
    path = tmp_path / "avid.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": dict(trained.hparams), "global_step": 0}, path)
    loaded = load_pretext_task(path)
    assert type(loaded) is AVIDCMA and loaded.task_config.name == "avid"
    torch.testing.assert_close(loaded.positives.indices, trained.positives.indices)
    torch.testing.assert_close(loaded.video_bank.bank, trained.video_bank.bank)
