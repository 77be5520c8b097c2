"""SeLaVi's label bank: the labelling schedule, the cluster-size marginals and their rule,
relabelling from the bank."""
from __future__ import annotations

import logging

import pytest
import torch

from avssl.losses import label_bank as label_bank_module
from avssl.losses.label_bank import (
    LabelBank,
    check_cluster_sizes,
    gaussian_marginal,
    labeling_steps,
    shared_label_loss,
)
from avssl.losses.sinkhorn import SinkhornResult


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


def test_relabel_labels_every_cluster_when_one_is_disliked_by_all() -> None:
    # λ = 50 and cluster 0 thirty nats below the others for every sample: e^(−1500) is 0 in
    # float64, so the probability-domain iteration lost cluster 0 (no label, column error 1/3)
    bank = LabelBank(num_heads=2, num_instances=24, num_clusters=3, lam=50.0, marginal_std=0.0, seed=0)
    g = torch.Generator().manual_seed(0)
    logits = 0.3 * torch.randn(2, 24, 3, generator=g)
    logits[..., 0] -= 30.0
    bank.log_probs.copy_(torch.log_softmax(logits, dim=-1).half())
    bank.seen.fill_(True)
    bank.relabel()
    for head in range(2):
        assert torch.bincount(bank.labels[head], minlength=3).tolist() == [8, 8, 8]


def _result(column_error: float) -> SinkhornResult:
    return SinkhornResult(plan=torch.eye(3, dtype=torch.float64), iterations=2000, column_error=column_error,
                          tolerance=1e-9)


def test_cluster_sizes_rule_passes_warns_or_stops(caplog: pytest.LogCaptureFixture) -> None:
    marginal = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    with caplog.at_level(logging.WARNING, logger="avssl.losses.label_bank"):
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
    bank = LabelBank(num_heads=2, num_instances=24, num_clusters=3, lam=20.0, marginal_std=0.0, seed=0)
    bank.seen.fill_(True)
    monkeypatch.setattr(label_bank_module, "sinkhorn_knopp", lambda *args, **kwargs: _result(0.2))
    with pytest.raises(RuntimeError, match="SeLaVi head 0: .* off by up to 60.0% of the smallest target"):
        bank.relabel()
    assert (bank.labels == -1).all() and int(bank.labelings_done) == 0


def test_write_stores_the_rows_of_the_batch_and_relabel_at_labels_once_a_step() -> None:
    bank = LabelBank(num_heads=2, num_instances=6, num_clusters=3, lam=20.0, marginal_std=0.0, seed=0)
    log_probs = torch.log_softmax(torch.randn(2, 2, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    bank.write(torch.tensor([4, 1]), log_probs)
    torch.testing.assert_close(bank.log_probs[:, [4, 1]], log_probs.half())
    assert bank.seen.tolist() == [False, True, False, False, True, False]
    assert torch.all(bank.log_probs[:, 0] == bank.log_probs[0, 0, 0]), "unwritten rows keep the uniform prior"
    bank.relabel_at(3, schedule=[5, 9])
    assert not bank.has_labels
    bank.relabel_at(5, schedule=[5, 9])
    bank.relabel_at(5, schedule=[5, 9])  # the same step again (gradient accumulation): labelled once
    assert int(bank.labelings_done) == 1 and bank.targets(torch.tensor([4, 1])).shape == (2, 2)
    assert (bank.labels >= 0).all()


def test_shared_label_loss_by_hand() -> None:
    g = torch.Generator().manual_seed(0)
    video, audio = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    labels = torch.tensor([[0, 3, 1], [2, 2, 0]])
    by_hand = sum(-0.5 * (video[h, b].log_softmax(0)[labels[h, b]] + audio[h, b].log_softmax(0)[labels[h, b]])
                  for h in range(2) for b in range(3)) / 6
    assert shared_label_loss(video, audio, labels).item() == pytest.approx(by_hand.item(), rel=1e-6)
