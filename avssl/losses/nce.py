"""Noise-contrastive estimation with a memory bank (Wu et al. 2018), as AVID uses it
("Audio-Visual Instance Discrimination with Cross-Modal Agreement", CVPR 2021), and the memory bank itself.

With a fixed normaliser Z and K noise samples, a score s = xᵀm/τ has

    P(data | s) = e^s / (e^s + K·Z),    P(noise | s) = K·Z / (e^s + K·Z),

and the loss of one query is −mean_p log P(data | s⁺_p) − Σ_j log P(noise | s⁻_j). In
log-space: −log P(data | s) = softplus(log KZ − s), −log P(noise | s) = softplus(s − log KZ),
which stays finite for any score.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from avssl.distributed import all_reduce, gather


def nce_loss(positive: torch.Tensor, negative: torch.Tensor, log_z: torch.Tensor | float) -> torch.Tensor:
    """NCE loss, averaged over the batch.

    positive: B×P scores (P ≥ 1 positives per query; their terms are averaged);
    negative: B×K noise scores (summed); ``log_z``: log of the normaliser Z. The noise
    ratio is K = ``negative.shape[1]``.
    """
    if positive.dim() == 1:
        positive = positive[:, None]
    log_noise = math.log(negative.shape[1]) + torch.as_tensor(log_z, dtype=positive.dtype, device=positive.device)
    pos_term = F.softplus(log_noise - positive).mean(dim=1)
    neg_term = F.softplus(negative - log_noise).sum(dim=1)
    return (pos_term + neg_term).mean()


def softmax_instance_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """−log softmax of the positive among itself and the K negatives (InfoNCE over the
    bank), averaged over the batch; with several positives (B×P) their terms are averaged.
    docs/methods/avid_cma.md's alternative to NCE: no normaliser Z to estimate."""
    if positive.dim() == 1:
        positive = positive[:, None]
    log_denominator = torch.logsumexp(torch.cat([positive, negative], dim=1), dim=1)
    return (log_denominator[:, None] - positive).mean()


