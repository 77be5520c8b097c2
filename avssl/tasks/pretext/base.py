"""What every pretext method shares: encoders from the recipe, the optimiser and schedule,
hyper-parameters saved in the checkpoint, and the per-epoch count of skipped samples.

A method subclasses :class:`PretextTask`, declares its views, and writes ``training_step``
returning ``{"loss", "terms", "embeddings"}`` so that monitors can be callbacks.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from avssl.config import Recipe, check_section, data_config, refuse_smoke_mix, to_plain
from avssl.data.datamodule import DataConfig, ShardList, base_views
from avssl.data.views import AUDIO, SKIPPED, VIDEO, AudioView, ViewSpec
from avssl.metrics.retrieval import in_batch_retrieval_top1
from avssl.models.registry import build_encoders


@dataclass
class TaskConfig:
    """Fields every method's ``task`` section has."""

    name: str = ""
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-5
    momentum: float = 0.9  # sgd only
    scheduler: Literal["cosine", "none"] = "cosine"
    warmup_epochs: int = 0


@dataclass(frozen=True)
class PretextRecipe:
    """A pretraining recipe read once: the plain dict the checkpoint keeps (``load_pretext_task``
    rebuilds the task from it) and the typed sections the task and its data module use."""

    plain: dict[str, Any]
    task: TaskConfig
    data: DataConfig

    @classmethod
    def read(cls, config: DictConfig | Mapping[str, Any], task_schema: type[TaskConfig]) -> PretextRecipe:
        """``config``: what ``load_recipe`` returned (already checked against the schema), or a
        plain dict (a checkpoint's recipe), checked here."""
        if not (isinstance(config, DictConfig) and OmegaConf.get_type(config) is Recipe):
            config = OmegaConf.merge(OmegaConf.structured(Recipe), config)
        return cls(plain=to_plain(config), task=check_section(config, "task", task_schema), data=data_config(config))

    @property
    def seed(self) -> int:
        return int(self.plain.get("seed", 0))


class PretextTask(pl.LightningModule):
    """Base class; ``recipe`` is the recipe read once (or a plain dict of it, read here)."""

    config_class: type[TaskConfig] = TaskConfig
    #: the heat map ``avssl localize`` draws when its recipe says ``map: auto``: ``per_location``
    #: for methods whose own score of every location is their localisation (AVOL-Net, LVS)
    localization_map: str = "contribution"

    def __init__(self, recipe: PretextRecipe | Mapping[str, Any]) -> None:
        super().__init__()
        if not isinstance(recipe, PretextRecipe):
            recipe = PretextRecipe.read(recipe, self.config_class)
        self.save_hyperparameters({"config": recipe.plain})
        self.task_config = recipe.task
        self.data_config: DataConfig = recipe.data
        self.seed = recipe.seed
        self.video_encoder, self.audio_encoder = build_encoders(recipe.plain["model"])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A real run never continues a smoke run (tiny banks, a shrunken schedule), nor a
        smoke run a real one: ``resume`` naming the other kind is refused."""
        refuse_smoke_mix(checkpoint, self.hparams["config"])

    def require_both_encoders(self) -> None:
        """Cross-modal methods need a video and an audio encoder."""
        if self.video_encoder is None or self.audio_encoder is None:
            raise ValueError(f"{type(self).__name__} needs both a video and an audio encoder "
                             "(model.video_encoder, model.audio_encoder)")

    def resolve_num_instances(self) -> int:
        """``task.num_instances`` (memory/label banks: one slot per training video), read
        from the shards' manifest when unset and written back into the saved config so the
        checkpoint loads without the shards."""
        cfg = self.task_config
        if cfg.num_instances is None:
            train = ShardList.from_manifest(self.data_config.shards, self.data_config.train_split)
            cfg.num_instances = train.num_samples
            self.hparams["config"].setdefault("task", {})["num_instances"] = cfg.num_instances
        return cfg.num_instances

    # -- cross-modal score ----------------------------------------------------------------
    def pair_scores(self, video_features: torch.Tensor, audio_features: torch.Tensor) -> torch.Tensor:
        """How well video row i and audio row i correspond (B×D_v, B×D_a encoder outputs →
        B), higher is better: the method's own cross-modal score. Localization applies it to
        every location of the video feature map. The default is the cosine similarity, for
        methods whose encoders share one space."""
        if video_features.shape[-1] != audio_features.shape[-1]:
            raise NotImplementedError(f"{type(self).__name__} has no cross-modal score for "
                                      f"{video_features.shape[-1]}-d video and "
                                      f"{audio_features.shape[-1]}-d audio features")
        return torch.nn.functional.cosine_similarity(video_features, audio_features, dim=-1)

    # -- views ----------------------------------------------------------------------------
    def extra_audio_views(self) -> dict[str, AudioView]:
        """Further audio windows this method needs beyond the aligned one (AVTS)."""
        return {}

    def views(self) -> ViewSpec:
        return base_views(self.data_config, self.extra_audio_views())

    def eval_views(self) -> ViewSpec:
        return base_views(self.data_config, self.extra_audio_views())

    # -- optimisation -----------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        cfg = self.task_config
        params = [p for p in self.parameters() if p.requires_grad]
        if cfg.optimizer == "adam":
            optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "adamw":
            optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:  # sgd
            optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        if cfg.scheduler == "none":
            return optimizer
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = min(cfg.warmup_epochs * max(total // max(self.trainer.max_epochs or 1, 1), 1), total - 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- validation -------------------------------------------------------------------------------
    def in_batch_retrieval_validation(self, batch: dict[str, torch.Tensor], video_head: torch.nn.Module,
                                      audio_head: torch.nn.Module) -> dict:
        """Held-out cross-modal retrieval within the batch for methods with projection heads
        into one space: is a clip's own audio the nearest of the batch's audio to its video
        (and vice versa)? Logs ``val/retrieval_top1``; returns the embeddings for the monitors."""
        video_features, audio_features = self.video_encoder(batch[VIDEO]), self.audio_encoder(batch[AUDIO])
        accuracy = in_batch_retrieval_top1(video_head(video_features), audio_head(audio_features))
        self.log("val/retrieval_top1", accuracy, prog_bar=True, sync_dist=True, batch_size=video_features.shape[0])
        self.log_skipped(batch, "val")
        return {"embeddings": {"video": video_features, "audio": audio_features}}

    # -- data health --------------------------------------------------------------------------
    def log_skipped(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        if SKIPPED in batch:
            self.log(f"{stage}/skipped_samples", batch[SKIPPED].sum().float(), reduce_fx="sum",
                     on_step=False, on_epoch=True, sync_dist=True, batch_size=1)

