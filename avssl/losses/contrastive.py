"""AVTS's contrastive loss with margin (Korbar et al. 2018, "Cooperative Learning of Audio and Video Models from
Self-Supervised Synchronization", NeurIPS 2018), over paired or in-batch negatives."""
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


def paired_margin_loss(positive_distance: torch.Tensor, negative_distance: torch.Tensor,
                       margin: float = 0.99) -> torch.Tensor:
    """The margin loss over one positive and one negative per clip (the paper's batches)."""
    distance = torch.cat([positive_distance, negative_distance])
    in_sync = torch.cat([torch.ones_like(positive_distance), torch.zeros_like(negative_distance)])
    return margin_contrastive_loss(distance, in_sync, margin)


def in_batch_margin_loss(video: torch.Tensor, audio: torch.Tensor, index: torch.Tensor,
                         positive_distance: torch.Tensor, same_video_distance: torch.Tensor, same_video_share: float,
                         margin: float = 0.99) -> torch.Tensor:
    """½·positives + ½·[(1 − h)·every other video's audio + h·same-video negatives]: every
    other clip's audio of the batch is an easy negative, and the same-video (hard) negatives
    keep their share h of the negative term (h = 0 when the batch has none)."""
    distances = torch.cdist(F.normalize(video, dim=-1), F.normalize(audio, dim=-1))
    other_video = index[:, None] != index[None, :]
    easy = margin_contrastive_loss(distances[other_video], torch.zeros_like(distances[other_video]), margin)
    positive = margin_contrastive_loss(positive_distance, torch.ones_like(positive_distance), margin)
    if same_video_distance.numel() == 0:
        return 0.5 * (positive + easy)
    hard = margin_contrastive_loss(same_video_distance, torch.zeros_like(same_video_distance), margin)
    return 0.5 * (positive + (1 - same_video_share) * easy + same_video_share * hard)
