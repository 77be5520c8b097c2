"""XDC's variants and pseudo-label loss against hand computation."""
from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from avssl.losses.xdc import (
    ClusterHeads,
    PseudoLabels,
    balancing_weights,
    cluster_sets,
    clustering_features,
    labels_by_index,
    preprocess_features,
    pseudo_label_loss,
    supervision,
)


def test_which_clusters_supervise_which_encoder() -> None:
    assert supervision("xdc") == {"video": ("audio",), "audio": ("video",)}
    assert supervision("sdc") == {"video": ("video",), "audio": ("audio",)}
    assert supervision("mdc") == {"video": ("video", "audio"), "audio": ("video", "audio")}
    assert supervision("cdc") == {"video": ("joint",), "audio": ("joint",)}
    assert cluster_sets("xdc") == ("video", "audio") and cluster_sets("cdc") == ("joint",)
    with pytest.raises(ValueError, match="unknown clustering variant 'ydc'; choose one of sdc, xdc, mdc, cdc"):
        supervision("ydc")


def test_cdc_clusters_the_concatenation() -> None:
    video, audio = torch.ones(2, 3), torch.zeros(2, 2)
    features = clustering_features("cdc", video, audio)
    assert list(features) == ["joint"] and torch.equal(features["joint"], torch.tensor([[1.0, 1, 1, 0, 0]] * 2))
    assert list(clustering_features("xdc", video, audio)) == ["video", "audio"]


@pytest.mark.parametrize("variant, heads", [("sdc", 2), ("xdc", 2), ("mdc", 4), ("cdc", 2)])
def test_one_head_per_supervising_set(variant: str, heads: int) -> None:
    module = ClusterHeads(variant, video_dim=3, audio_dim=2, num_clusters={"video": 4, "audio": 5, "joint": 6})
    logits = module(torch.zeros(7, 3), torch.zeros(7, 2))
    shapes = {(e, s): t.shape for e, sets in logits.items() for s, t in sets.items()}
    assert len(shapes) == heads
    for (encoder, name), shape in shapes.items():
        assert name in supervision(variant)[encoder] and shape == (7, {"video": 4, "audio": 5, "joint": 6}[name])


def test_xdc_loss_by_hand() -> None:
    logits = {"video": {"audio": torch.tensor([[2.0, 0.0], [0.0, 1.0]])},
              "audio": {"video": torch.tensor([[0.0, 0.0, 3.0], [1.0, 1.0, 1.0]])}}
    labels = {"audio": torch.tensor([0, -1]), "video": torch.tensor([2, 1])}  # −1: not clustered yet
    video_term = math.log(math.exp(2) + 1) - 2  # row 1 ignored
    audio_term = ((math.log(2 + math.exp(3)) - 3) + math.log(3)) / 2
    assert pseudo_label_loss(logits, labels).item() == pytest.approx(video_term + audio_term, rel=1e-6)
    # a head with no labelled row adds 0 (and keeps the graph)
    unlabelled = {"audio": torch.tensor([-1, -1]), "video": torch.tensor([2, 1])}
    assert pseudo_label_loss(logits, unlabelled).item() == pytest.approx(audio_term, rel=1e-6)


def test_labels_by_index_on_one_process() -> None:
    bank = labels_by_index(torch.tensor([4, 0, 2]), torch.tensor([1, 3, 3]), 6)
    assert bank.tolist() == [3, -1, 3, -1, 1, -1]


def test_balancing_weights_by_hand() -> None:
    # sizes 3, 1, 0 (empty), 2 over 6 labelled rows (−1 ignored): n / (filled · n_c) = 6 / (3 · n_c)
    weights = balancing_weights(torch.tensor([0, 0, 0, 1, 3, 3, -1]), 4)
    torch.testing.assert_close(weights, torch.tensor([2 / 3, 2.0, 0.0, 1.0]))


def test_weighted_loss_by_hand() -> None:
    logits = {"video": {"audio": torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]])}}
    labels = {"audio": torch.tensor([0, 1, 1])}
    weights = {"audio": torch.tensor([2.0, 1.0])}
    rows = [math.log(math.exp(2) + 1) - 2, math.log(1 + math.e) - 1, math.log(2)]
    expected = (2 * rows[0] + rows[1] + rows[2]) / (2 + 1 + 1)  # weighted mean: Σ w·ℓ / Σ w
    assert pseudo_label_loss(logits, labels, weights).item() == pytest.approx(expected, rel=1e-6)


