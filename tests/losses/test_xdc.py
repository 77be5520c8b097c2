"""XDC's variants and pseudo-label loss against hand computation."""
from __future__ import annotations

import math

import pytest
import torch

from avssl.losses.xdc import (
    ClusterHeads,
    cluster_sets,
    clustering_features,
    labels_by_index,
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
