"""Audio-visual correspondence: binary cross-entropy on (video, audio) pair logits, as AVC
trains it ("Look, Listen and Learn", ICCV 2017), and the one-negative-per-clip pairing
that AVC and AVTS draw their easy negatives with."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def paired_negative_permutation(index: torch.Tensor) -> torch.Tensor:
    """For each row, another row of a different instance (shift by one, then fix ties)."""
    batch = index.shape[0]
    partner = torch.roll(torch.arange(batch, device=index.device), 1)
    for shift in range(2, batch):
        clash = index[partner] == index
        if not clash.any():
            break
        partner = torch.where(clash, torch.roll(torch.arange(batch, device=index.device), shift), partner)
    return partner


def paired_bce(positive_logits: torch.Tensor, negative_logits: torch.Tensor) -> torch.Tensor:
    """½ [BCE(positives, 1) + BCE(negatives, 0)]: one negative per positive, the paper's loss."""
    return 0.5 * (F.binary_cross_entropy_with_logits(positive_logits, torch.ones_like(positive_logits))
                  + F.binary_cross_entropy_with_logits(negative_logits, torch.zeros_like(negative_logits)))


def balanced_pair_bce(logits: torch.Tensor, same_instance: torch.Tensor) -> torch.Tensor:
    """BCE over a B×B logit matrix: the diagonal is positive, pairs of other instances
    negative (pairs of the same instance off the diagonal are ignored); both classes
    weigh the same in total."""
    batch = logits.shape[0]
    positive = torch.eye(batch, dtype=torch.bool, device=logits.device)
    negative = ~same_instance
    loss_pos = F.binary_cross_entropy_with_logits(logits[positive], torch.ones(batch, device=logits.device))
    neg_logits = logits[negative]
    if neg_logits.numel() == 0:  # every clip of the batch comes from one video
        return loss_pos
    loss_neg = F.binary_cross_entropy_with_logits(neg_logits, torch.zeros_like(neg_logits))
    return 0.5 * (loss_pos + loss_neg)
