"""AVTS's contrastive loss with margin (Korbar et al. 2018, "Cooperative Learning of Audio and Video Models from
Self-Supervised Synchronization", NeurIPS 2018)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def embedding_distance(video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """‖v̄ − ā‖₂ of L2-normalised rows (so the distance lies in [0, 2])."""
    return (F.normalize(video, dim=-1) - F.normalize(audio, dim=-1)).norm(dim=-1)


def margin_contrastive_loss(distance: torch.Tensor, in_sync: torch.Tensor, margin: float = 0.99) -> torch.Tensor:
    """mean[y·d² + (1 − y)·max(0, η − d)²]: pulls in-sync pairs together and pushes the
    others beyond the margin η. ``in_sync`` is 1 for positives, 0 for negatives."""
    y = in_sync.to(distance.dtype)
    return (y * distance.pow(2) + (1 - y) * F.relu(margin - distance).pow(2)).mean()
