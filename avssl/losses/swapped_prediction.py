"""SwAV's swapped prediction ("Unsupervised Learning of Visual Features by Contrasting
Cluster Assignments", NeurIPS 2020, §3.1), across modalities as SeLaVi's online variant uses it."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from avssl.losses.sinkhorn import swav_codes


def swapped_prediction_loss(video_scores: torch.Tensor, audio_scores: torch.Tensor, epsilon: float,
                            temperature: float, iterations: int) -> torch.Tensor:
    """SwAV's swapped prediction across modalities (B×K prototype scores zᵀC of each).
    Codes: :func:`swav_codes` (equal prototype mass over the global batch), no gradient.
    Loss ½ [CE(q_v, p_a) + CE(q_a, p_v)]."""
    codes = [swav_codes(scores.detach(), epsilon, iterations).to(scores.dtype)
             for scores in (video_scores, audio_scores)]
    log_p_video = F.log_softmax(video_scores / temperature, dim=1)
    log_p_audio = F.log_softmax(audio_scores / temperature, dim=1)
    return 0.5 * (-(codes[0] * log_p_audio).sum(1).mean() - (codes[1] * log_p_video).sum(1).mean())
