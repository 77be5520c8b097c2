"""Robust cross-modal instance discrimination ("Robust Audio-Visual Instance Discrimination",
Morgado, Misra & Vasconcelos, CVPR 2021, §3).

Cross-modal instance discrimination (xID) scores a query (say clip i's video embedding)
against its positive, clip i's audio slot ā_i in the memory bank, and K negatives ā_j.
Two sources of noise and their remedies:

* Faulty positives (§3.2): clips whose audio and video are unrelated. Each query's loss
  is weighted by how its positive similarity s_i = v̄_iᵀā_i (memory-bank slots) sits in
  the distribution of all positive similarities: with μ, σ that distribution's mean and
  standard deviation, w_i = Φ((s_i − (μ + δσ)) / (κσ)), Φ the standard normal CDF. δ
  shifts where the weights fall (in units of σ), κ how sharply. The loss is
  Σ w_i ℓ_i / Σ w_i.
* Faulty negatives (§3.3): negatives of the same kind as the query. The one-hot target
  over {positive, negatives} is smoothed with a distribution of instance relations,
  y = (1 − λ)·e_0 + λ·softmax(r / T_s), where r holds the query instance's within-modal
  similarities v̄_iᵀv̄_j to itself (column 0) and to each negative (the paper's "soft xID"),
  and ℓ_i = −Σ_j y_ij log p_ij with p the softmax of the xID scores.

Scores come from :func:`avssl.losses.nce.cross_modal_scores` (bank slots), negatives from
:func:`avssl.losses.nce.sample_excluding`. λ, T_s, δ and κ are parameters without defaults:
the recipes set them (docs/recipes.md says where each value comes from). A score of −inf
(a masked candidate) has target 0 and adds nothing to the loss.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from avssl.losses.nce import MemoryBank, cross_modal_scores


def bank_positive_similarity(video_bank: MemoryBank, audio_bank: MemoryBank) -> torch.Tensor:
    """N similarities v̄_iᵀā_i of every instance's own video and audio slots: the
    distribution the faulty-positive weights are measured against."""
    return (video_bank.bank * audio_bank.bank).sum(dim=1)


def faulty_positive_weights(positive_similarity: torch.Tensor, reference: torch.Tensor, delta: float,
                            kappa: float) -> torch.Tensor:
    """w = Φ((s − (μ + δσ)) / (κσ)) for the B positive similarities ``s``, with μ and σ the
    mean and standard deviation of ``reference`` (every instance's positive similarity)."""
    if kappa <= 0:
        raise ValueError(f"kappa must be positive, got {kappa}")
    mean, std = reference.double().mean(), reference.double().std().clamp_min(1e-12)
    z = (positive_similarity.double() - (mean + delta * std)) / (kappa * std)
    return (0.5 * (1 + torch.erf(z / math.sqrt(2)))).to(positive_similarity.dtype)


def within_modal_similarity(bank: MemoryBank, index: torch.Tensor, negative_index: torch.Tensor) -> torch.Tensor:
    """B×(1+K) similarities of each instance's slot with itself (column 0) and with each
    negative's slot in the same (query-modality) bank."""
    return torch.cat(cross_modal_scores(bank.bank[index], bank, index, negative_index, temperature=1.0), dim=1)


def smoothed_targets(relations: torch.Tensor, smoothing: float, temperature: float) -> torch.Tensor:
    """(1 − λ)·one-hot on column 0 + λ·softmax(relations / T): B×(1+K), rows sum to 1."""
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing must lie in [0, 1], got {smoothing}")
    soft = F.softmax(relations.detach() / temperature, dim=1)
    hard = torch.zeros_like(soft)
    hard[:, 0] = 1.0
    return (1 - smoothing) * hard + smoothing * soft


def soft_instance_loss(positive: torch.Tensor, negative: torch.Tensor, targets: torch.Tensor | None = None,
                       weights: torch.Tensor | None = None,
                       weight_total: torch.Tensor | float | None = None) -> torch.Tensor:
    """−Σ_j y_j log softmax(positive, negatives)_j per query, weighted mean over queries.

    positive: B (or B×1) scores; negative: B×K; ``targets``: B×(1+K) (None: one-hot on the
    positive, xID's softmax loss); ``weights``: B (None: all 1), divided by ``weight_total``
    (None: their sum). Under data parallelism, pass the sum over every rank divided by the
    number of ranks: the ranks' gradients, averaged, are then those of the global batch's
    weighted mean."""
    if positive.dim() == 1:
        positive = positive[:, None]
    log_p = F.log_softmax(torch.cat([positive, negative], dim=1), dim=1)
    if targets is None:
        per_query = -log_p[:, 0]
    else:  # a masked score (−inf, target 0) adds nothing, not 0·(−inf) = nan
        per_query = -torch.where(targets > 0, targets * log_p, torch.zeros_like(log_p)).sum(dim=1)
    if weights is None:
        return per_query.mean()
    weights = weights.detach()
    total = weights.sum() if weight_total is None else torch.as_tensor(weight_total, dtype=weights.dtype)
    return (weights * per_query).sum() / total.clamp_min(1e-12)


__all__ = ["bank_positive_similarity", "faulty_positive_weights", "within_modal_similarity", "smoothed_targets",
           "soft_instance_loss"]
