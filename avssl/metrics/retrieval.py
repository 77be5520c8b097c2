"""Cross-modal retrieval within a batch."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def in_batch_retrieval_top1(video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """½·(video→audio + audio→video) top-1 of B×d embeddings (cosine): is row i's own partner
    the nearest of the batch's other modality?"""
    similarity = F.normalize(video, dim=1) @ F.normalize(audio, dim=1).T
    target = torch.arange(video.shape[0], device=video.device)
    return 0.5 * ((similarity.argmax(1) == target).float().mean() + (similarity.argmax(0) == target).float().mean())
