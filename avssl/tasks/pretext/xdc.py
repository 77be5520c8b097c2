"""XDC: cross-modal deep clustering ("Self-Supervised Learning by Cross-Modal Audio-Video
Clustering", Alwassel et al., NeurIPS 2020), with its baselines SDC, MDC and CDC as
``task.variant`` (``avssl.losses.xdc``: which clusters supervise which encoder).

Every ``task.recluster_epochs`` epochs, at the start of the epoch, both encoders (in
evaluation mode, without augmentation) embed every training video once: the data module's
evaluation stream of the training split (a single-pass loader), each rank its own slice. The features are
preprocessed as DeepCluster's (PCA-whitening to ``task.pca_dim``, L2 normalisation), each
cluster set is clustered by k-means over all ranks' rows (``avssl.losses.kmeans``), and the
labels, gathered by the shard ``index``, go to the :class:`~avssl.losses.xdc.PseudoLabels`
state (in the checkpoint: a run resumed mid-epoch keeps its labels and does not cluster
again). Training is cross-entropy of one linear head per (encoder, supervising cluster set)
against those labels; XDC's is L = ℓ(f_v, y_a) + ℓ(f_a, y_v). As in DeepCluster, the heads are
re-initialised after each clustering (cluster ids carry no meaning from one clustering to
the next) and each row's loss is weighted by the inverse of its cluster's size
(``task.balance_clusters``: DeepCluster samples uniformly over clusters instead).

``task.contrastive_warmup_epochs`` = W > 0 (not in the paper, as SeLaVi's recipe here): the
encoders first train W epochs with a cross-modal in-batch InfoNCE on projections of their
features (per rank, AVC's in-batch negatives), and the first clustering comes at the start of
epoch W. On the synthetic set, k-means of the random network's features groups nuisances
(background colours, microphone colouring) and the cross-modal prediction left them slowly
(docs/methods/xdc.md). ``task.contrastive_weight`` > 0 keeps the InfoNCE beside the
clustering loss after the warm-up.

Logged: ``train/xdc_nmi`` (and ``_audio``, ``_joint``): NMI of each clustering of the
training set against its categories (where the shards carry them), from the last clustering;
``val/nmi_video_head``: NMI of the video encoder's head's predictions on the validation split.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from avssl.data.views import AUDIO, INDEX, LABEL, VIDEO
from avssl.distributed import gather
from avssl.losses.nce import projected_info_nce
from avssl.losses.xdc import (
    ClusterHeads,
    PseudoLabels,
    cluster_sets,
    clustering_features,
    labels_by_index,
    pseudo_label_loss,
)
from avssl.metrics.clustering import clustering_scores
from avssl.models.heads import contrastive_projection
from avssl.tasks.pretext.base import PretextRecipe, PretextTask, TaskConfig

logger = logging.getLogger(__name__)


@dataclass
class XDCConfig(TaskConfig):
    name: str = "xdc"
    variant: Literal["xdc", "sdc", "mdc", "cdc"] = "xdc"
    num_clusters: int = 64  # every cluster set's k unless set below
    video_clusters: int | None = None  # k of the video features' clustering
    audio_clusters: int | None = None  # k of the audio features' clustering
    recluster_epochs: int = 1  # cluster at the start of every this many epochs
    kmeans_iterations: int = 25
    pca_dim: int | None = 256  # DeepCluster's PCA-whitening before k-means; None: none
    l2_normalize: bool = True
    reset_heads: bool = True  # re-initialise the heads after each clustering (DeepCluster)
    # not in the paper: rename each clustering's ids to match the previous one (Hungarian), so that kept heads
    # (reset_heads: false) go on predicting the same clusters
    align_labels: bool = False
    balance_clusters: bool = True  # weight each row by the inverse of its cluster's size
    num_instances: int | None = None  # label slots; None: the training split's size from the manifest
    # not in the paper: train this many epochs with a cross-modal in-batch InfoNCE before the first clustering
    contrastive_warmup_epochs: int = 0
    contrastive_temperature: float = 0.1
    contrastive_dim: int = 128  # the warm-up's projection MLP [D, D, dim] with BatchNorm, L2-normalised
    contrastive_weight: float = 0.0  # after the warm-up: the InfoNCE kept beside the clustering loss, this weight

    def __post_init__(self) -> None:
        for name in ("num_clusters", "video_clusters", "audio_clusters"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise ValueError(f"task.{name} must be ≥ 2, got {value}")
        if self.recluster_epochs < 1 or self.kmeans_iterations < 1:
            raise ValueError("task.recluster_epochs and task.kmeans_iterations must be ≥ 1")
        if self.contrastive_weight and not self.contrastive_warmup_epochs:
            raise ValueError("task.contrastive_weight > 0 needs task.contrastive_warmup_epochs > 0 (its projections), "
                             f"got {self.contrastive_weight}")

    def clusters(self) -> dict[str, int]:
        """k of each cluster set the variant needs."""
        k = {"video": self.video_clusters or self.num_clusters, "audio": self.audio_clusters or self.num_clusters,
             "joint": self.num_clusters}
        return {name: k[name] for name in cluster_sets(self.variant)}


@torch.no_grad()
def reset_linear(layer: nn.Linear, generator: torch.Generator) -> None:
    """``nn.Linear.reset_parameters`` drawn from ``generator`` (on the CPU, then copied: the
    global generators, CUDA's included, are left alone)."""
    weight = torch.empty(layer.weight.shape)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    layer.weight.copy_(weight)
    if layer.bias is not None:
        bound = 1 / math.sqrt(layer.in_features) if layer.in_features > 0 else 0
        layer.bias.copy_(torch.empty(layer.bias.shape).uniform_(-bound, bound, generator=generator))


class XDC(PretextTask):
    config_class = XDCConfig

    def __init__(self, recipe: PretextRecipe | dict) -> None:
        super().__init__(recipe)
        self.require_both_encoders()
        cfg: XDCConfig = self.task_config
        self.resolve_num_instances()
        self.heads = ClusterHeads(cfg.variant, self.video_encoder.embedding_dim, self.audio_encoder.embedding_dim,
                                  cfg.clusters())
        self.pseudo_labels = PseudoLabels(cluster_sets(cfg.variant), cfg.num_instances, cfg.clusters())
        if cfg.contrastive_warmup_epochs:
            self.video_warmup_projection = contrastive_projection(self.video_encoder.embedding_dim, cfg.contrastive_dim)
            self.audio_warmup_projection = contrastive_projection(self.audio_encoder.embedding_dim, cfg.contrastive_dim)
        self._class_weights: dict[str, torch.Tensor] | None = None
        self._train_pass = None  # a single-pass loader of the training split's evaluation stream, built once
        self.clustering_nmi: dict[str, float] = {}

    # -- clustering ---------------------------------------------------------------------------
    @torch.no_grad()
    def training_set_features(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """(index, cluster set → features, category) of this rank's slice of the training
        split: one evaluation pass (no augmentation) of both encoders in evaluation mode."""
        datamodule = self.trainer.datamodule
        if self._train_pass is None:
            # single_pass: its workers exit after each pass. Kept alive (an evaluation loader's
            # persistent workers), each one holds its own copy of the whole decoded training split
            # under data.cache=memory (4.3 GB on the demo set) for the rest of the run.
            self._train_pass = datamodule.evaluation_loader(self.data_config.train_split, single_pass=True)
        finish = datamodule.eval_transform.to(self.device)
        was_training = self.training
        self.eval()
        index, video, audio, category = [], [], [], []
        try:
            for batch in self._train_pass:
                batch = finish({k: v.to(self.device) for k, v in batch.items()}, train=False)
                video.append(self.video_encoder(batch[VIDEO]).float())
                audio.append(self.audio_encoder(batch[AUDIO]).float())
                index.append(batch[INDEX])
                category.append(batch[LABEL] if LABEL in batch else torch.full_like(batch[INDEX], -1))
        finally:
            self.train(was_training)
        features = clustering_features(self.task_config.variant, torch.cat(video), torch.cat(audio))
        return torch.cat(index), features, torch.cat(category)

    def relabel(self, index: torch.Tensor, features: dict[str, torch.Tensor], category: torch.Tensor) -> None:
        """Cluster every set (collective), store the labels, score them against the categories,
        and re-initialise the heads."""
        cfg: XDCConfig = self.task_config
        inertia = self.pseudo_labels.relabel(index, features, int(self.current_epoch), self.seed,
                                             cfg.kmeans_iterations, cfg.pca_dim, cfg.l2_normalize, cfg.align_labels)
        categories = labels_by_index(index, category, cfg.num_instances)
        known = categories >= 0
        self.clustering_nmi = {}
        for name in self.pseudo_labels.sets:
            labels = self.pseudo_labels.labels(name)
            rows = known & (labels >= 0)
            if bool(rows.any()):
                self.clustering_nmi[name] = clustering_scores(labels[rows], categories[rows])["nmi"]
        logger.info("XDC clustering %d (epoch %d): inertia %s, NMI against the categories %s",
                    int(self.pseudo_labels.clusterings_done), int(self.current_epoch),
                    {k: round(v, 2) for k, v in inertia.items()},
                    {k: round(v, 3) for k, v in self.clustering_nmi.items()})
        if cfg.reset_heads:  # drawn from (seed, clustering): a run resumed later draws the same heads
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.pseudo_labels.clusterings_done))
            for heads in self.heads.heads.values():
                for head in heads.values():
                    reset_linear(head, generator)
        self._class_weights = None

    def on_train_epoch_start(self) -> None:
        cfg: XDCConfig = self.task_config
        epoch = int(self.current_epoch)
        if int(self.pseudo_labels.solved_epoch) == epoch or epoch < cfg.contrastive_warmup_epochs:
            return  # resumed within the epoch (its labels are restored), or still warming up
        if int(self.pseudo_labels.clusterings_done) == 0 or (epoch - cfg.contrastive_warmup_epochs) \
                % cfg.recluster_epochs == 0:
            self.relabel(*self.training_set_features())

    def class_weights(self) -> dict[str, torch.Tensor] | None:
        if not self.task_config.balance_clusters:
            return None
        if self._class_weights is None:
            self._class_weights = self.pseudo_labels.class_weights()
        return self._class_weights

    # -- training -------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        video_features = self.video_encoder(batch[VIDEO])
        audio_features = self.audio_encoder(batch[AUDIO])
        logits = self.heads(video_features, audio_features)
        targets = self.pseudo_labels.targets(batch[INDEX])
        cfg: XDCConfig = self.task_config
        every_head = 0.0 * sum(t.sum() for heads in logits.values() for t in heads.values())  # in the graph (DDP)
        if int(self.pseudo_labels.clusterings_done) == 0:  # the warm-up: no labels yet
            loss = self._info_nce(video_features, audio_features) + every_head
        else:
            loss = pseudo_label_loss(logits, targets, self.class_weights())
            if cfg.contrastive_weight:
                loss = loss + cfg.contrastive_weight * self._info_nce(video_features, audio_features)
            elif cfg.contrastive_warmup_epochs:  # the warm-up projections stay in the graph for DDP, at zero gradient
                loss = loss + 0.0 * sum(p.sum() for p in [*self.video_warmup_projection.parameters(),
                                                           *self.audio_warmup_projection.parameters()])
        size = video_features.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_epoch=True, batch_size=size)
        for encoder, heads in logits.items():
            for name, head_logits in heads.items():
                known = targets[name] >= 0
                if bool(known.any()):
                    accuracy = (head_logits[known].argmax(1) == targets[name][known]).float().mean()
                    self.log(f"train/{encoder}_head_{name}_accuracy", accuracy, on_epoch=True, on_step=False,
                             batch_size=int(known.sum()))
        self.log_skipped(batch, "train")
        return {"loss": loss, "terms": {"cross_entropy": loss.detach()},
                "embeddings": {"video": video_features.detach(), "audio": audio_features.detach()}}

    def _info_nce(self, video_features: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        """The warm-up's cross-modal in-batch InfoNCE on its projections."""
        return projected_info_nce(self.video_warmup_projection, self.audio_warmup_projection, video_features,
                                  audio_features, self.task_config.contrastive_temperature)

    def on_train_epoch_end(self) -> None:
        for name, value in self.clustering_nmi.items():
            self.log("train/xdc_nmi" if name == "video" else f"train/xdc_nmi_{name}", value)

    # -- cross-modal score ----------------------------------------------------------------
    def pair_scores(self, video_features: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        """With the warm-up's projections: their cosine (the InfoNCE's score). Otherwise the
        probability that the video and the audio fall in the same cluster, mean over the
        cluster sets both encoders predict (MDC, CDC); XDC and SDC have none in common, so the
        video head's and the audio head's cluster distributions are compared as they are."""
        if self.task_config.contrastive_warmup_epochs:
            return F.cosine_similarity(self.video_warmup_projection(video_features),
                                       self.audio_warmup_projection(audio_features), dim=-1)
        logits = self.heads(video_features, audio_features)
        common = [name for name in logits["video"] if name in logits["audio"]]
        if common:
            return torch.stack([(logits["video"][n].softmax(-1) * logits["audio"][n].softmax(-1)).sum(-1)
                                for n in common]).mean(0)
        (video_logits,), (audio_logits,) = logits["video"].values(), logits["audio"].values()
        if video_logits.shape[-1] != audio_logits.shape[-1]:
            raise NotImplementedError(f"XDC ({self.task_config.variant}) with {video_logits.shape[-1]} audio and "
                                      f"{audio_logits.shape[-1]} video clusters has no cross-modal score")
        return (video_logits.softmax(-1) * audio_logits.softmax(-1)).sum(-1)

    # -- evaluation -----------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_clusters: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        video_features, audio_features = self.video_encoder(batch[VIDEO]), self.audio_encoder(batch[AUDIO])
        logits = self.heads(video_features, audio_features)
        first = next(iter(logits["video"].values()))
        self._val_clusters.append(gather(first.argmax(1)))
        self._val_labels.append(gather(batch[LABEL]))
        self.log_skipped(batch, "val")
        return {"embeddings": {"video": video_features, "audio": audio_features}}  # for the online monitors

    def on_validation_epoch_end(self) -> None:
        """``val/nmi_video_head``: how well the video encoder's predicted clusters follow the
        categories on held-out videos."""
        if not self._val_clusters:
            return
        clusters, labels = torch.cat(self._val_clusters), torch.cat(self._val_labels)
        known = labels >= 0
        if bool(known.any()):
            self.log("val/nmi_video_head", clustering_scores(clusters[known], labels[known])["nmi"], prog_bar=True)
