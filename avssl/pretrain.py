"""Recipe → task, data module, loggers, callbacks → Lightning Trainer → checkpoint (→ export)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, Logger

from avssl.config import data_config, to_plain
from avssl.data.datamodule import AVDataModule


def make_loggers(config: DictConfig, run_dir: Path) -> list[Logger]:
    """CSV always (when on); wandb offline unless the user set WANDB_MODE."""
    loggers: list[Logger] = []
    if config.logger.csv:
        loggers.append(CSVLogger(save_dir=str(run_dir), name="", version="csv"))
    if config.logger.wandb:
        os.environ.setdefault("WANDB_MODE", "offline")
        from pytorch_lightning.loggers import WandbLogger

        loggers.append(WandbLogger(project=config.logger.project, name=config.logger.name or run_dir.name,
                                   save_dir=str(run_dir), config=to_plain(config)))
    return loggers


def save_resolved(config: DictConfig, run_dir: Path) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    OmegaConf.save(config, path, resolve=True)
    return path


def _has_test_step(task: pl.LightningModule) -> bool:
    return type(task).test_step is not pl.LightningModule.test_step


def pretrain(config: DictConfig, resume: str | None = None) -> dict[str, Any]:
    """Train the recipe's pretext task; returns the run folder, best/last checkpoints and
    the export folder."""
    # ShardStream.__len__ is exact by construction (equal batches per worker and rank).
    warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__` defined.*")
    from avssl.tasks.monitors import build_monitors
    from avssl.tasks.pretext import build_pretext_task

    run_dir = Path(config.run_dir)
    save_resolved(config, run_dir)
    pl.seed_everything(config.seed, workers=True)
    task = build_pretext_task(to_plain(config))
    datamodule = AVDataModule(data_config(config), views=task.views(), eval_views=task.eval_views())
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0)
    trainer_args = dict(OmegaConf.to_container(config.trainer, resolve=True))
    trainer_args.setdefault("default_root_dir", str(run_dir))
    loggers = make_loggers(config, run_dir)
    monitors = OmegaConf.to_object(config.monitors)
    callbacks: list[pl.Callback] = [checkpoint, *build_monitors(monitors, config.data.shards, seed=config.seed)]
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    trainer = pl.Trainer(logger=loggers or False, callbacks=callbacks, **trainer_args)
    trainer.fit(task, datamodule=datamodule, ckpt_path=resume)
    if _has_test_step(task) and datamodule.config.test_split:
        trainer.test(task, datamodule=datamodule)  # held-out pretext metrics (e.g. AVTS sync accuracy)
    last = Path(checkpoint.last_model_path) if checkpoint.last_model_path else run_dir / "checkpoints" / "last.ckpt"
    result: dict[str, Any] = {"run_dir": str(run_dir), "checkpoint": str(last),
                              "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}}
    if config.export.after_training and trainer.is_global_zero:
        from avssl.export import export_checkpoint

        result["export"] = str(export_checkpoint(last, run_dir / "export"))
    return result
