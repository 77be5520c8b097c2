"""`avssl finetune`: fine-tune a pretrained encoder with a linear classifier on labelled
shards; writes metrics.json (clip/video top-1 and top-5 on test)."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from avssl.config import start_evaluation
from avssl.data.datamodule import manifest_classes
from avssl.evaluation.finetune import FinetuneConfig, run_finetune
from avssl.evaluation.linear_probe import write_metrics
from avssl.probe import load_encoders


def finetune_from_recipe(config: DictConfig) -> dict[str, Any]:
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
    path = write_metrics(results, run_dir)
    t = results["test"]
    epochs = f"{cfg.epochs} epoch" + ("" if cfg.epochs == 1 else "s")
    print(f"fine-tuned {cfg.modality} encoder of {cfg.encoders} ({epochs}), test top-1 %: "
          f"clip {t['clip_top1']:.1f}, video {t['video_top1']:.1f} (top-5 {t['video_top5']:.1f})\nwritten: {path}")
    return results
