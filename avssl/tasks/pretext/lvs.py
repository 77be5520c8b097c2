"""LVS ("Localizing Visual Sounds the Hard Way", Chen et al., CVPR 2021).

The audio embedding's cosine similarity with every location of the video feature map is
the heat map; a tri-map drawn from the map itself (positive region above ε_p, negative
region below ε_n, the band between ignored) gives each clip a positive score, a hard
negative (its own image's negative region) and easy negatives (its image with the other
clips' audio), contrasted by cross-entropy (``avssl.losses.lvs``, §3 and the official
code's constants). There is no projection head: the official code compares the
L2-normalised ResNet-18 outputs directly, so ``pair_scores`` is the cosine of the encoder
features and ``avssl localize`` scores every location with it (``per_location``).

``task.contrastive_warmup_epochs`` = W > 0 (not in the paper): the first W epochs train a
cross-modal in-batch InfoNCE on the heat map pooled over locations (``contrastive_pool``:
max, the multiple-instance score, or mean) instead of the tri-map loss; afterwards
``contrastive_weight`` keeps that term beside the tri-map loss. The paper starts its image
network from ImageNet, whose late features are local and discriminative; from scratch
every location's cosine is ~0.53 for every audio, the tri-map's positive region is empty
and the loss stays near log B for tens of epochs (docs/methods/lvs.md). The warm-up trains
the very map the tri-map is drawn from (no projection head), so that afterwards it has a
sounding region to find.

``task.positive_share`` / ``negative_share`` (not in the paper): each map's own quantiles
instead of the constant thresholds, so the positive region keeps its share of the map
(``avssl.losses.lvs``).

Other clips of the same video in the batch (same ``index``) are never easy negatives.
Validation reports, beside the loss, the correspondence accuracy on the batch's paired
negatives (``paired_negative_permutation``): how often a clip's positive-region score with
its own audio beats the one with a mismatched audio.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from avssl.data.views import AUDIO, INDEX, VIDEO
from avssl.errors import RecipeError
from avssl.losses.correspondence import paired_negative_permutation
from avssl.losses.lvs import (
    EPSILON_NEGATIVE,
    EPSILON_POSITIVE,
    TEMPERATURE,
    TRIMAP_TAU,
    LVSOutput,
    check_region_shares,
    lvs_logits,
    lvs_loss,
    masked_mean,
    positive_threshold,
    similarity_maps,
    soft_region,
)
from avssl.losses.nce import info_nce_from_scores
from avssl.tasks.pretext.base import PretextRecipe, PretextTask, TaskConfig


@dataclass
class LVSConfig(TaskConfig):
    name: str = "lvs"
    epsilon_positive: float = EPSILON_POSITIVE
    epsilon_negative: float = EPSILON_NEGATIVE
    trimap_tau: float = TRIMAP_TAU
    temperature: float = TEMPERATURE
    hard_negatives: bool = True  # false: the paper's ablation without the tri-map's negative region
    embedding_norm: Literal["none", "batchnorm"] = "none"  # batchnorm: standardise each channel before the cosine
    contrastive_warmup_epochs: int = 0  # W > 0: InfoNCE on the pooled heat map for the first W epochs
    contrastive_pool: Literal["max", "mean"] = "max"  # how the warm-up pools each image-audio map to one score
    contrastive_weight: float = 0.0  # the pooled InfoNCE's weight beside the tri-map loss after the warm-up
    contrastive_temperature: float = TEMPERATURE
    positive_share: float | None = None  # with negative_share: each map's quantiles as ε_p / ε_n (not in the paper)
    negative_share: float | None = None


class LVS(PretextTask):
    config_class = LVSConfig
    localization_map = "per_location"

    def __init__(self, recipe: PretextRecipe | dict) -> None:
        super().__init__(recipe)
        self.require_both_encoders()
        cfg: LVSConfig = self.task_config
        if cfg.contrastive_weight and not cfg.contrastive_warmup_epochs:
            raise RecipeError("task.contrastive_weight > 0 needs task.contrastive_warmup_epochs > 0")
        try:
            check_region_shares(cfg.positive_share, cfg.negative_share)
        except ValueError as err:
            raise RecipeError(f"task.{err}") from None
        if cfg.epsilon_negative > cfg.epsilon_positive:
            raise RecipeError(f"task.epsilon_negative ({cfg.epsilon_negative}) must not exceed "
                              f"task.epsilon_positive ({cfg.epsilon_positive})")
        batchnorm = cfg.embedding_norm == "batchnorm"
        self.video_norm = nn.BatchNorm1d(self.video_encoder.embedding_dim) if batchnorm else nn.Identity()
        self.audio_norm = nn.BatchNorm1d(self.audio_encoder.embedding_dim) if batchnorm else nn.Identity()

    def pair_scores(self, video_features: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        """The cosine of the (standardised, with ``embedding_norm: batchnorm``) features: the
        score the loss's heat map is made of, for one location or a pooled clip."""
        return super().pair_scores(self.video_norm(video_features), self.audio_norm(audio_features))

    def normalize_map(self, video_map: torch.Tensor) -> torch.Tensor:
        """``video_norm`` at every location of a B×C×h×w map (one BatchNorm over batch and locations)."""
        if isinstance(self.video_norm, nn.Identity):
            return video_map
        b, c, h, w = video_map.shape
        flat = self.video_norm(video_map.permute(0, 2, 3, 1).reshape(b * h * w, c))
        return flat.reshape(b, h, w, c).permute(0, 3, 1, 2)

    def embed(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The video feature map averaged over time (B×C×h×w) and the audio embedding, both
        standardised with ``embedding_norm: batchnorm``, and the encoders' pooled embeddings
        (for the monitors)."""
        feature_map = self.video_encoder.feature_map(batch[VIDEO])
        audio = self.audio_encoder(batch[AUDIO])
        return (self.normalize_map(feature_map.mean(dim=2)), self.video_encoder.pool(feature_map), audio,
                self.audio_norm(audio))

    def lvs(self, video_map: torch.Tensor, audio: torch.Tensor, index: torch.Tensor) -> LVSOutput:
        cfg: LVSConfig = self.task_config
        return lvs_logits(video_map, audio, cfg.epsilon_positive, cfg.epsilon_negative, cfg.trimap_tau,
                          cfg.temperature, cfg.hard_negatives, same_instance=index[:, None] == index[None, :],
                          positive_share=cfg.positive_share, negative_share=cfg.negative_share)

    def pooled_info_nce(self, video_map: torch.Tensor, audio: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The warm-up's InfoNCE: every image's heat map with every audio, pooled over locations."""
        cfg: LVSConfig = self.task_config
        maps = similarity_maps(video_map, audio).flatten(-2)
        scores = maps.amax(-1) if cfg.contrastive_pool == "max" else maps.mean(-1)
        return info_nce_from_scores(scores, cfg.contrastive_temperature, same_instance=index[:, None] == index[None, :])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        video_map, video, audio, audio_normed = self.embed(batch)
        out = self.lvs(video_map, audio_normed, batch[INDEX])
        cfg: LVSConfig = self.task_config
        size = audio.shape[0]
        if int(self.current_epoch) < cfg.contrastive_warmup_epochs:
            loss = self.pooled_info_nce(video_map, audio_normed, batch[INDEX])
            self.log("train/pooled_info_nce", loss, on_epoch=True, batch_size=size)
            loss = loss + 0.0 * out.heatmap.sum()  # the same parameters in the graph in both phases (DDP)
        else:
            loss = lvs_loss(out.logits)
            if cfg.contrastive_weight:
                pooled = self.pooled_info_nce(video_map, audio_normed, batch[INDEX])
                self.log("train/pooled_info_nce", pooled, on_epoch=True, batch_size=size)
                loss = loss + cfg.contrastive_weight * pooled
        self.log("train/loss", loss, prog_bar=True, on_epoch=True, batch_size=size)
        self.log("train/positive_area", out.positive_mask.mean(), on_epoch=True, batch_size=size)
        self.log_skipped(batch, "train")
        return {"loss": loss, "terms": {"lvs": loss.detach()},
                "embeddings": {"video": video.detach(), "audio": audio.detach()}}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        video_map, video, audio, audio_normed = self.embed(batch)
        out = self.lvs(video_map, audio_normed, batch[INDEX])
        cfg: LVSConfig = self.task_config
        mismatched = similarity_maps(video_map, audio_normed[paired_negative_permutation(batch[INDEX])])
        own = torch.arange(audio.shape[0], device=audio.device)
        mismatched = mismatched[own, own]  # image i with its partner's audio
        threshold = positive_threshold(mismatched, cfg.epsilon_positive, cfg.positive_share)
        wrong = masked_mean(mismatched, soft_region(mismatched, threshold, cfg.trimap_tau))
        accuracy = (out.logits[:, 0] * cfg.temperature > wrong).float().mean()
        size = audio.shape[0]
        self.log("val/loss", lvs_loss(out.logits), sync_dist=True, batch_size=size)
        self.log("val/accuracy", accuracy, prog_bar=True, sync_dist=True, batch_size=size)
        self.log_skipped(batch, "val")
        return {"embeddings": {"video": video, "audio": audio}}
