"""AVID + CMA: cross-modal instance discrimination with memory banks, then cross-modal
agreement positives (Morgado, Vasconcelos, Misra 2021; "Audio-Visual Instance Discrimination with Cross-Modal
Agreement", CVPR 2021). ``task.name: avid_cma`` (``avid``, its former name, still reads).

AVID: each modality's embedding → projection MLP → 128-d, L2-normalised. Two memory banks
(video, audio) hold one slot per training video, keyed by the shard ``index`` and updated
with momentum from every rank's embeddings. The loss is NCE with a fixed normaliser Z
(estimated on the first batch) over K negatives drawn uniformly from the other slots,
cross-modal: video queries against the audio bank and audio queries against the video
bank, ½ each (``avssl.losses.nce``). The objective is written once (``_instance_term``) and
applied both ways.

CMA (from ``task.cma_start_epoch``): every ``task.cma_resample_epochs`` epochs, each
instance's positive set P_i is the top-k of ρ(i, j) = min(video cosine, audio cosine)
between bank slots (agreement in both spaces, ``avssl.losses.agreement``); the loss becomes ½·AVID + ½·positive-set
NCE, within-modal (video query against video-bank positives P_i and negatives outside
P_i ∪ {i}, likewise audio). The paper runs CMA as a second run loading the AVID
checkpoint (weights, banks, Z); here both phases are one run with a switch epoch, which
keeps that state by construction.

Negatives are drawn from a generator seeded by (seed, global step) for the global batch
and sliced per rank, so N ranks × B clips draw exactly what one process with N·B clips
draws (the 1-vs-2-process test relies on it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from avssl.data.views import AUDIO, INDEX, VIDEO
from avssl.distributed import rank, world_size
from avssl.errors import RecipeError
from avssl.losses.agreement import PositiveSets, excluded_from_negatives
from avssl.losses.nce import MemoryBank, NCENormaliser, instance_discrimination_loss, sample_excluding
from avssl.losses.state import load_former_keys
from avssl.models.heads import MLP
from avssl.tasks.pretext.base import PretextRecipe, PretextTask, TaskConfig


@dataclass
class AVIDCMAConfig(TaskConfig):
    name: str = "avid_cma"  # or "avid", its former name
    projection_hidden: int = 512  # MLP [D, hidden, dim] (paper: [512, 512, 128])
    embedding_dim: int = 128
    # none: the paper's head. batchnorm: BatchNorm1d on the pooled embedding before the
    # projection, in its hidden layer and on its output; without it the all-positive pooled embeddings of
    # small ReLU encoders project to one direction (docs/methods/avid_cma.md).
    projection_norm: Literal["none", "batchnorm"] = "none"
    temperature: float = 0.07
    loss: Literal["nce", "softmax"] = "nce"  # nce: the paper's NCE with a fixed Z; softmax: InfoNCE over 1 + K scores
    num_negatives: int = 1024  # bank negatives; 0: none (in-batch InfoNCE, see positives/batch_negatives)
    # Cross-modal terms only. bank: the paper's positive, the other modality's memory slot
    # M[i]; batch: the other modality's embedding of the same clip in this step (fresh, with
    # gradient to both towers), the bank still giving the negatives.
    positives: Literal["bank", "batch"] = "bank"
    batch_negatives: bool = False  # also score the other modality's B−1 other clips of this (local) batch
    bank_momentum: float = 0.5
    num_instances: int | None = None  # memory slots; None: the training split's size from the manifest
    cma_start_epoch: int | None = None  # None: AVID only
    cma_positives: int = 32
    cma_negatives: int = 64
    cma_resample_epochs: int = 5
    cma_chunk: int = 1024  # queries per block when computing agreement (memory: chunk × N)

    def __post_init__(self) -> None:
        if self.num_negatives == 0 and not (self.batch_negatives and self.positives == "batch"
                                            and self.loss == "softmax"):
            raise ValueError("task.num_negatives=0 (no bank negatives: in-batch InfoNCE) needs task.positives=batch, "
                             "task.batch_negatives=true and task.loss=softmax")


def projection_head(dim: int, cfg: AVIDCMAConfig) -> nn.Module:
    """``MLP([dim, hidden, embedding_dim])``; with ``projection_norm: batchnorm`` the pooled
    embedding is standardised first (BatchNorm1d), the hidden layer has BatchNorm, and the
    output is standardised (BatchNorm1d without affine: no shared direction to learn).
    ``cfg``: any task section with ``projection_hidden``, ``embedding_dim`` and
    ``projection_norm`` (Robust-xID's too)."""
    dims = [dim, cfg.projection_hidden, cfg.embedding_dim]
    if cfg.projection_norm == "none":
        return MLP(dims)
    return nn.Sequential(nn.BatchNorm1d(dim), MLP(dims, batchnorm=True),
                         nn.BatchNorm1d(cfg.embedding_dim, affine=False))


def add_heads_and_banks(task: PretextTask, cfg: Any) -> None:
    """The projection heads and per-instance memory banks cross-modal instance discrimination
    needs (AVID+CMA, Robust-xID; ``cfg`` either config), set on ``task`` in this order (parameter
    order, seeded draws)."""
    task.resolve_num_instances()
    if cfg.num_negatives >= cfg.num_instances:  # known once the manifest is read: not a schema check
        raise RecipeError(f"task.num_negatives ({cfg.num_negatives}) must be below the number of training "
                          f"instances ({cfg.num_instances})")
    task.video_head = projection_head(task.video_encoder.embedding_dim, cfg)
    task.audio_head = projection_head(task.audio_encoder.embedding_dim, cfg)
    task.video_bank = MemoryBank(cfg.num_instances, cfg.embedding_dim, cfg.bank_momentum, seed=task.seed)
    task.audio_bank = MemoryBank(cfg.num_instances, cfg.embedding_dim, cfg.bank_momentum, seed=task.seed + 1)


class AVIDCMA(PretextTask):
    config_class = AVIDCMAConfig

    def __init__(self, recipe: PretextRecipe | dict) -> None:
        super().__init__(recipe)
        self.require_both_encoders()
        cfg: AVIDCMAConfig = self.task_config
        add_heads_and_banks(self, cfg)
        self.normalisers = nn.ModuleDict({name: NCENormaliser() for name in ("v2a", "a2v", "v2v", "a2a")})
        self.positives = PositiveSets(cfg.cma_positives, cfg.cma_chunk)  # CMA's P_i, solved when CMA starts
        # checkpoints from before the positive sets were a module
        self.register_load_state_dict_pre_hook(load_former_keys({"positives": "positives.indices"}))

    @property
    def cma_active(self) -> bool:
        start = self.task_config.cma_start_epoch
        return start is not None and self.current_epoch >= start

    def on_train_epoch_start(self) -> None:
        cfg: AVIDCMAConfig = self.task_config
        if not self.cma_active:
            return
        if not self.positives.solved or (self.current_epoch - cfg.cma_start_epoch) % cfg.cma_resample_epochs == 0:
            # Banks are identical on every rank (updates gather), so is this.
            self.positives.solve(self.video_bank.bank, self.audio_bank.bank)

    # -- loss -------------------------------------------------------------------------------------
    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.global_step))

    def _instance_term(self, query: torch.Tensor, bank: MemoryBank, index: torch.Tensor, negatives: torch.Tensor,
                       normaliser: NCENormaliser, partner: torch.Tensor | None = None) -> torch.Tensor:
        """One direction's loss, as the recipe sets it. ``partner``: the other modality's
        embeddings of this batch (cross-modal terms only)."""
        cfg: AVIDCMAConfig = self.task_config
        return instance_discrimination_loss(query, bank, index, negatives, normaliser, cfg.temperature, cfg.loss,
                                            partner, cfg.positives == "batch", cfg.batch_negatives)

    def pair_scores(self, video_features: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        """Cosine similarity in the shared projection space of the NCE objective."""
        return F.cosine_similarity(self.video_head(video_features), self.audio_head(audio_features), dim=-1)

    def losses(self, v: torch.Tensor, a: torch.Tensor, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms for one rank's projected embeddings (B×dim each) and indices."""
        cfg: AVIDCMAConfig = self.task_config
        self.video_bank.check_index(index)
        generator = self._generator()
        split = {"total_rows": v.shape[0] * world_size(), "row_offset": v.shape[0] * rank()}
        negatives = sample_excluding(index[:, None], cfg.num_instances, cfg.num_negatives, generator, **split)
        terms = {
            "xid": 0.5 * (self._instance_term(v, self.audio_bank, index, negatives, self.normalisers["v2a"], a)
                          + self._instance_term(a, self.video_bank, index, negatives, self.normalisers["a2v"], v)),
        }
        if self.cma_active:
            positives = self.positives.indices[index]  # B×k, sorted
            within = sample_excluding(excluded_from_negatives(positives, index), cfg.num_instances,
                                      cfg.cma_negatives, generator, **split)
            terms["cma"] = 0.5 * (
                self._instance_term(v, self.video_bank, positives, within, self.normalisers["v2v"])
                + self._instance_term(a, self.audio_bank, positives, within, self.normalisers["a2a"]))
        return terms

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict:
        video_features = self.video_encoder(batch[VIDEO])
        audio_features = self.audio_encoder(batch[AUDIO])
        v, a = self.video_head(video_features), self.audio_head(audio_features)
        index = batch[INDEX]
        terms = self.losses(v, a, index)
        loss = terms["xid"] if "cma" not in terms else 0.5 * (terms["xid"] + terms["cma"])
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
