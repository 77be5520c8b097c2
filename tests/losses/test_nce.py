"""NCE against hand computation, the normaliser, the memory bank."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from avssl.losses.nce import (
    MemoryBank,
    NCENormaliser,
    cross_modal_info_nce,
    cross_modal_scores,
    info_nce_from_scores,
    nce_loss,
    sample_excluding,
)


def test_nce_value_by_hand() -> None:
    pos = torch.tensor([2.0, -1.0])
    neg = torch.tensor([[0.5, 1.0, -0.5], [0.0, 2.0, 1.0]])
    z = 0.8
    kz = 3 * z
    expected = 0.0
    for s_pos, row in zip(pos.tolist(), neg.tolist()):
        expected += -math.log(math.exp(s_pos) / (math.exp(s_pos) + kz))
        expected += sum(-math.log(kz / (math.exp(s) + kz)) for s in row)
    expected /= 2
    assert nce_loss(pos, neg, math.log(z)).item() == pytest.approx(expected, rel=1e-6)


def test_nce_gradient_by_hand() -> None:
    # d/ds⁺ [−log e^s/(e^s+KZ)] = −KZ/(e^s+KZ);  d/ds⁻ [−log KZ/(e^s+KZ)] = e^s/(e^s+KZ)
    pos = torch.tensor([0.3], requires_grad=True)
    neg = torch.tensor([[1.2, -0.4]], requires_grad=True)
    z = 1.5
    nce_loss(pos, neg, math.log(z)).backward()
    kz = 2 * z
    assert pos.grad.item() == pytest.approx(-kz / (math.exp(0.3) + kz), rel=1e-6)
    for s, g in zip((1.2, -0.4), neg.grad[0].tolist()):
        assert g == pytest.approx(math.exp(s) / (math.exp(s) + kz), rel=1e-6)


def test_several_positives_are_averaged_and_extreme_scores_stay_finite() -> None:
    pos = torch.tensor([[1.0, 3.0]])
    neg = torch.tensor([[0.0]])
    single = (nce_loss(torch.tensor([1.0]), neg, 0.0) + nce_loss(torch.tensor([3.0]), neg, 0.0)) / 2
    assert nce_loss(pos, neg, 0.0).item() == pytest.approx(single.item(), rel=1e-6)
    assert torch.isfinite(nce_loss(torch.tensor([-1e4]), torch.tensor([[1e4]]), 0.0))


def test_normaliser_is_estimated_once_and_saved() -> None:
    norm = NCENormaliser()
    assert not norm.is_set
    first = torch.tensor([[0.0, math.log(3.0)]])
    assert norm(first).item() == pytest.approx(math.log(2.0), rel=1e-6)  # mean(e^0, e^ln3) = 2
    fixed = norm(torch.full((1, 2), 10.0)).item()
    assert fixed == pytest.approx(math.log(2.0), rel=1e-6), "fixed after the first batch"
    restored = NCENormaliser()
    restored.load_state_dict(norm.state_dict())
    assert restored.is_set and restored.log_z.item() == pytest.approx(math.log(2.0))


def test_memory_bank_momentum_update_by_hand() -> None:
    bank = MemoryBank(4, 3, momentum=0.5)
    before = bank.bank.clone()
    x = torch.tensor([[3.0, 0.0, 4.0]])
    bank.update(torch.tensor([2]), x)
    expected = F.normalize(0.5 * before[2] + 0.5 * torch.tensor([0.6, 0.0, 0.8]), dim=0)
    torch.testing.assert_close(bank.bank[2], expected)
    torch.testing.assert_close(bank.bank[[0, 1, 3]], before[[0, 1, 3]])
    torch.testing.assert_close(bank.bank.norm(dim=1), torch.ones(4))
    with pytest.raises(IndexError, match="num_instances"):
        bank.update(torch.tensor([4]), x)


def test_repeated_index_in_one_step_applies_each_clip() -> None:
    bank = MemoryBank(3, 2, momentum=0.5)
    start = bank.bank[1].clone()
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    bank.update(torch.tensor([1, 1]), torch.stack([a, b]))
    once = F.normalize(0.5 * start + 0.5 * a, dim=0)
    torch.testing.assert_close(bank.bank[1], F.normalize(0.5 * once + 0.5 * b, dim=0))


def test_negatives_never_include_self_and_cover_the_rest() -> None:
    index = torch.tensor([0, 4, 2])
    negatives = sample_excluding(index[:, None], 5, 400, torch.Generator().manual_seed(0))
    for i, row in zip(index.tolist(), negatives):
        assert i not in row.tolist()
        assert set(row.tolist()) == set(range(5)) - {i}


def test_cross_modal_scores_are_cosines_over_temperature() -> None:
    bank = MemoryBank(3, 2)
    bank.bank.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
    query = torch.tensor([[2.0, 0.0]])
    pos, neg = cross_modal_scores(query, bank, torch.tensor([2]), torch.tensor([[0, 1]]), temperature=0.1)
    torch.testing.assert_close(pos, torch.tensor([[6.0]]))
    torch.testing.assert_close(neg, torch.tensor([[10.0, 0.0]]))


def test_cross_modal_scores_all_slots_and_gathered_paths_agree() -> None:
    # 12 slots of 4 dims: K = 2 negatives gather (12 > 2·4), K = 5 score every slot (12 ≤ 20)
    generator = torch.Generator().manual_seed(0)
    bank = MemoryBank(12, 4)
    bank.bank.copy_(F.normalize(torch.randn(12, 4, generator=generator), dim=1))
    positives = torch.tensor([[3, 7], [0, 1], [11, 2]])
    negatives = torch.randint(12, (3, 5), generator=generator)
    def fresh_query() -> torch.Tensor:
        return torch.randn(3, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)

    results = {}
    for k in (2, 5):
        query = fresh_query()
        pos, neg = cross_modal_scores(query, bank, positives, negatives[:, :k], temperature=0.07)
        bank.bank.add_(0.0)  # the task updates the bank in place before its backward pass
        (pos.sum() + (neg * torch.arange(k)).sum()).backward()
        results[k] = (pos, neg, query.grad)
    expected_neg = torch.einsum("bd,bkd->bk", F.normalize(fresh_query().detach(), dim=1), bank.bank[negatives]) / 0.07
    torch.testing.assert_close(results[5][1], expected_neg)
    torch.testing.assert_close(results[5][1][:, :2], results[2][1])
    torch.testing.assert_close(results[5][0], results[2][0])
    for k, (_, _, grad) in results.items():  # each path's gradient against the gathered einsum's
        query = fresh_query()
        q = F.normalize(query, dim=1)
        pos = torch.einsum("bd,bpd->bp", q, bank.bank[positives]) / 0.07
        neg = torch.einsum("bd,bkd->bk", q, bank.bank[negatives[:, :k]]) / 0.07
        (pos.sum() + (neg * torch.arange(k)).sum()).backward()
        torch.testing.assert_close(grad, query.grad)


def test_softmax_instance_loss_by_hand() -> None:
    from avssl.losses.nce import softmax_instance_loss

    pos, neg = torch.tensor([1.0, 0.0]), torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    expected = [-math.log(math.exp(1) / (math.exp(1) + 1 + math.exp(2))),
                -math.log(1 / (1 + math.exp(1) + math.exp(-1)))]
    assert softmax_instance_loss(pos, neg).item() == pytest.approx(sum(expected) / 2, rel=1e-6)


def test_cross_modal_info_nce_by_hand() -> None:
    video = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), dim=1)
    audio = F.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0]]), dim=1)
    s = (video @ audio.T / 0.5).tolist()  # [[1.6, 0], [1.92, 1.6]]
    lse = lambda *x: torch.logsumexp(torch.tensor(x), 0).item()  # noqa: E731
    video_to_audio = (lse(s[0][0], s[0][1]) - s[0][0] + lse(s[1][0], s[1][1]) - s[1][1]) / 2
    audio_to_video = (lse(s[0][0], s[1][0]) - s[0][0] + lse(s[0][1], s[1][1]) - s[1][1]) / 2
    assert cross_modal_info_nce(video, audio, 0.5).item() == pytest.approx((video_to_audio + audio_to_video) / 2)


def test_info_nce_from_scores_is_the_embedding_one_and_leaves_out_same_video_pairs() -> None:
    video = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=1)
    audio = F.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0], [1.0, 1.0]]), dim=1)
    scores = video @ audio.T
    assert info_nce_from_scores(scores, 0.5).item() == pytest.approx(cross_modal_info_nce(video, audio, 0.5).item())
    same = torch.tensor([[True, False, False], [False, True, True], [False, True, True]])  # clips 1, 2: one video
    s = (scores / 0.5).tolist()
    lse = lambda *x: torch.logsumexp(torch.tensor(x), 0).item()  # noqa: E731
    rows = lse(s[0][0], s[0][1], s[0][2]) - s[0][0] + lse(s[1][0], s[1][1]) - s[1][1] + lse(s[2][0], s[2][2]) - s[2][2]
    cols = lse(s[0][0], s[1][0], s[2][0]) - s[0][0] + lse(s[0][1], s[1][1]) - s[1][1] + lse(s[0][2], s[2][2]) - s[2][2]
    assert info_nce_from_scores(scores, 0.5, same).item() == pytest.approx((rows + cols) / 6, rel=1e-6)
