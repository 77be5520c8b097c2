"""AVE-Net and AVOL-Net ("Objects that Sound", Arandjelović & Zisserman, ECCV 2018).

Both learn audio-visual correspondence: each clip's video with its own audio (target 1) and
with the audio of another clip of the batch (target 0, ``paired_negative_permutation``: one
negative per positive, as the paper samples them). Both modalities go through the paper's
two fully connected layers (→ ReLU →) to a shared ``embedding_dim`` (128) space:

* ``variant: ave`` (§3): the pooled embeddings are L2-normalised and their Euclidean
  distance alone decides, through an fc 1 → 2 and a softmax (``AVENetHead``), so the
  space is alignable across modalities (retrieval by distance).
* ``variant: avol`` (§5): the video keeps its spatial grid; the projection is applied at
  every location (the paper's 1×1 convolutions), the audio embedding's calibrated cosine
  with each location is a heat map, max-pooled into the correspondence logit
  (multiple-instance learning, ``AVOLNetHead``). The heat map is the localisation, so
  ``avssl localize`` scores every location with :meth:`AVENet.pair_scores` (``per_location``).

The encoders are avssl's (docs/recipes.md states the difference with the paper's VGG-like
subnetworks). Not in the paper: ``task.contrastive_weight`` adds an in-batch InfoNCE on the
pooled encoder features through their own projections (as AVTS's and XDC's), which on the
synthetic set pulls the pooled video features towards what identifies a clip
(docs/methods/avenet.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from avssl.data.views import AUDIO, INDEX, VIDEO
from avssl.losses.avenet import AVENetHead, AVOLNetHead, avol_loss, correspondence_loss
from avssl.losses.correspondence import balanced_pair_bce, paired_negative_permutation
from avssl.losses.nce import projected_info_nce
from avssl.models.heads import contrastive_projection
from avssl.tasks.pretext.base import PretextRecipe, PretextTask, TaskConfig


@dataclass
class AVENetConfig(TaskConfig):
    name: str = "avenet"
    variant: Literal["ave", "avol"] = "avol"
    negatives: Literal["paired", "in_batch"] = "paired"  # as AVC's: paired is the paper's sampling
    embedding_dim: int = 128  # the paper's embedding size (both variants)
    # AVOL's calibration a·s + b of the cosine s, learnt; its initial values (the paper gives
    # none): a slope of 1 leaves the logits in [−1, 1] for the many steps Adam needs to grow it
    calibration_scale: float = 10.0
    calibration_bias: float = -5.0
    contrastive_weight: float = 0.0  # not in the paper: an in-batch InfoNCE on the pooled features, this weight
    contrastive_temperature: float = 0.5
    contrastive_dim: int = 128


def projection(in_dim: int, embedding_dim: int) -> nn.Sequential:
    """fc → ReLU → fc, applied to the last dimension (at every location of a channels-last
    map it is the paper's pair of 1×1 convolutions)."""
    return nn.Sequential(nn.Linear(in_dim, embedding_dim), nn.ReLU(), nn.Linear(embedding_dim, embedding_dim))


class AVENet(PretextTask):
    config_class = AVENetConfig

    def __init__(self, recipe: PretextRecipe | dict) -> None:
        super().__init__(recipe)
        self.require_both_encoders()
        cfg: AVENetConfig = self.task_config
        self.video_proj = projection(self.video_encoder.embedding_dim, cfg.embedding_dim)
        self.audio_proj = projection(self.audio_encoder.embedding_dim, cfg.embedding_dim)
        self.head: AVENetHead | AVOLNetHead = (AVENetHead() if cfg.variant == "ave" else
                                               AVOLNetHead(scale=cfg.calibration_scale, bias=cfg.calibration_bias))
        # AVOL's own map is the score of every location; AVE-Net has none (gradients of its pooled score)
        self.localization_map = "per_location" if cfg.variant == "avol" else "contribution"
        if cfg.contrastive_weight:  # the InfoNCE's own projections: the correspondence head's space stays AVOL's
            self.video_contrastive = contrastive_projection(self.video_encoder.embedding_dim, cfg.contrastive_dim)
            self.audio_contrastive = contrastive_projection(self.audio_encoder.embedding_dim, cfg.contrastive_dim)

    def pair_logits(self, video_map: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Correspondence logit of video row i with audio row i: ``video_map`` B×h×w×C
        (encoder channels last), ``audio`` B×D encoder embeddings → B."""
        audio = self.audio_proj(audio)
        if self.task_config.variant == "ave":  # pooled, then projected (§3)
            logits = self.head(self.video_proj(video_map.mean(dim=(1, 2))), audio)
            return logits[:, 1] - logits[:, 0]  # log-odds of "corresponds"
        return self.head(self.video_proj(video_map).permute(0, 3, 1, 2), audio).logit

    def pair_scores(self, video_features: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        """The correspondence logit of B×C video features (a pooled clip or one location) as a 1×1 map."""
        return self.pair_logits(video_features[:, None, None, :], audio_features)

    def embed(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The video feature map averaged over time, channels last (B×h×w×C), the pooled video
        embedding (the encoder's, for the monitors) and the audio embedding."""
        feature_map = self.video_encoder.feature_map(batch[VIDEO])
        video_map = feature_map.mean(dim=2).permute(0, 2, 3, 1)
        return video_map, self.video_encoder.pool(feature_map), self.audio_encoder(batch[AUDIO])

    def all_pair_logits(self, video_map: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """B×B log-odds of every (video i, audio j) pair of the batch."""
        audio = self.audio_proj(audio)
        if self.task_config.variant == "ave":
            logits = self.head.all_pairs(self.video_proj(video_map.mean(dim=(1, 2))), audio)
            return logits[..., 1] - logits[..., 0]
        return self.head.all_pairs(self.video_proj(video_map).permute(0, 3, 1, 2), audio)

    def correspondence(self, video_map: torch.Tensor, audio: torch.Tensor, index: torch.Tensor,
                       negatives: str = "paired") -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, balanced accuracy): ``paired``, the batch's positives and one mismatched pair
        per clip; ``in_batch``, every pair of clips of different videos (as AVC's, both classes
        weighing the same; on the log-odds, BCE is the 2-way cross-entropy of AVE-Net)."""
        if negatives == "in_batch":
            logits = self.all_pair_logits(video_map, audio)
            same = index[:, None] == index[None, :]
            accuracy = 0.5 * ((logits.diagonal() > 0).float().mean() + (logits[~same] < 0).float().mean())
            return balanced_pair_bce(logits, same), accuracy
        partner = paired_negative_permutation(index)
        video_map = torch.cat([video_map, video_map])
        logits = self.pair_logits(video_map, torch.cat([audio, audio[partner]]))
        target = torch.cat([torch.ones_like(index), torch.zeros_like(index)])
        if self.task_config.variant == "ave":
            # the 2-way cross-entropy depends on the difference of its two logits only
            loss = correspondence_loss(torch.stack([torch.zeros_like(logits), logits], dim=1), target)
        else:
            loss = avol_loss(logits, target)
        return loss, ((logits > 0).long() == target).float().mean()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        video_map, video, audio = self.embed(batch)
        cfg: AVENetConfig = self.task_config
        correspondence, accuracy = self.correspondence(video_map, audio, batch[INDEX], cfg.negatives)
        terms, loss, size = {cfg.variant: correspondence}, correspondence, audio.shape[0]
        if cfg.contrastive_weight:
            terms["info_nce"] = projected_info_nce(self.video_contrastive, self.audio_contrastive, video, audio,
                                                   cfg.contrastive_temperature)
            loss = loss + cfg.contrastive_weight * terms["info_nce"]
            self.log("train/info_nce", terms["info_nce"], on_epoch=True, batch_size=size)
        self.log("train/loss", loss, prog_bar=True, on_epoch=True, batch_size=size)
        self.log("train/accuracy", accuracy, prog_bar=True, on_epoch=True, batch_size=size)
        self.log_skipped(batch, "train")
        return {"loss": loss, "terms": {k: t.detach() for k, t in terms.items()},
                "embeddings": {"video": video.detach(), "audio": audio.detach()}}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        # held-out correspondence as the paper reports it: one negative per positive
        video_map, video, audio = self.embed(batch)
        loss, accuracy = self.correspondence(video_map, audio, batch[INDEX])
        size = audio.shape[0]
        self.log("val/loss", loss, sync_dist=True, batch_size=size)
        self.log("val/accuracy", accuracy, prog_bar=True, sync_dist=True, batch_size=size)
        self.log_skipped(batch, "val")
        return {"embeddings": {"video": video, "audio": audio}}
