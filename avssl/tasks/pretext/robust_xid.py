"""Robust-xID: cross-modal instance discrimination that down-weights faulty positives and
softens the targets of faulty negatives ("Robust Audio-Visual Instance Discrimination",
Morgado, Misra & Vasconcelos, CVPR 2021). ``task.name: robust_xid``.

The pieces of AVID+CMA (``avid_cma.py``): projection heads, two memory banks (video, audio)
with one momentum-updated slot per training video, negatives drawn from the banks with a
generator seeded by (seed, global step). The objective is the softmax over the positive and
the K negatives (``avssl.losses.robust_xid.soft_instance_loss``), cross-modal both ways, ½ each.

From ``task.robust_start_epoch`` (before it: plain xID, while the banks learn what the
robust terms read):

* each clip's loss is weighted by where its bank positive similarity v̄_iᵀā_i sits among
  every instance's (``faulty_positive_weights``, δ and κ): a clip whose sound does not match
  its picture counts less, in both directions alike;
* the one-hot target becomes (1 − λ)·one-hot + λ·softmax(r / T_s), r the query's
  within-modal bank similarities to itself and to each negative (``smoothed_targets``): a
  negative of the query's kind is no longer pushed away as hard.

The weights read the whole bank, which is the same on every rank (its updates gather), and
the negatives are drawn for the global batch and sliced per rank: the task has no global
state beyond the banks. ``positives: batch`` / ``batch_negatives`` (the CPU recipe) take the
positive and further negatives from the other modality's embeddings of this (local) batch,
as AVID+CMA's options do; the relations of those negatives come from the same bank slots.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from avssl.data.views import AUDIO, INDEX, VIDEO
from avssl.distributed import all_reduce, rank, world_size
from avssl.losses.nce import MemoryBank, cross_modal_scores, sample_excluding
from avssl.losses.robust_xid import (
    bank_positive_similarity,
    faulty_positive_weights,
    smoothed_targets,
    soft_instance_loss,
    within_modal_similarity,
)
from avssl.tasks.pretext.avid_cma import add_heads_and_banks
from avssl.tasks.pretext.base import PretextRecipe, PretextTask, TaskConfig


@dataclass
class RobustXIDConfig(TaskConfig):
    name: str = "robust_xid"
    projection_hidden: int = 512  # MLP [D, hidden, dim], as AVID's
    embedding_dim: int = 128
    projection_norm: Literal["none", "batchnorm"] = "none"  # see AVIDCMAConfig
    temperature: float = 0.07
    num_negatives: int = 1024  # bank negatives; 0: in-batch only (positives=batch, batch_negatives=true)
    positives: Literal["bank", "batch"] = "bank"  # bank: the other modality's slot; batch: its embedding now
    batch_negatives: bool = False  # also score the other modality's other clips of this (local) batch
    bank_momentum: float = 0.5
    num_instances: int | None = None  # memory slots; None: the training split's size from the manifest
    robust_start_epoch: int | None = None  # None: plain xID throughout
    faulty_positive_weights: bool = True  # §3.2 (δ, κ)
    weight_delta: float | None = None  # δ: where the weights fall, in standard deviations from the mean
    weight_kappa: float | None = None  # κ: how sharply, in standard deviations
    soft_targets: bool = True  # §3.3 (λ, T_s)
    target_smoothing: float | None = None  # λ: the weight of the instance-relation distribution
    target_temperature: float | None = None  # T_s: the temperature of the relations' softmax

    def __post_init__(self) -> None:
        if self.num_negatives == 0 and not (self.batch_negatives and self.positives == "batch"):
            raise ValueError("task.num_negatives=0 (no bank negatives) needs task.positives=batch and "
                             "task.batch_negatives=true")
        if self.robust_start_epoch is None:
            return
        needed = {"weight_delta": self.faulty_positive_weights, "weight_kappa": self.faulty_positive_weights,
                  "target_smoothing": self.soft_targets, "target_temperature": self.soft_targets}
        missing = [key for key, wanted in needed.items() if wanted and getattr(self, key) is None]
        if missing:
            raise ValueError(f"task.robust_start_epoch is set: the recipe must set task.{', task.'.join(missing)}")


class RobustXID(PretextTask):
    config_class = RobustXIDConfig

    def __init__(self, recipe: PretextRecipe | dict) -> None:
        super().__init__(recipe)
        self.require_both_encoders()
        cfg: RobustXIDConfig = self.task_config
        add_heads_and_banks(self, cfg)

    @property
    def robust_active(self) -> bool:
        start = self.task_config.robust_start_epoch
        return start is not None and self.current_epoch >= start

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.global_step))

    def pair_scores(self, video_features: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        """Cosine similarity in the shared projection space of the xID objective."""
        return F.cosine_similarity(self.video_head(video_features), self.audio_head(audio_features), dim=-1)

    # -- loss -------------------------------------------------------------------------------------
    def _direction(self, query: torch.Tensor, partner: torch.Tensor, own_bank: MemoryBank, other_bank: MemoryBank,
                   index: torch.Tensor, negatives: torch.Tensor, weights: torch.Tensor | None,
                   weight_total: torch.Tensor | None) -> torch.Tensor:
        """One direction: ``query`` (B×D) against the other modality (its bank slot or
        ``partner``, this batch's embeddings) with the bank ``negatives`` (B×K) and, with
        ``batch_negatives``, the batch's other clips; soft targets from ``own_bank``."""
        cfg: RobustXIDConfig = self.task_config
        pos, neg = cross_modal_scores(query, other_bank, index, negatives, cfg.temperature)
        q, p = F.normalize(query, dim=1), F.normalize(partner, dim=1)
        if cfg.positives == "batch":
            pos = (q * p).sum(dim=1, keepdim=True) / cfg.temperature
        same = index[:, None] == index[None, :]  # two clips of one instance are never negatives
        if cfg.batch_negatives:
            neg = torch.cat([neg, (q @ p.T / cfg.temperature).masked_fill(same, -float("inf"))], dim=1)
        targets = None
        if self.robust_active and cfg.soft_targets:
            relations = within_modal_similarity(own_bank, index, negatives)
            if cfg.batch_negatives:
                slots = own_bank.bank[index]
                relations = torch.cat([relations, (slots @ slots.T).masked_fill(same, -float("inf"))], dim=1)
            targets = smoothed_targets(relations.to(pos.dtype), cfg.target_smoothing, cfg.target_temperature)
        return soft_instance_loss(pos, neg, targets, weights, weight_total)

    def positive_weights(self, index: torch.Tensor) -> torch.Tensor:
        """The faulty-positive weights of this batch's instances, measured against every
        instance's bank positive similarity."""
        cfg: RobustXIDConfig = self.task_config
        reference = bank_positive_similarity(self.video_bank, self.audio_bank)
        return faulty_positive_weights(reference[index], reference, cfg.weight_delta, cfg.weight_kappa)

    def losses(self, v: torch.Tensor, a: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms for one rank's projected embeddings (B×dim each) and indices: ``xid``
        (the objective) and, once the robust terms are on, ``mean_weight`` (a diagnostic)."""
        cfg: RobustXIDConfig = self.task_config
        self.video_bank.check_index(index)
        split = {"total_rows": v.shape[0] * world_size(), "row_offset": v.shape[0] * rank()}
        negatives = sample_excluding(index[:, None], cfg.num_instances, cfg.num_negatives, self._generator(), **split)
        weights = weight_total = None
        if self.robust_active and cfg.faulty_positive_weights:
            weights = self.positive_weights(index).to(v.dtype)
            # the global batch's Σw per rank: DDP's averaged gradients are the global weighted mean's
            weight_total = all_reduce(weights.sum().detach().clone()) / world_size()
        shared = (index, negatives, weights, weight_total)
        terms = {"xid": 0.5 * (self._direction(v, a, self.video_bank, self.audio_bank, *shared)
                               + self._direction(a, v, self.audio_bank, self.video_bank, *shared))}
        if weights is not None:
            terms["mean_weight"] = weights.mean()
        return terms

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        video_features = self.video_encoder(batch[VIDEO])
        audio_features = self.audio_encoder(batch[AUDIO])
        v, a = self.video_head(video_features), self.audio_head(audio_features)
        index = batch[INDEX]
        terms = self.losses(v, a, index)
        loss = terms["xid"]
        self.video_bank.update(index, v)
        self.audio_bank.update(index, a)
        size = v.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_epoch=True, batch_size=size)
        for name, value in terms.items():
            self.log(f"train/{name}", value, on_epoch=True, batch_size=size)
        self.log_skipped(batch, "train")
        return {"loss": loss, "terms": {k: t.detach() for k, t in terms.items()},
                "embeddings": {"video": video_features.detach(), "audio": audio_features.detach()}}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        return self.in_batch_retrieval_validation(batch, self.video_head, self.audio_head)
