"""LVS: the hard-way localisation loss ("Localizing Visual Sounds the Hard Way", Chen et al., CVPR 2021, §3).

The audio embedding's cosine similarity with every location of the video feature map is
the heat map S. A tri-map is drawn from S itself with soft (sigmoid) thresholds:

    positive region  m_p = σ((S − ε_p) / τ),    negative region  m_n = 1 − σ((S − ε_n) / τ),

the band ε_n < S < ε_p belongs to neither (ignored). Scores are masked means:

* positive ⟨S_ii, m_p,ii⟩ / Σ m_p,ii  (clip i's image with its own audio);
* hard negative ⟨S_ii, m_n,ii⟩ / Σ m_n,ii  (the same image's negative region, same audio);
* easy negatives ⟨S_ij, m_p,ij⟩ / Σ m_p,ij for every other audio j ≠ i, each over its own
  positive region in image i.

The loss is the cross-entropy of the positive among them at temperature T.

Constants of the official code (hche11/Localizing-Visual-Sounds-the-Hard-Way, model.py and
test.py): ε_p = 0.65, ε_n = 0.4, τ = 0.03 (the sigmoid's temperature), and the logits are
divided by 0.07 (the contrastive temperature). One difference: the official code scales the
easy-negative diagonal (j = i) by −99 to push it out of the softmax; here it is removed.

Region shares (not in the paper): with ``positive_share`` p and ``negative_share`` n the
thresholds are each map's own quantiles instead of constants, ε_p = q(S, 1 − p) and
ε_n = q(S, n) over the map's locations (detached), so the positive region keeps about a share
p of the map whatever the spread of the cosines. With the constants, a map trained from scratch
can shrink its positive region far below the sounding object (a smaller region raises its mean
and serves the hard negative too), and its peak then covers only part of the object
(docs/methods/lvs.md, "Three seeds").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: the official code's thresholds and temperatures (module docstring)
EPSILON_POSITIVE = 0.65
EPSILON_NEGATIVE = 0.4
TRIMAP_TAU = 0.03
TEMPERATURE = 0.07
#: the smallest mask sum a masked mean divides by
MIN_REGION = 1e-12


@dataclass
class LVSOutput:
    logits: torch.Tensor  # B×(1 + (B−1) [+ 1]): positive, easy negatives (other audios), hard negative
    heatmap: torch.Tensor  # B×H×W: S_ii, the localisation map of each clip's own audio
    positive_mask: torch.Tensor  # B×H×W soft positive region of S_ii
    negative_mask: torch.Tensor  # B×H×W soft negative region of S_ii


def similarity_maps(video_map: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """B_v×B_a×H×W cosine similarities of every image's locations (B×D×H×W) with every audio (B×D)."""
    return torch.einsum("bdhw,ad->bahw", F.normalize(video_map, dim=1), F.normalize(audio, dim=1))


def soft_region(similarity: torch.Tensor, threshold: float, tau: float) -> torch.Tensor:
    """σ((S − threshold)/τ): ≈1 where S is above the threshold, ≈0 below."""
    return torch.sigmoid((similarity - threshold) / tau)


def share_threshold(similarity: torch.Tensor, share_above: float) -> torch.Tensor:
    """Each map's (1 − share_above) quantile over its locations (the last two dimensions),
    shaped to broadcast against it and detached: the threshold above which about
    ``share_above`` of the map lies (linear interpolation between locations)."""
    flat = similarity.detach().flatten(-2)
    return torch.quantile(flat, 1.0 - share_above, dim=-1)[..., None, None]


def positive_threshold(similarity: torch.Tensor, epsilon_positive: float,
                       positive_share: float | None) -> torch.Tensor | float:
    """ε_p for these maps: the constant, or with a ``positive_share`` each map's own quantile."""
    return epsilon_positive if positive_share is None else share_threshold(similarity, positive_share)


def masked_mean(similarity: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ mask·S / Σ mask over the last two (spatial) dimensions; 0 for a region whose mask
    underflowed to all zeros (the official code's 0/0 would put NaN in the loss)."""
    return (mask * similarity).flatten(-2).sum(-1) / mask.flatten(-2).sum(-1).clamp_min(MIN_REGION)


def lvs_logits(video_map: torch.Tensor, audio: torch.Tensor, epsilon_positive: float = EPSILON_POSITIVE,
               epsilon_negative: float = EPSILON_NEGATIVE, tau: float = TRIMAP_TAU,
               temperature: float = TEMPERATURE, hard_negatives: bool = True,
               same_instance: torch.Tensor | None = None, positive_share: float | None = None,
               negative_share: float | None = None) -> LVSOutput:
    """The logits of the LVS loss (the positive in column 0) and the maps that made them.

    video_map: B×D×H×W spatial video features; audio: B×D pooled audio embeddings.
    ``hard_negatives=False`` drops the same-image negative region (the paper's ablation
    without the tri-map's negative term). ``epsilon_negative == epsilon_positive`` makes
    the negative region the complement of the positive one (no uncertain band).
    ``same_instance``: B×B, true where audio j comes from the same video as image i (two
    clips of one video in the batch); those easy negatives get logit −∞ (left out).
    ``positive_share`` / ``negative_share`` (both or neither): each map's own quantiles replace
    ε_p and ε_n (module docstring).
    """
    check_region_shares(positive_share, negative_share)
    if epsilon_negative > epsilon_positive:
        raise ValueError(f"epsilon_negative ({epsilon_negative}) must not exceed epsilon_positive ({epsilon_positive})")
    maps = similarity_maps(video_map, audio)  # B×B×H×W: [i, j] = image i, audio j
    b = maps.shape[0]
    positive_all = soft_region(maps, positive_threshold(maps, epsilon_positive, positive_share), tau)
    own = torch.arange(b, device=maps.device)
    heatmap, positive_mask = maps[own, own], positive_all[own, own]
    low = -epsilon_negative if negative_share is None else -share_threshold(heatmap, 1.0 - negative_share)
    negative_mask = soft_region(-heatmap, low, tau)  # 1 − σ(x) = σ(−x), without cancellation
    positive = masked_mean(heatmap, positive_mask)[:, None]
    others = ~torch.eye(b, dtype=torch.bool, device=maps.device)
    easy = masked_mean(maps, positive_all)
    if same_instance is not None:
        easy = easy.masked_fill(same_instance, float("-inf"))
    easy = easy[others].view(b, b - 1)
    columns = [positive, easy]
    if hard_negatives:
        columns.append(masked_mean(heatmap, negative_mask)[:, None])
    return LVSOutput(torch.cat(columns, dim=1) / temperature, heatmap, positive_mask, negative_mask)


def check_region_shares(positive_share: float | None, negative_share: float | None) -> None:
    """Both shares or neither, each in (0, 1), together at most the whole map."""
    if (positive_share is None) != (negative_share is None):
        raise ValueError("positive_share and negative_share go together: set both or neither")
    if positive_share is None:
        return
    for name, share in (("positive_share", positive_share), ("negative_share", negative_share)):
        if not 0.0 < share < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {share}")
    if positive_share + negative_share > 1.0:
        raise ValueError(f"positive_share + negative_share must be at most 1, got {positive_share} + {negative_share}")


def lvs_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of column 0 (the positive) among the row's logits, averaged over the batch."""
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


__all__ = ["EPSILON_POSITIVE", "EPSILON_NEGATIVE", "TRIMAP_TAU", "TEMPERATURE", "LVSOutput", "similarity_maps",
           "soft_region", "share_threshold", "positive_threshold", "masked_mean", "check_region_shares", "lvs_logits",
           "lvs_loss"]
