"""CAV-MAE's two terms ("Contrastive Audio-Visual Masked Autoencoder", Gong et al., ICLR 2023):
the mean squared error on the masked patches only, against per-patch normalised
targets, and an InfoNCE between the mean-pooled audio and visual outputs.

L = λ_r·(L_r,audio + L_r,video) + λ_c·L_c, with the paper's weights below.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from avssl.losses.nce import cross_modal_info_nce

#: Official code (src/models/cav_mae.py ``forward`` defaults, egs/audioset pretraining scripts):
#: mae_loss_weight=1.0, contrast_loss_weight=0.01, similarity divided by 0.05, norm_pix_loss=True.
RECONSTRUCTION_WEIGHT = 1.0
CONTRASTIVE_WEIGHT = 0.01
TEMPERATURE = 0.05
#: The decoder of the official CAVMAE class: width 512, 8 blocks, 16 heads, shared by both modalities.
DECODER_DIM, DECODER_DEPTH, DECODER_HEADS = 512, 8, 16
NORMALISE_EPS = 1e-6


def normalised_targets(patches: torch.Tensor, eps: float = NORMALISE_EPS) -> torch.Tensor:
    """Each patch (last axis) minus its mean over (var + ε)^½, the unbiased variance as in
    MAE's ``norm_pix_loss``: normalised pixels for frames, normalised log-mel for audio."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


def masked_reconstruction_loss(prediction: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor,
                               normalise: bool = True) -> torch.Tensor:
    """Mean over the removed patches (``mask`` 1) of each patch's mean squared error.

    ``prediction`` and ``patches`` are B×N×P (``patchify`` of the input), ``mask`` B×N."""
    if prediction.shape != patches.shape or mask.shape != patches.shape[:2]:
        raise ValueError(f"prediction {tuple(prediction.shape)}, patches {tuple(patches.shape)} and mask "
                         f"{tuple(mask.shape)} must be B×N×P, B×N×P and B×N")
    target = normalised_targets(patches) if normalise else patches
    per_patch = (prediction - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


def cav_mae_contrastive_loss(video: torch.Tensor, audio: torch.Tensor, temperature: float = TEMPERATURE,
                             bidirectional: bool = False) -> torch.Tensor:
    """InfoNCE of B×d pooled outputs (L2-normalised here). The official default is one
    direction: each video picks its audio among the batch's (``log_softmax`` over the audio
    axis); ``bidirectional`` averages both directions."""
    video, audio = F.normalize(video, dim=-1), F.normalize(audio, dim=-1)
    if bidirectional:
        return cross_modal_info_nce(video, audio, temperature)
    logits = video @ audio.T / temperature
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))
