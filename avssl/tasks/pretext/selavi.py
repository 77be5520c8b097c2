"""SeLaVi: audio-visual self-labelling by optimal transport (Asano et al. 2020, "Labelling Unlabelled Videos from
Scratch with Multi-modal Self-supervision", NeurIPS 2020).

Each modality has ``task.num_heads`` classification heads (dropout → FC → BN → ReLU →
dropout → FC to K). For every head, one label per training video is shared by both
modalities: labels come from Sinkhorn–Knopp (``avssl.losses.sinkhorn``, float64, λ) on
the mean of the two modalities' log-probabilities (the paper's P_v ⊙ P_a raised to λ/2),
with Gaussian cluster-size marginals; both heads are trained with cross-entropy to it.

Streaming instead of the paper's labelling passes: a per-head bank (``avssl.losses.label_bank``,
in the checkpoint under ``label_bank.``) holds the latest log-probabilities of every training
video (keyed by the shard ``index``, gathered across ranks, stored in float16). Epoch 0 only
fills it (no gradient: it is the paper's pass of the random network over the data, and warms
BatchNorm up); the labels are then solved
``task.num_labelings`` times, at steps spaced as (k / (n−1))^1.5 of the run (front-loaded,
as in the paper), the first at the end of epoch 0. With ``task.contrastive_warmup_epochs``
= W > 0 (not in the paper) the encoders first train W epochs with a cross-modal in-batch
InfoNCE (per rank, like AVC's in-batch negatives) and the first labelling comes at the end
of epoch W−1: labels solved from a random network lock in low-level features on small data
(docs/methods/selavi.md). ``task.contrastive_weight`` > 0 keeps that InfoNCE, at this weight,
beside the clustering loss after the warm-up.

Not implemented from the paper: modality alignment of the audio head's output units
(unneeded: labels are shared from the start) and decorrelated head groups.

``task.variant: online`` is the streaming SwAV-style form ("Unsupervised Learning of Visual Features by Contrasting
Cluster Assignments", NeurIPS 2020): each modality → projection MLP → 128-d, L2-normalised;
K shared prototypes (unit norm, re-normalised every step); per-batch codes q = Sinkhorn(zCᵀ/ε, 3 iterations,
equipartition over the global batch) without gradient; cross-modal swapped prediction
½ [CE(q_v, softmax(z_a Cᵀ/τ)) + CE(q_a, softmax(z_v Cᵀ/τ))] (``avssl.losses.swapped_prediction``).
No label bank, no index. Evaluation reads it as one head with logits zCᵀ/τ.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from avssl.data.views import AUDIO, INDEX, LABEL, VIDEO
from avssl.distributed import gather
from avssl.losses.label_bank import LabelBank, labeling_steps, shared_label_loss
from avssl.losses.nce import projected_info_nce
from avssl.losses.state import load_former_keys
from avssl.losses.swapped_prediction import swapped_prediction_loss
from avssl.metrics.clustering import clustering_scores
from avssl.models.heads import MLP, contrastive_projection
from avssl.tasks.pretext.base import PretextRecipe, PretextTask, TaskConfig


@dataclass
class SeLaViConfig(TaskConfig):
    name: str = "selavi"
    num_clusters: int = 0  # K (paper: the number of classes, so that NMI can be read against them)
    num_heads: int = 10
    head_dropout: float = 0.3
    lam: float = 20.0
    num_labelings: int = 100
    marginal_std: float = 0.1  # Gaussian cluster sizes N(1, std²)·N/K; 0 = equipartition
    num_instances: int | None = None  # None: the training split's size from the manifest
    # offline: the paper's label bank + Sinkhorn; online: SwAV-style swapped codes
    variant: Literal["offline", "online"] = "offline"
    swav_dim: int = 128  # online: projection MLP [D, swav_hidden, swav_dim], L2-normalised
    swav_hidden: int = 512
    swav_epsilon: float = 0.05  # online: codes exp(zᵀC/ε)
    swav_temperature: float = 0.1  # online: prediction softmax(zᵀC/τ)
    swav_iterations: int = 3
    swav_freeze_prototypes_steps: int = 0  # online: no gradient to the prototypes for this many steps
    # offline: train the encoders with a cross-modal in-batch InfoNCE for this many epochs
    # before the first labelling (0: the paper, labels from the random network after epoch 0)
    contrastive_warmup_epochs: int = 0
    contrastive_temperature: float = 0.1
    contrastive_dim: int = 128  # the warm-up's projection MLP [D, D, dim] with BatchNorm, L2-normalised
    contrastive_weight: float = 0.0  # after the warm-up: the InfoNCE kept beside the clustering loss, this weight

    def __post_init__(self) -> None:
        if self.num_clusters < 2:
            raise ValueError("task.num_clusters must be set (≥ 2); the paper uses the number of classes")
        if self.variant == "offline" and self.contrastive_weight and not self.contrastive_warmup_epochs:
            raise ValueError("task.contrastive_weight > 0 needs task.contrastive_warmup_epochs > 0 (its projections), "
                             f"got {self.contrastive_weight}")


def cluster_head(dim: int, k: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, dim, bias=False), nn.BatchNorm1d(dim),
                         nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(dim, k))


class SeLaVi(PretextTask):
    config_class = SeLaViConfig

    def __init__(self, recipe: PretextRecipe | dict) -> None:
        super().__init__(recipe)
        self.require_both_encoders()
        cfg: SeLaViConfig = self.task_config
        self.resolve_num_instances()
        k = cfg.num_clusters
        if cfg.variant == "online":
            self.video_projection = MLP([self.video_encoder.embedding_dim, cfg.swav_hidden, cfg.swav_dim],
                                        batchnorm=True)
            self.audio_projection = MLP([self.audio_encoder.embedding_dim, cfg.swav_hidden, cfg.swav_dim],
                                        batchnorm=True)
            self.prototypes = nn.Linear(cfg.swav_dim, k, bias=False)
            with torch.no_grad():
                self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
            return
        self.video_heads = nn.ModuleList(cluster_head(self.video_encoder.embedding_dim, k, cfg.head_dropout)
                                       for _ in range(cfg.num_heads))
        self.audio_heads = nn.ModuleList(cluster_head(self.audio_encoder.embedding_dim, k, cfg.head_dropout)
                                       for _ in range(cfg.num_heads))
        self.label_bank = LabelBank(cfg.num_heads, cfg.num_instances, k, cfg.lam, cfg.marginal_std, self.seed)
        self.register_load_state_dict_pre_hook(  # checkpoints from before the bank was a module
            load_former_keys({former: f"label_bank.{name}" for former, name in LabelBank.FORMER_NAMES.items()}))
        if cfg.contrastive_warmup_epochs:
            self.video_warmup_projection = contrastive_projection(self.video_encoder.embedding_dim, cfg.contrastive_dim)
            self.audio_warmup_projection = contrastive_projection(self.audio_encoder.embedding_dim, cfg.contrastive_dim)
        self._schedule: list[int] | None = None

    # -- model ----------------------------------------------------------------------------
    def head_logits(self, video_features: torch.Tensor, audio_features: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """H×B×K logits of every video head and every audio head (online: one head, zᵀC/τ)."""
        if self.task_config.variant == "online":
            video_scores, audio_scores = self.prototype_scores(video_features, audio_features)
            t = self.task_config.swav_temperature
            return (video_scores / t)[None], (audio_scores / t)[None]
        return (torch.stack([head(video_features) for head in self.video_heads]),
                torch.stack([head(audio_features) for head in self.audio_heads]))

    def prototype_scores(self, video_features: torch.Tensor, audio_features: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Online variant: B×K cosines of each modality's projection with the prototypes."""
        prototypes = F.normalize(self.prototypes.weight, dim=1)
        return (F.normalize(self.video_projection(video_features), dim=1) @ prototypes.T,
                F.normalize(self.audio_projection(audio_features), dim=1) @ prototypes.T)

    def pair_scores(self, video_features: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        """Probability that both modalities fall in the same cluster, mean over heads."""
        video_logits, audio_logits = self.head_logits(video_features, audio_features)
        return (video_logits.softmax(-1) * audio_logits.softmax(-1)).sum(-1).mean(0)

    @staticmethod
    def joint_log_probs(video_logits: torch.Tensor, audio_logits: torch.Tensor) -> torch.Tensor:
        """Mean of the modalities' log-probabilities: log of (P_v ⊙ P_a)^½."""
        return 0.5 * (F.log_softmax(video_logits.float(), -1) + F.log_softmax(audio_logits.float(), -1))

    # -- labels ---------------------------------------------------------------------------
    def schedule(self) -> list[int]:
        if self._schedule is None:
            total = int(self.trainer.estimated_stepping_batches)
            per_epoch = max(total // max(self.trainer.max_epochs or 1, 1), 1)
            first = per_epoch * max(self.task_config.contrastive_warmup_epochs, 1)
            self._schedule = labeling_steps(total, first, self.task_config.num_labelings)
        return self._schedule

    def on_train_batch_start(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if self.task_config.variant == "online":
            with torch.no_grad():  # SwAV: unit-norm prototypes before every step
                self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
            return
        self.label_bank.relabel_at(int(self.global_step), self.schedule())

    # -- training -------------------------------------------------------------------------
    def on_after_backward(self) -> None:
        cfg: SeLaViConfig = self.task_config
        if cfg.variant == "online" and int(self.global_step) < cfg.swav_freeze_prototypes_steps:
            self.prototypes.weight.grad = None

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        video_features = self.video_encoder(batch[VIDEO])
        audio_features = self.audio_encoder(batch[AUDIO])
        if self.task_config.variant == "online":
            return self._online_step(batch, video_features, audio_features)
        video_logits, audio_logits = self.head_logits(video_features, audio_features)
        index = batch[INDEX]
        with torch.no_grad():  # the bank: every rank's latest predictions
            self.label_bank.write(index, self.joint_log_probs(video_logits, audio_logits))
        size = index.numel()
        cfg: SeLaViConfig = self.task_config
        if not self.label_bank.has_labels and cfg.contrastive_warmup_epochs:  # before the first labels
            loss = self._info_nce(video_features, audio_features)
            loss = loss + 0.0 * (video_logits.sum() + audio_logits.sum())  # every parameter in the graph (DDP)
        elif not self.label_bank.has_labels:  # epoch 0: filling the bank, nothing to learn yet
            loss = 0.0 * (video_logits.sum() + audio_logits.sum())
        else:
            targets = self.label_bank.targets(index)  # H×B
            loss = shared_label_loss(video_logits, audio_logits, targets)
            if cfg.contrastive_weight:
                loss = loss + cfg.contrastive_weight * self._info_nce(video_features, audio_features)
            elif cfg.contrastive_warmup_epochs:  # the warm-up projections stay in the graph for DDP, at zero gradient
                loss = loss + 0.0 * sum(p.sum() for p in [*self.video_warmup_projection.parameters(),
                                                           *self.audio_warmup_projection.parameters()])
            agree = (video_logits.argmax(-1) == targets).float().mean()
            self.log("train/video_head_accuracy", agree, on_epoch=True, batch_size=size)
        self.log("train/loss", loss, prog_bar=True, on_epoch=True, batch_size=size)
        self.log_skipped(batch, "train")
        return {"loss": loss, "terms": {"cross_entropy": loss.detach()},
                "embeddings": {"video": video_features.detach(), "audio": audio_features.detach()}}

    def _info_nce(self, video_features: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        """The warm-up's cross-modal in-batch InfoNCE on its projections."""
        return projected_info_nce(self.video_warmup_projection, self.audio_warmup_projection, video_features,
                                  audio_features, self.task_config.contrastive_temperature)

    def _online_step(self, batch: dict[str, torch.Tensor], video_features: torch.Tensor,
                     audio_features: torch.Tensor) -> dict:
        cfg: SeLaViConfig = self.task_config
        video_scores, audio_scores = self.prototype_scores(video_features, audio_features)
        loss = swapped_prediction_loss(video_scores, audio_scores, cfg.swav_epsilon, cfg.swav_temperature,
                                       cfg.swav_iterations)
        size = video_scores.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_epoch=True, batch_size=size)
        self.log("train/modality_agreement", (video_scores.argmax(1) == audio_scores.argmax(1)).float().mean(),
                 on_epoch=True, batch_size=size)
        self.log_skipped(batch, "train")
        return {"loss": loss, "terms": {"swapped": loss.detach()},
                "embeddings": {"video": video_features.detach(), "audio": audio_features.detach()}}

    # -- evaluation: clustering quality of each head against the categories ------------------
    def _start_clustering(self) -> None:
        self._clusters: list[torch.Tensor] = []
        self._cluster_labels: list[torch.Tensor] = []

    def _collect_clusters(self, batch: dict[str, torch.Tensor], stage: str) -> dict:
        video_features, audio_features = self.video_encoder(batch[VIDEO]), self.audio_encoder(batch[AUDIO])
        video_logits, audio_logits = self.head_logits(video_features, audio_features)
        self._clusters.append(gather(self.joint_log_probs(video_logits, audio_logits).argmax(-1).T.contiguous()))
        self._cluster_labels.append(gather(batch[LABEL]))
        self.log_skipped(batch, stage)
        return {"embeddings": {"video": video_features, "audio": audio_features}}  # for the online monitors

    def _log_clustering(self, stage: str) -> None:
        """``{stage}/nmi_head{h}`` for every head, their best and mean. Pick the head on
        val and read it on test: picking on test is label peeking (docs/methods/selavi.md)."""
        if not self._clusters:
            return
        clusters, labels = torch.cat(self._clusters).T, torch.cat(self._cluster_labels)
        known = labels >= 0
        if not bool(known.any()):
            return
        nmi = [clustering_scores(c[known], labels[known])["nmi"] for c in clusters]
        for head, value in enumerate(nmi):
            self.log(f"{stage}/nmi_head{head}", value)
        self.log(f"{stage}/nmi_best_head", max(nmi), prog_bar=stage == "val")
        self.log(f"{stage}/nmi_mean", sum(nmi) / len(nmi))

    def on_validation_epoch_start(self) -> None:
        self._start_clustering()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        return self._collect_clusters(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_clustering("val")

    def on_test_epoch_start(self) -> None:
        self._start_clustering()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        return self._collect_clusters(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_clustering("test")
