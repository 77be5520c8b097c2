"""CMA's agreement positives against brute force."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from avssl.losses.agreement import PositiveSets, agreement_positives, excluded_from_negatives


def test_agreement_positives_match_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    video = F.normalize(torch.randn(30, 8, generator=g), dim=1)
    audio = F.normalize(torch.randn(30, 8, generator=g), dim=1)
    got = agreement_positives(video, audio, k=5, chunk=7)
    for i in range(30):
        rho = [min(float(video[i] @ video[j]), float(audio[i] @ audio[j])) if j != i else -9 for j in range(30)]
        best = sorted(range(30), key=lambda j: -rho[j])[:5]
        assert got[i].tolist() == sorted(best)


def test_excluded_from_negatives_is_each_rows_positives_and_itself_sorted() -> None:
    positives = torch.tensor([[3, 9], [0, 1]])
    torch.testing.assert_close(excluded_from_negatives(positives, torch.tensor([5, 7])),
                               torch.tensor([[3, 5, 9], [0, 1, 7]]))


def test_positive_sets_solve_from_the_banks_and_load_a_checkpoint_of_any_shape() -> None:
    g = torch.Generator().manual_seed(1)
    video = F.normalize(torch.randn(12, 4, generator=g), dim=1)
    audio = F.normalize(torch.randn(12, 4, generator=g), dim=1)
    sets = PositiveSets(k=3, chunk=5)
    assert not sets.solved and sets.indices.shape == (0, 3)
    sets.solve(video, audio)
    assert sets.solved
    torch.testing.assert_close(sets.indices, agreement_positives(video, audio, k=3))
    fresh = PositiveSets(k=3)  # empty: CMA had not started in this process
    fresh.load_state_dict(sets.state_dict(), strict=True)
    torch.testing.assert_close(fresh.indices, sets.indices)
