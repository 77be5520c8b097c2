"""AVTS: audio-visual temporal synchronisation with curriculum negatives (Korbar et al.
2018, "Cooperative Learning of Audio and Video Models from Self-Supervised Synchronization", NeurIPS 2018).

Is this audio in sync with this video? Each modality's embedding goes through a small
projection head and is L2-normalised; pairs are scored by their distance d and trained
with the contrastive margin loss (``avssl.losses.contrastive``). Every batch has one
positive per clip (its aligned audio) and one negative per clip:

* easy: the audio of another video of the batch (the AVC negative);
* hard: the same video's audio at a time that does not overlap the aligned window
  (the ``audio_hard`` view, decoded by the data module because the task declares it);
* super-hard (``task.super_hard``, off by default: the paper found they hurt): the same
  video's audio partly overlapping the aligned window (``audio_superhard``).

``task.negatives: in_batch`` scores every other clip's audio as an easy negative (B−1 per
clip, as AVC's in_batch) and weighs the negative term so that hard negatives keep their
share: negatives = (1 − h)·mean(easy) + h·mean(hard), positives ½, negatives ½.

The share of hard negatives is set by the :class:`AVTSCurriculum` callback: 0 until
``task.hard_start_epoch``, then ``task.hard_fraction`` (paper: about 25 % hard, 75 % easy,
positives kept at 50 %). Not in the paper: ``task.contrastive_weight`` adds a cross-modal
in-batch InfoNCE at ``task.contrastive_temperature`` (AVID's CPU loss: every other clip's
audio a negative), at this weight, to the margin loss, on projections of its own (MLPs like
the heads): on the heads the identity it pulls for fights the same-video negatives, and sync
was not learned (docs/methods/avts.md). Validation reports synchronisation accuracy: given a video
window and two audio windows of the same video, one aligned and one shifted by at least
``task.min_shift_seconds``, is the aligned one closer?
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from avssl.data.views import AUDIO, INDEX, VIDEO, AudioView, ViewSpec
from avssl.losses.contrastive import embedding_distance, in_batch_margin_loss, paired_margin_loss
from avssl.losses.correspondence import paired_negative_permutation
from avssl.losses.nce import cross_modal_info_nce
from avssl.models.heads import MLP, contrastive_projection
from avssl.tasks.pretext.base import PretextRecipe, PretextTask, TaskConfig

HARD = "audio_hard"
SUPER_HARD = "audio_superhard"


@dataclass
class AVTSConfig(TaskConfig):
    name: str = "avts"
    margin: float = 0.99  # η, on distances of L2-normalised embeddings (d ∈ [0, 2])
    embedding_dim: int = 128
    hard_start_epoch: int = 10  # curriculum: easy negatives only before this epoch
    hard_fraction: float = 0.25  # share of the negatives that are hard once the curriculum switches
    super_hard: bool = False
    super_hard_fraction: float = 0.0  # share of the negatives that are super-hard (needs super_hard)
    min_shift_seconds: float = 0.5  # hard negatives: at least this far (and never overlapping)
    embedding_norm: Literal["none", "batchnorm"] = "none"  # batchnorm: standardise each projection before L2
    # paired: one negative per clip (the paper); in_batch: every other clip's audio too
    negatives: Literal["paired", "in_batch"] = "paired"
    contrastive_weight: float = 0.0  # not in the paper: an in-batch InfoNCE added to the margin loss, this weight
    contrastive_temperature: float = 0.5
    # Clips per held-out video for val/test sync accuracy (evenly spaced, each with its own
    # shifted window): one clip per video on a 300-video split measures a true 0.91 anywhere
    # in 0.88-0.94 (binomial error; docs/methods/avts.md)
    held_out_clips_per_video: int = 1

    def __post_init__(self) -> None:
        if self.super_hard_fraction > 0 and not self.super_hard:
            raise ValueError("task.super_hard_fraction > 0 needs task.super_hard=true (the view must be decoded)")
        if self.held_out_clips_per_video < 1:
            raise ValueError(f"task.held_out_clips_per_video must be at least 1, got {self.held_out_clips_per_video}")


class AVTSCurriculum(pl.Callback):
    """Easy negatives only until ``hard_start_epoch``, then ``hard_fraction`` hard ones."""

    def __init__(self, hard_start_epoch: int, hard_fraction: float, super_hard_fraction: float = 0.0) -> None:
        if not 0 <= hard_fraction + super_hard_fraction <= 1:
            raise ValueError("hard_fraction + super_hard_fraction must lie in [0, 1]")
        self.hard_start_epoch = hard_start_epoch
        self.hard_fraction = hard_fraction
        self.super_hard_fraction = super_hard_fraction

    def fractions(self, epoch: int) -> tuple[float, float]:
        if epoch < self.hard_start_epoch:
            return 0.0, 0.0
        return self.hard_fraction, self.super_hard_fraction

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.hard_fraction, pl_module.super_hard_fraction = self.fractions(trainer.current_epoch)
        pl_module.log("curriculum/hard_fraction", pl_module.hard_fraction, on_step=False, on_epoch=True)


class AVTS(PretextTask):
    config_class = AVTSConfig

    def __init__(self, recipe: PretextRecipe | dict) -> None:
        super().__init__(recipe)
        self.require_both_encoders()
        cfg: AVTSConfig = self.task_config

        def head(dim: int) -> nn.Module:
            mlp = MLP([dim, cfg.embedding_dim, cfg.embedding_dim], batchnorm=True)
            # Centred projections: without them the margin loss first settles where every
            # pair sits at η/2 (loss ≈ η²/4 = 0.245 for η = 0.99) until hard negatives come
            # in; with them it does not, but on the synthetic set the probes came out worse
            # (docs/results.md), so the default is the paper's plain head.
            return nn.Sequential(mlp, nn.BatchNorm1d(cfg.embedding_dim)) if cfg.embedding_norm == "batchnorm" else mlp

        self.video_head = head(self.video_encoder.embedding_dim)
        self.audio_head = head(self.audio_encoder.embedding_dim)
        if cfg.contrastive_weight:  # the InfoNCE's own projections: its identity pull stays out of the sync heads
            self.video_contrastive = contrastive_projection(self.video_encoder.embedding_dim, cfg.embedding_dim)
            self.audio_contrastive = contrastive_projection(self.audio_encoder.embedding_dim, cfg.embedding_dim)
        self.hard_fraction = 0.0  # set each epoch by AVTSCurriculum
        self.super_hard_fraction = 0.0

    # -- views and callbacks ---------------------------------------------------------------
    def extra_audio_views(self) -> dict[str, AudioView]:
        cfg: AVTSConfig = self.task_config
        seconds = self.data_config.audio.seconds
        views = {HARD: AudioView(seconds=seconds, offset="shifted", min_shift_seconds=cfg.min_shift_seconds)}
        if cfg.super_hard:
            views[SUPER_HARD] = AudioView(seconds=seconds, offset="overlapping", min_shift_seconds=seconds / 4)
        return views

    def eval_views(self) -> ViewSpec:
        return dataclasses.replace(super().eval_views(), clips_per_video=self.task_config.held_out_clips_per_video)

    def configure_callbacks(self) -> list[pl.Callback]:
        cfg: AVTSConfig = self.task_config
        return [AVTSCurriculum(cfg.hard_start_epoch, cfg.hard_fraction, cfg.super_hard_fraction)]

    # -- model ----------------------------------------------------------------------------------
    def embed_video(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.video_encoder(video)
        return features, self.video_head(features)

    def embed_audio(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.audio_encoder(audio)
        return features, self.audio_head(features)

    def pair_scores(self, video_features: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        """Minus the distance the margin loss is trained on."""
        return -embedding_distance(self.video_head(video_features), self.audio_head(audio_features))

    def negative_kinds(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """Per clip: 0 easy, 1 hard, 2 super-hard negative, at random places. Each kind's
        count is its fraction of the batch, rounded up or down at random (the fraction on
        average): a batch never misses a kind whose share is at least one clip, where one
        draw per clip left 4 clips at 25 % with no hard negative 32 % of the time."""
        counts = []
        for fraction in (self.hard_fraction, self.super_hard_fraction):
            share = fraction * batch_size
            counts.append(int(share) + int(torch.rand(()).item() < share - int(share)))
        kinds = torch.zeros(batch_size, dtype=torch.long, device=device)
        order = torch.randperm(batch_size).to(device)
        hard = min(counts[0], batch_size)
        kinds[order[:hard]] = 1
        kinds[order[hard:hard + counts[1]]] = 2
        return kinds

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        cfg: AVTSConfig = self.task_config
        video_features, v = self.embed_video(batch[VIDEO])
        size = v.shape[0]
        kinds = self.negative_kinds(size, v.device)
        sources = [batch[AUDIO]]
        if bool((kinds == 1).any()):
            sources.append(batch[HARD])
        if bool((kinds == 2).any()):
            sources.append(batch[SUPER_HARD])
        audio_features_all, a_all = self.embed_audio(torch.cat(sources))  # one pass: BN sees every window
        a = a_all[:size]
        audio_features = audio_features_all[:size]
        negatives = a[paired_negative_permutation(batch[INDEX])]  # easy: another video's audio
        offset = size
        for kind in (1, 2):
            if bool((kinds == kind).any()):
                chosen = kinds == kind
                negatives = torch.where(chosen[:, None], a_all[offset:offset + size], negatives)
                offset += size
        d_pos = embedding_distance(v, a)
        d_neg = embedding_distance(v, negatives)
        if cfg.negatives == "in_batch":
            loss = in_batch_margin_loss(v, a, batch[INDEX], d_pos, d_neg[kinds > 0],
                                        self.hard_fraction + self.super_hard_fraction, cfg.margin)
        else:
            loss = paired_margin_loss(d_pos, d_neg, cfg.margin)
        terms = {"margin": loss.detach()}
        if cfg.contrastive_weight:
            info_nce = cross_modal_info_nce(F.normalize(self.video_contrastive(video_features), dim=-1),
                                            F.normalize(self.audio_contrastive(audio_features), dim=-1),
                                            cfg.contrastive_temperature)
            terms["info_nce"] = info_nce.detach()
            loss = loss + cfg.contrastive_weight * info_nce
        threshold = cfg.margin / 2
        self.log("train/loss", loss, prog_bar=True, on_epoch=True, batch_size=size)
        self.log("train/accuracy_positive", (d_pos < threshold).float().mean(), on_epoch=True, batch_size=size)
        for kind, name in ((0, "easy"), (1, "hard"), (2, "super_hard")):
            chosen = kinds == kind
            if bool(chosen.any()):
                self.log(f"train/accuracy_{name}", (d_neg[chosen] >= threshold).float().mean(), on_epoch=True,
                         batch_size=int(chosen.sum()))
        self.log_skipped(batch, "train")
        return {"loss": loss, "terms": terms,
                "embeddings": {"video": video_features.detach(), "audio": audio_features.detach()}}

    def _sync_step(self, batch: dict[str, torch.Tensor], stage: str) -> dict:
        video_features, v = self.embed_video(batch[VIDEO])
        size = v.shape[0]
        audio_features, a_both = self.embed_audio(torch.cat([batch[AUDIO], batch[HARD]]))
        d_aligned, d_shifted = embedding_distance(v, a_both[:size]), embedding_distance(v, a_both[size:])
        d_easy = embedding_distance(v, a_both[:size][paired_negative_permutation(batch[INDEX])])
        threshold = self.task_config.margin / 2
        self.log(f"{stage}/sync_accuracy", (d_aligned < d_shifted).float().mean(), prog_bar=True, sync_dist=True,
                 batch_size=size)
        accuracy = 0.5 * ((d_aligned < threshold).float().mean() + (d_easy >= threshold).float().mean())
        self.log(f"{stage}/accuracy", accuracy, sync_dist=True, batch_size=size)
        self.log_skipped(batch, stage)
        return {"embeddings": {"video": video_features, "audio": audio_features[:size]}}  # for the online monitors

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        return self._sync_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        return self._sync_step(batch, "test")