def test_preprocess_whitens_and_normalises() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g) @ torch.randn(5, 5, generator=g) + 3
    white = preprocess_features(x, pca_dim=3, l2_normalize=False)
    assert white.shape == (200, 3) and white.dtype == torch.float64
    torch.testing.assert_close(white.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(white.T @ white / 199, torch.eye(3, dtype=torch.float64), atol=1e-3, rtol=0)
    unit = preprocess_features(x, pca_dim=None, l2_normalize=True)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(200, dtype=torch.float64))
    torch.testing.assert_close(unit, (x / x.norm(dim=1, keepdim=True)).double())


def test_pseudo_labels_relabel_and_state() -> None:
    bank = PseudoLabels(("video", "audio"), 6, {"video": 2, "audio": 3})
    video = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    audio = torch.tensor([[0.0], [10.0], [20.0], [20.1]])
    bank.relabel(torch.tensor([5, 0, 2, 3]), {"video": video, "audio": audio}, epoch=4, seed=0, l2_normalize=False)
    v, a = bank.labels("video"), bank.labels("audio")
    assert v[5] == v[0] != v[2] == v[3] and v[1] == v[4] == -1
    assert len({int(a[5]), int(a[0]), int(a[2])}) == 3 and a[2] == a[3]
    assert int(bank.solved_epoch) == 4 and int(bank.clusterings_done) == 1
    restored = PseudoLabels(("video", "audio"), 6, {"video": 2, "audio": 3})
    restored.load_state_dict(bank.state_dict())
    assert torch.equal(restored.targets(torch.tensor([3, 1]))["audio"], a[[3, 1]])
    assert int(restored.solved_epoch) == 4 and int(restored.clusterings_done) == 1


def _relabel_on(rank: int, world: int, init_file: str, out: str) -> None:
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    g = torch.Generator().manual_seed(1)
    centres = 3 * torch.randn(5, 8, generator=g)
    video = centres[torch.arange(37) % 5] + torch.randn(37, 8, generator=g)
    audio = centres[(torch.arange(37) // 2) % 5, :4] + torch.randn(37, 4, generator=g)
    index = torch.randperm(40, generator=g)[:37]  # shard indices, not row numbers; 3 slots never seen
    rows = [slice(0, 37)] if world == 1 else [slice(0, 20), slice(20, 37)]  # uneven on purpose
    bank = PseudoLabels(("video", "audio"), 40, {"video": 5, "audio": 4})
    for epoch in range(2):  # two clusterings: the second draws other initial centroids
        bank.relabel(index[rows[rank]], {"video": video[rows[rank]], "audio": audio[rows[rank]]}, epoch, seed=7,
                     iterations=10, pca_dim=6)
        torch.save(bank.state_dict(), os.path.join(out, f"relabel{rank}_of{world}_epoch{epoch}.pt"))
    if world > 1:
        dist.destroy_process_group()


def test_relabel_two_processes_match_one(tmp_path: Path) -> None:
    _relabel_on(0, 1, "", str(tmp_path))
    mp.spawn(_relabel_on, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for epoch in range(2):
        one = torch.load(tmp_path / f"relabel0_of1_epoch{epoch}.pt")
        assert (one["labels_video"] >= 0).sum() == 37 and set(one["labels_video"].tolist()) == {-1, 0, 1, 2, 3, 4}
        for rank in range(2):
            two = torch.load(tmp_path / f"relabel{rank}_of2_epoch{epoch}.pt")
            assert two.keys() == one.keys()
            for key in one:
                assert torch.equal(two[key], one[key]), key


def test_align_labels_renames_to_the_best_overlap() -> None:
    from avssl.losses.xdc import align_labels

    new = torch.tensor([2, 2, 0, 0, 1, -1, 1])
    previous = torch.tensor([0, 0, 1, 1, 2, 2, -1])
    # new 2 ↔ old 0 (2 rows), new 0 ↔ old 1 (2 rows), new 1 ↔ old 2 (1 row); −1 stays
    assert align_labels(new, previous, 3).tolist() == [0, 0, 1, 1, 2, -1, 2]
    assert torch.equal(align_labels(new, torch.full((7,), -1), 3), new), "nothing to align with: unchanged"


def test_relabel_with_align_keeps_the_numbering() -> None:
    bank = PseudoLabels(("video",), 4, {"video": 2})
    x = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
    index = torch.arange(4)
    bank.relabel(index, {"video": x}, epoch=0, seed=0, l2_normalize=False)
    first = bank.labels("video").clone()
    other = PseudoLabels(("video",), 4, {"video": 2})
    other.relabel(index, {"video": x}, epoch=0, seed=1, l2_normalize=False)
    assert torch.equal(other.labels("video"), 1 - first), "unaligned, seed 1 numbers the two clusters the other way"
    for seed in range(1, 6):  # other initial centroids may number the clusters the other way round
        bank.relabel(index, {"video": x}, epoch=seed, seed=seed, l2_normalize=False, align=True)
        assert torch.equal(bank.labels("video"), first)
