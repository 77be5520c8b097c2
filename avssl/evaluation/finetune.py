"""Fine-tuning: a pretrained encoder and a fresh linear classifier (after dropout), trained
together on labelled shards, the encoder at a lower learning rate than the head
("Audio-Visual Instance Discrimination with Cross-Modal Agreement", CVPR 2021; "Labelling Unlabelled Videos from Scratch
with Multi-modal Self-supervision", NeurIPS 2020 protocols: head 10× the backbone's rate). Reports clip-level and
video-level (softmax averaged over ``eval_clips_per_video`` clips) top-1 and top-5 on test;
the model is the one at the end of training (nothing is selected on test)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from avssl.config import start_evaluation
from avssl.data.datamodule import AVDataModule, DataConfig, base_views, manifest_classes
from avssl.data.skips import split_clips
from avssl.data.views import AUDIO, INDEX, LABEL, VIDEO
from avssl.evaluation.encoders import load_encoders
from avssl.evaluation.io import write_metrics
from avssl.metrics.classification import top_k_accuracy, video_level_scores

INPUTS = {"video": VIDEO, "audio": AUDIO}


@dataclass
class FinetuneConfig:
    """The ``finetune`` section of an evaluation recipe."""

    encoders: str = "random"  # an `avssl export` folder, a Lightning .ckpt, or "random"
    modality: str = "video"  # which encoder is fine-tuned: video | audio
    num_classes: int | None = None  # None: the class names in the shards' manifest
    epochs: int = 10
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-3  # the classifier's rate
    encoder_lr_scale: float = 0.1  # the encoder's rate = lr × this
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    dropout: float = 0.5
    feature_norm: str = "none"  # none (the papers' dropout → linear) | batchnorm: BatchNorm1d on the embedding first
    milestones: list[float] = field(default_factory=lambda: [0.6, 0.85])  # lr × gamma at these fractions
    gamma: float = 0.3
    eval_clips_per_video: int = 3
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    accelerator: str = "auto"
    precision: str = "32-true"


class FineTuner(pl.LightningModule):
    """Encoder + dropout + linear classifier; collects test scores for clip/video accuracy."""

    def __init__(self, encoder: nn.Module, num_classes: int, cfg: FinetuneConfig) -> None:
        super().__init__()
        if cfg.modality not in INPUTS:
            raise ValueError(f"finetune.modality must be video or audio, got {cfg.modality!r}")
        if cfg.feature_norm not in ("none", "batchnorm"):
            raise ValueError(f"finetune.feature_norm must be none or batchnorm, got {cfg.feature_norm!r}")
        self.encoder = encoder
        norm = [nn.BatchNorm1d(encoder.embedding_dim)] if cfg.feature_norm == "batchnorm" else []
        self.head = nn.Sequential(*norm, nn.Dropout(cfg.dropout), nn.Linear(encoder.embedding_dim, num_classes))
        self.cfg = cfg
        self.input_key = INPUTS[cfg.modality]
        self._scores: dict[str, list[torch.Tensor]] = {}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.encoder(batch[self.input_key]))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        labels = batch[LABEL]
        known = labels >= 0
        if not bool(known.any()):
            raise ValueError("a training batch without labels: fine-tuning needs labelled shards")
        loss = F.cross_entropy(logits[known], labels[known])
        self.log("train/loss", loss, prog_bar=True, on_epoch=True, batch_size=int(known.sum()))
        self.log("train/top1", (logits[known].argmax(1) == labels[known]).float().mean() * 100,
                 on_epoch=True, batch_size=int(known.sum()))
        return loss

    def _collect(self, stage: str, batch: dict[str, torch.Tensor]) -> None:
        scores = self(batch).softmax(1).float()
        part = self._scores.setdefault(stage, [])
        part.append(torch.cat([scores, batch[LABEL][:, None].float(), batch[INDEX][:, None].float()], 1).cpu())

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._collect("val", batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._collect("test", batch)

    def on_validation_epoch_end(self) -> None:
        if "val" in self._scores:
            self.log("val/video_top1", accuracy_report(self._scores.pop("val"))["video_top1"])

    def configure_optimizers(self) -> Any:
        cfg = self.cfg
        trainable = [p for p in self.encoder.parameters() if p.requires_grad]
        groups = [{"params": trainable, "lr": cfg.lr * cfg.encoder_lr_scale},
                  {"params": list(self.head.parameters()), "lr": cfg.lr}]
        if cfg.optimizer == "adam":
            optimizer = torch.optim.Adam(groups, weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        else:
            raise ValueError(f"finetune.optimizer must be adam or sgd, got {cfg.optimizer!r}")
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        steps = [int(math.ceil(m * total)) for m in cfg.milestones]
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, steps, cfg.gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def accuracy_report(rows: list[torch.Tensor]) -> dict[str, float]:
    """Clip and video top-1/top-5 (%) from collected [scores | label | index] rows."""
    table = torch.cat(rows)
    scores, labels, index = table[:, :-2], table[:, -2].long(), table[:, -1].long()
    video_scores, video_labels = video_level_scores(scores, labels, index, apply_softmax=False)
    k5 = min(5, scores.shape[1])
    return {"clip_top1": top_k_accuracy(scores, labels, 1), "clip_top5": top_k_accuracy(scores, labels, k5),
            "video_top1": top_k_accuracy(video_scores, video_labels, 1),
            "video_top5": top_k_accuracy(video_scores, video_labels, k5),
            "num_clips": int(len(labels)), "num_videos": int(len(video_labels))}


def run_finetune(encoder: nn.Module, data: DataConfig, cfg: FinetuneConfig, num_classes: int, run_dir: str,
                 seed: int = 0) -> dict[str, Any]:
    """Train for ``cfg.epochs`` on the train split, then report test (and the last val)."""
    pl.seed_everything(seed, workers=True)
    encoder.requires_grad_(True).train()  # load_pretrained returns eval-mode encoders; Lightning keeps modes
    views = base_views(data)
    views = replace(views, video=views.video if cfg.modality == "video" else None,
                    audio=views.audio if cfg.modality == "audio" else {})
    eval_views = replace(views, clips_per_video=cfg.eval_clips_per_video)
    data = replace(data, train_split=cfg.train_split, val_split=cfg.val_split, test_split=cfg.test_split)
    datamodule = AVDataModule(data, views=views, eval_views=eval_views)
    model = FineTuner(encoder, num_classes, cfg)
    trainer = pl.Trainer(max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=1, precision=cfg.precision,
                         logger=pl.loggers.CSVLogger(run_dir, name="", version="csv"), enable_checkpointing=False,
                         check_val_every_n_epoch=max(cfg.epochs, 1), num_sanity_val_steps=0, log_every_n_steps=10)
    trainer.fit(model, datamodule=datamodule)
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    trainer.test(model, datamodule=datamodule, verbose=False)
    test = accuracy_report(model._scores.pop("test"))
    clips = split_clips(data.shards, cfg.test_split, cfg.eval_clips_per_video, test["num_clips"], test=True,
                        allow_missing=data.allow_missing_test_clips)
    return {"modality": cfg.modality, "test": test, "val": val, "epochs": cfg.epochs,
            "lr": cfg.lr, "encoder_lr": cfg.lr * cfg.encoder_lr_scale, "clips": {"test": clips}}


def evaluate(config: DictConfig) -> dict[str, Any]:
    """`avssl finetune`: the ``finetune.modality`` encoder of ``finetune.encoders`` trained with a
    classifier on the recipe's shards; metrics.json in ``run_dir``."""
    cfg, run_dir = start_evaluation(config, "finetune", FinetuneConfig)
    encoders, data, _ = load_encoders(config, cfg.encoders, run_dir)
    encoder = encoders.get(cfg.modality)
    if encoder is None:
        raise ValueError(f"finetune.modality={cfg.modality}: these encoders have no {cfg.modality} encoder")
    num_classes = cfg.num_classes or len(manifest_classes(data.shards))
    if num_classes < 2:
        raise ValueError(f"{data.shards}: the manifest lists no classes; set finetune.num_classes")
    results = run_finetune(encoder, data, cfg, num_classes, str(run_dir), seed=int(config.seed))
    results["encoders"] = cfg.encoders
    return {**results, "metrics_file": str(write_metrics(results, run_dir))}


def report(results: dict[str, Any]) -> str:
    """What `avssl finetune` prints: test top-1 (clip, video) and video top-5."""
    t = results["test"]
    epochs = f"{results['epochs']} epoch" + ("" if results["epochs"] == 1 else "s")
    return (f"fine-tuned {results['modality']} encoder of {results['encoders']} ({epochs}), test top-1 %: "
            f"clip {t['clip_top1']:.1f}, video {t['video_top1']:.1f} (top-5 {t['video_top5']:.1f})\n"
            f"written: {results['metrics_file']}")


__all__ = ["FineTuner", "FinetuneConfig", "accuracy_report", "evaluate", "report", "run_finetune"]
