"""AVC: audio-visual correspondence (L³-Net, "Look, Listen and Learn", ICCV 2017).

Does this frame go with this sound? Embeddings of both modalities are fused by the L³
head (concatenate → FC → ReLU → FC) into one correspondence logit, trained with binary
cross-entropy (``avssl.losses.correspondence``). Negatives (``task.negatives``):

* ``paired``: the paper's sampling, one negative per positive: the clip's video with the
  audio of another clip of the batch.
* ``in_batch``: every (video i, audio j) pair of the batch is scored, i ≠ j negative,
  positives weighted by B−1 so both classes weigh the same. Far more negatives per step
  for the same decoding cost; on the synthetic set it is what makes AVC learn at all
  (see docs/methods/avc.md).

Pairs of two clips of the same video (same ``index``, e.g. padding repeats) are never
used as negatives.

``task.embedding_norm: batchnorm`` (default) standardises each modality's pooled
embedding (BatchNorm1d) before the head. The pooled embeddings of ReLU networks are all
positive with a large shared mean, which leaves the head's logits nearly constant across
pairs at first; on the synthetic set the standardised version leaves the loss plateau
sooner (docs/methods/avc.md). ``none`` is the paper's head as published.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from avssl.data.views import AUDIO, INDEX, VIDEO
from avssl.losses.correspondence import balanced_pair_bce, paired_bce, paired_negative_permutation
from avssl.tasks.pretext.base import PretextRecipe, PretextTask, TaskConfig


@dataclass
class AVCConfig(TaskConfig):
    name: str = "avc"
    negatives: Literal["paired", "in_batch"] = "in_batch"
    head: Literal["l3", "distance"] = "l3"  # l3: concatenate → MLP (L³-Net); distance: AVE-Net ("Objects that Sound")
    fusion_hidden: int = 128
    embedding_dim: int = 128  # the distance head's projection size
    embedding_norm: Literal["batchnorm", "none"] = "batchnorm"  # standardise each embedding before the head


class DistanceHead(nn.Module):
    """AVE-Net's head ("Objects that Sound"): each modality → FC → ReLU → FC → L2
    normalise; the logit is an affine function of the Euclidean distance between them,
    so it learns a distance threshold and the embeddings become usable for retrieval."""

    def __init__(self, video_dim: int, audio_dim: int, embedding_dim: int) -> None:
        super().__init__()
        self.video_proj = nn.Sequential(nn.Linear(video_dim, embedding_dim), nn.ReLU(),
                                      nn.Linear(embedding_dim, embedding_dim))
        self.audio_proj = nn.Sequential(nn.Linear(audio_dim, embedding_dim), nn.ReLU(),
                                      nn.Linear(embedding_dim, embedding_dim))
        self.calibration = nn.Linear(1, 1)
        nn.init.constant_(self.calibration.weight, -5.0)  # closer → more likely to correspond
        nn.init.constant_(self.calibration.bias, 5.0)

    def _embed(self, video: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.video_proj(video), dim=-1), F.normalize(self.audio_proj(audio), dim=-1)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        v, a = self._embed(video, audio)
        return self.calibration((v - a).norm(dim=-1, keepdim=True)).squeeze(-1)

    def all_pairs(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        v, a = self._embed(video, audio)
        return self.calibration(torch.cdist(v, a).unsqueeze(-1)).squeeze(-1)


class PairwiseFusion(nn.Module):
    """The L³ fusion MLP on concatenated embeddings, evaluated for many pairs at once.

    ``FC([v; a]) = W_v v + W_a a + b``, so scoring all B×B pairs costs two B×H products
    and a broadcast sum instead of B² concatenations.
    """

    def __init__(self, video_dim: int, audio_dim: int, hidden: int) -> None:
        super().__init__()
        self.video_proj = nn.Linear(video_dim, hidden)
        self.audio_proj = nn.Linear(audio_dim, hidden, bias=False)
        self.out = nn.Linear(hidden, 1)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Logits for aligned rows: video[i] with audio[i] → (B,)."""
        return self.out(F.relu(self.video_proj(video) + self.audio_proj(audio))).squeeze(-1)

    def all_pairs(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Logits for every pair: entry (i, j) scores video[i] with audio[j] → (B, B)."""
        hidden = self.video_proj(video)[:, None, :] + self.audio_proj(audio)[None, :, :]
        return self.out(F.relu(hidden)).squeeze(-1)


class AVC(PretextTask):
    config_class = AVCConfig

    def __init__(self, recipe: PretextRecipe | dict) -> None:
        super().__init__(recipe)
        self.require_both_encoders()
        cfg: AVCConfig = self.task_config
        dims = (self.video_encoder.embedding_dim, self.audio_encoder.embedding_dim)
        batchnorm = cfg.embedding_norm == "batchnorm"
        self.video_norm = nn.BatchNorm1d(dims[0]) if batchnorm else nn.Identity()
        self.audio_norm = nn.BatchNorm1d(dims[1]) if batchnorm else nn.Identity()
        head = PairwiseFusion(*dims, cfg.fusion_hidden) if cfg.head == "l3" else DistanceHead(*dims, cfg.embedding_dim)
        self.fusion: PairwiseFusion | DistanceHead = head

    def pair_scores(self, video_features: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        """The correspondence logit of the head."""
        return self.fusion(self.video_norm(video_features), self.audio_norm(audio_features))

    def embed(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.video_encoder(batch[VIDEO]), self.audio_encoder(batch[AUDIO])

    def correspondence(self, video: torch.Tensor, audio: torch.Tensor, index: torch.Tensor, negatives: str
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, balanced accuracy) of one batch of encoder embeddings."""
        video, audio = self.video_norm(video), self.audio_norm(audio)
        if negatives == "in_batch":
            logits = self.fusion.all_pairs(video, audio)
            same = index[:, None] == index[None, :]
            loss = balanced_pair_bce(logits, same)
            pos_acc = (logits.diagonal() > 0).float().mean()
            neg_acc = (logits[~same] < 0).float().mean()
        else:
            partner = paired_negative_permutation(index)
            pos_logits = self.fusion(video, audio)
            neg_logits = self.fusion(video, audio[partner])
            loss = paired_bce(pos_logits, neg_logits)
            pos_acc = (pos_logits > 0).float().mean()
            neg_acc = (neg_logits < 0).float().mean()
        return loss, 0.5 * (pos_acc + neg_acc)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        video, audio = self.embed(batch)
        loss, accuracy = self.correspondence(video, audio, batch[INDEX], self.task_config.negatives)
        size = video.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_epoch=True, batch_size=size)
        self.log("train/accuracy", accuracy, prog_bar=True, on_epoch=True, batch_size=size)
        self.log_skipped(batch, "train")
        return {"loss": loss, "terms": {"avc": loss.detach()},
                "embeddings": {"video": video.detach(), "audio": audio.detach()}}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        # Held-out correspondence as the paper reports it: one negative per positive.
        video, audio = self.embed(batch)
        loss, accuracy = self.correspondence(video, audio, batch[INDEX], "paired")
        size = video.shape[0]
        self.log("val/loss", loss, sync_dist=True, batch_size=size)
        self.log("val/accuracy", accuracy, prog_bar=True, sync_dist=True, batch_size=size)
        self.log_skipped(batch, "val")
        return {"embeddings": {"video": video, "audio": audio}}  # for the online monitors
