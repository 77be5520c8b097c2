"""AVE-Net and AVOL-Net correspondence heads ("Objects that Sound", Arandjelović & Zisserman, ECCV 2018).

AVE-Net (§3): both embeddings (128-D in the paper) are L2-normalised; their Euclidean
distance, a single number, is the only input of a tiny fully connected layer 1 → 2 whose
softmax says "corresponds / does not". The distance is the bottleneck that makes the
embeddings alignable across modalities (cross-modal retrieval by distance).

AVOL-Net (§5): the video keeps its spatial grid (14×14 in the paper); the audio embedding's
scalar product with every location gives a similarity map, which is calibrated (one scale,
one bias, learnt), passed through a sigmoid and max-pooled over locations: the clip
corresponds if at least one location does (multiple-instance learning). The calibrated map
is the localisation heat map. Trained with the logistic loss.

Both heads are trained on the audio-visual correspondence task: half of the pairs are a
clip's own video and audio (target 1), half mismatched (target 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class AVENetHead(nn.Module):
    """Correspondence logits (B×2; column 1 = "corresponds") from the distance of the
    L2-normalised embeddings through an fc 1 → 2."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 2)
        # Start as AVC's distance head does (log-odds 5 − 5·d): PyTorch's default start has a
        # slope near 0 on the distance, and the demo's AVE run stayed at loss 0.693 for 30 epochs.
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[2.5], [-2.5]]))
            self.fc.bias.copy_(torch.tensor([-2.5, 2.5]))

    @staticmethod
    def distance(video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """B Euclidean distances of the L2-normalised B×D embeddings (in [0, 2])."""
        return (F.normalize(video, dim=1) - F.normalize(audio, dim=1)).norm(dim=1)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return self.fc(self.distance(video, audio)[:, None])

    def all_pairs(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """B_v×B_a×2 logits of every (video i, audio j) pair."""
        return self.fc(torch.cdist(F.normalize(video, dim=1), F.normalize(audio, dim=1))[..., None])


def correspondence_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the 2-way output (AVE-Net) against 0/1 correspondence targets."""
    return F.cross_entropy(logits, target.long())


@dataclass
class AVOLOutput:
    logit: torch.Tensor  # B: the correspondence logit, max over locations of the calibrated map
    heatmap: torch.Tensor  # B×H×W calibrated logits per location; sigmoid gives the localisation map


class AVOLNetHead(nn.Module):
    """Per-location similarity of the audio embedding with the spatial video embedding,
    calibrated (a·s + b), max-pooled: the correspondence logit and the heat map.

    The paper's order is sigmoid then max-pool; the sigmoid is increasing, so the max of
    the calibrated logits is the logit of that maximum, and the loss stays in logit space.
    ``normalize``: L2-normalise the audio and every location's video embedding first (the
    paper's embeddings are normalised), so the similarity is a cosine.
    """

    def __init__(self, normalize: bool = True, scale: float = 1.0, bias: float = 0.0) -> None:
        super().__init__()
        self.normalize = normalize
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def forward(self, video_map: torch.Tensor, audio: torch.Tensor) -> AVOLOutput:
        """video_map: B×D×H×W; audio: B×D (pair i is video i with audio i)."""
        if self.normalize:
            video_map, audio = F.normalize(video_map, dim=1), F.normalize(audio, dim=1)
        similarity = torch.einsum("bdhw,bd->bhw", video_map, audio)
        heatmap = self.scale * similarity + self.bias
        return AVOLOutput(heatmap.flatten(1).max(dim=1).values, heatmap)

    def all_pairs(self, video_map: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """B_v×B_a max-pooled logits of every (video i, audio j) pair."""
        if self.normalize:
            video_map, audio = F.normalize(video_map, dim=1), F.normalize(audio, dim=1)
        similarity = torch.einsum("bdhw,ad->bahw", video_map, audio)
        return (self.scale * similarity + self.bias).flatten(2).max(dim=2).values


def avol_loss(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Logistic loss of the max-pooled correspondence logit against 0/1 targets."""
    return F.binary_cross_entropy_with_logits(logit, target.to(logit.dtype))


__all__ = ["AVENetHead", "correspondence_loss", "AVOLOutput", "AVOLNetHead", "avol_loss"]
