"""`avssl localize`: sound-source localization (cIoU, AUC, whole-image baseline, a PNG of
heatmaps) and temporal event localization (segment accuracy) of a pretext run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig

from avssl.config import data_config, start_evaluation, to_plain
from avssl.evaluation.linear_probe import _device, write_metrics
from avssl.evaluation.localization import (
    LocalizationConfig,
    evaluate_localization,
    event_localization,
    plot_localization,
)


def load_localization_task(config: DictConfig, checkpoint: str):
    """(task, an id for the feature cache): a checkpoint's task, or the recipe's task freshly
    initialised with ``seed`` (``random``)."""
    from avssl.tasks.pretext import build_pretext_task, load_pretext_task

    if checkpoint == "random":
        pl.seed_everything(config.seed)
        recipe = to_plain(config)
        recipe.pop("localization", None)
        return build_pretext_task(recipe).eval(), "random:" + json.dumps(to_plain(config.model), sort_keys=True) + \
            f":seed={config.seed}"
    path = Path(checkpoint)
    if path.suffix != ".ckpt":
        raise FileNotFoundError(f"localization.checkpoint={checkpoint}: give a pretext run's .ckpt (the heatmap "
                                "needs the method's cross-modal head, which an export folder does not hold) "
                                "or 'random'")
    return load_pretext_task(path), f"ckpt:{path.resolve()}:{path.stat().st_mtime_ns}"


def localize_from_recipe(config: DictConfig) -> dict[str, Any]:
    cfg, run_dir = start_evaluation(config, "localization", LocalizationConfig)
    task, encoder_id = load_localization_task(config, cfg.checkpoint)
    data = data_config(config)
    device = _device(cfg.device)
    results, shown = evaluate_localization(task, data, cfg, device)
    results["checkpoint"] = cfg.checkpoint
    if shown:
        title = (f"{cfg.checkpoint}: cIoU@0.5 {results['ciou']:.3f} (whole image {results['whole_image_ciou']:.3f}), "
                 f"rule {cfg.rule}")
        results["plot"] = str(plot_localization(shown, run_dir / "localization.png", title, cfg.rule))
    if cfg.events:
        encoders = {"video": task.video_encoder, "audio": task.audio_encoder}
        results["events"] = event_localization(encoders, data, cfg, device, Path(cfg.cache_dir), encoder_id)
    path = write_metrics(results, run_dir)
    events = f"; event segment accuracy {results['events']['segment_accuracy']:.1f} %" if cfg.events else ""
    print(f"localization of {cfg.checkpoint} ({cfg.split}, {results['num_clips']} clips, rule {cfg.rule}): "
          f"cIoU@0.5 {results['ciou']:.3f}, mean cIoU {results['mean_ciou']:.3f}, AUC {results['auc']:.3f}; "
          f"whole image {results['whole_image_ciou']:.3f} / {results['whole_image_mean_ciou']:.3f}{events}\n"
          f"written: {path}")
    return results