def cross_modal_info_nce(video: torch.Tensor, audio: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric in-batch InfoNCE of B×d L2-normalised embeddings: clip i's video against
    every audio of the batch (its own is the positive) and the same for audio."""
    return info_nce_from_scores(video @ audio.T, temperature)


def info_nce_from_scores(scores: torch.Tensor, temperature: float,
                         same_instance: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric in-batch InfoNCE of a B×B score matrix ([i, j]: video i with audio j, the
    diagonal the positives), for scores that are not a product of two embeddings (LVS's
    pooled localisation maps). ``same_instance``: B×B, true where i and j come from one
    video; those off-diagonal pairs are left out (logit −∞), never negatives."""
    logits = scores / temperature
    target = torch.arange(logits.shape[0], device=logits.device)
    if same_instance is not None:
        logits = logits.masked_fill(same_instance & (target[:, None] != target[None, :]), float("-inf"))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def projected_info_nce(video_projection: nn.Module, audio_projection: nn.Module, video_features: torch.Tensor,
                       audio_features: torch.Tensor, temperature: float) -> torch.Tensor:
    """:func:`cross_modal_info_nce` of each modality's features through its projection,
    L2-normalised: the contrastive warm-up the clustering methods (SeLaVi, XDC) share."""
    return cross_modal_info_nce(F.normalize(video_projection(video_features), dim=1),
                                F.normalize(audio_projection(audio_features), dim=1), temperature)


class NCENormaliser(nn.Module):
    """Z, estimated once from the first batch's noise scores (mean of e^s⁻ over the
    batch and every rank), then fixed and saved in the checkpoint ("Audio-Visual Instance Discrimination with
    Cross-Modal Agreement", CVPR 2021)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("log_z", torch.tensor(float("nan"), dtype=torch.float64))

    @property
    def is_set(self) -> bool:
        return not bool(torch.isnan(self.log_z))

    @torch.no_grad()
    def forward(self, negative: torch.Tensor) -> torch.Tensor:
        if not self.is_set:
            total = all_reduce(torch.stack([negative.double().exp().sum(),
                                                torch.tensor(negative.numel(), dtype=torch.float64,
                                                             device=negative.device)]))
            self.log_z.fill_(float(torch.log(total[0] / total[1])))
        return self.log_z.float()


class MemoryBank(nn.Module):
    """One L2-normalised D-dim slot per training instance, keyed by the shard ``index``,
    updated with momentum: M[i] ← normalise(m·M[i] + (1−m)·x̄ᵢ)."""

    def __init__(self, num_instances: int, dim: int, momentum: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        if num_instances < 2:
            raise ValueError(f"a memory bank needs at least 2 instances, got {num_instances}")
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("bank", F.normalize(torch.randn(num_instances, dim, generator=generator), dim=1))
        self.momentum = momentum

    @property
    def num_instances(self) -> int:
        return self.bank.shape[0]

    def check_index(self, index: torch.Tensor) -> None:
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.num_instances):
            raise IndexError(
                f"instance index out of range [0, {self.num_instances}): got {int(index.min())}..{int(index.max())}; "
                "is task.num_instances the size of the training split?"
            )

    @torch.no_grad()
    def update(self, index: torch.Tensor, embeddings: torch.Tensor) -> None:
        """Momentum update with this step's embeddings of every rank (gathered here).
        Several clips of one instance in a step: each is applied in turn."""
        index, embeddings = gather(index), gather(F.normalize(embeddings.detach(), dim=1))
        self.check_index(index)
        if torch.unique(index).numel() == index.numel():
            mixed = self.momentum * self.bank[index] + (1 - self.momentum) * embeddings.to(self.bank.dtype)
            self.bank[index] = F.normalize(mixed, dim=1)
            return
        for i, x in zip(index.tolist(), embeddings.to(self.bank.dtype)):
            self.bank[i] = F.normalize(self.momentum * self.bank[i] + (1 - self.momentum) * x, dim=0)


def sample_excluding(excluded: torch.Tensor, num_instances: int, k: int, generator: torch.Generator | None = None,
                     *, total_rows: int | None = None, row_offset: int = 0) -> torch.Tensor:
    """B×k indices uniform over [0, N) minus each row's ``excluded`` set (B×m, sorted,
    distinct): draw from the N − m others and map past the excluded ones in closed form.

    For a rank's share of a global batch, pass ``total_rows`` (global B) and
    ``row_offset``: the draw is made for every row and sliced, so the numbers a row gets
    do not depend on how the batch is split over ranks.
    """
    b, m = excluded.shape
    rows = total_rows if total_rows is not None else b
    draw = torch.randint(0, num_instances - m, (rows, k), generator=generator)[row_offset:row_offset + b]
    draw = draw.to(excluded.device)
    shifted = excluded - torch.arange(m, device=excluded.device)  # e_j − j: each excluded one below skips one
    return draw + (shifted[:, None, :] <= draw[:, :, None]).sum(-1)


def cross_modal_scores(query: torch.Tensor, bank: MemoryBank, positive_index: torch.Tensor,
                       negative_index: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of normalised queries against bank slots: (B×P positives, B×K negatives).

    Either every slot's score (one B×D @ D×N product, then picked) or the picked slots'
    embeddings (B×K×D, gathered): whichever tensor is smaller. The same numbers up to
    rounding; at the CPU demo's sizes (N = 2,400, K = 1,024, D = 128) the product spares
    gathering a B×K×D copy of the bank per direction and step, and AVID+CMA trains faster
    (docs/benchmarks.md)."""
    q = F.normalize(query, dim=1)
    if positive_index.dim() == 1:
        positive_index = positive_index[:, None]
    slots, dim = bank.bank.shape
    if slots <= negative_index.shape[1] * dim:
        # a copy: the bank is updated in place before the backward pass needs it
        scores = q @ bank.bank.to(q.dtype, copy=True).T / temperature
        return scores.gather(1, positive_index), scores.gather(1, negative_index)
    pos = torch.einsum("bd,bpd->bp", q, bank.bank[positive_index].to(q.dtype)) / temperature
    neg = torch.einsum("bd,bkd->bk", q, bank.bank[negative_index].to(q.dtype)) / temperature
    return pos, neg



def instance_discrimination_loss(query: torch.Tensor, bank: MemoryBank, index: torch.Tensor,
                                 negatives: torch.Tensor, normaliser: NCENormaliser, temperature: float,
                                 loss: Literal["nce", "softmax"] = "nce", partner: torch.Tensor | None = None,
                                 batch_positives: bool = False, batch_negatives: bool = False) -> torch.Tensor:
    """One direction of AVID's instance discrimination: queries (B×D) against their bank
    slots ``index`` (B, or B×P positive sets) and the ``negatives`` slots (B×K), by NCE with
    ``normaliser``'s Z (estimated on the bank negatives only) or, ``loss="softmax"``, InfoNCE.
    ``partner``: the other modality's embeddings of this batch; ``batch_positives`` takes the
    positive from it instead of the bank, ``batch_negatives`` adds its other clips as
    negatives (pairs of two clips of one instance never are)."""
    pos, neg = cross_modal_scores(query, bank, index, negatives, temperature)
    log_z_scores = neg  # Z is estimated on the bank negatives only
    if partner is not None and (batch_positives or batch_negatives):
        q, p = F.normalize(query, dim=1), F.normalize(partner, dim=1)
        if batch_positives:
            pos = (q * p).sum(dim=1, keepdim=True) / temperature
        if batch_negatives:
            in_batch = (q @ p.T / temperature).masked_fill(index[:, None] == index[None, :], -float("inf"))
            neg = torch.cat([neg, in_batch], dim=1)
    if loss == "softmax":
        return softmax_instance_loss(pos, neg)
    return nce_loss(pos, neg, normaliser(log_z_scores))


__all__ = ["nce_loss", "softmax_instance_loss", "NCENormaliser", "MemoryBank", "cross_modal_scores", "sample_excluding",
           "instance_discrimination_loss"]
