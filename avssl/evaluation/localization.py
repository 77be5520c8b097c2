"""Sound-source localization and temporal event localization ("Localizing Visual Sounds the Hard Way", CVPR 2021).

Heatmaps (zero-shot), from the pretext method's own cross-modal score
(:meth:`~avssl.tasks.pretext.base.PretextTask.pair_scores`) and the video encoder's last
feature map A (time-averaged), upsampled bilinearly to the frame:

* ``contribution``: how much each location adds to the score of the clip's own
  audio — gradient × activation, Σ_c A_c(x, y) ∂s/∂A_c(x, y) (Grad-CAM's map without its
  ReLU; for an average-pooled encoder the linearisation of s around the clip's pooled
  embedding) — minus the mean of the same map for ``contrast_audios`` other clips' audio
  of the batch, so that what goes with any sound (texture, edges) cancels and what goes
  with *this* sound stays (the idea of LVS's negatives, without training).
* ``per_location``: the score of the audio with every location's feature vector, LVS's
  cosine map for methods whose encoders share a space ("Localizing Visual Sounds the Hard Way", CVPR 2021).
* ``auto`` (default): the method's own, ``PretextTask.localization_map``: ``per_location``
  for the methods trained on that map (AVOL-Net, LVS), ``contribution`` for the others.

Scored with cIoU against the sounding objects' boxes (union map), under the recipe's
binarisation rule, with AUC over cIoU thresholds and the whole-image baseline (a map that
marks every pixel) beside it.

Temporal event localization (AVE-style, §6.3): each evaluation window of a video is a
segment labelled with the category heard in it or background (target ``event``); a linear
classifier on the frozen video + audio features, chosen on val, gives the segment accuracy
on test.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm import tqdm

from avssl.config import data_config, start_evaluation
from avssl.data.datamodule import DataConfig, base_views
from avssl.data.skips import split_clips
from avssl.data.targets import BACKGROUND, BOXES
from avssl.data.views import AUDIO, INDEX, VIDEO
from avssl.evaluation.encoders import load_task, resolve_device
from avssl.evaluation.features import Features, extract_features
from avssl.evaluation.io import split_loader, write_metrics
from avssl.evaluation.linear_probe import ProbeConfig, probe_modality
from avssl.metrics.localization import (
    binarize_heatmap,
    ciou,
    ciou_auc,
    ciou_success_rate,
    ground_truth_map,
    whole_image_baseline,
)
from avssl.tasks.pretext.base import PretextTask


@dataclass
class LocalizationConfig:
    """The ``localization`` section of an evaluation recipe."""

    checkpoint: str = "random"  # a pretext run's Lightning .ckpt (encoders + head), or "random"
    split: str = "test"
    rule: str = "gt_area"  # cIoU binarisation: gt_area (top-k, k = box area) | median (LVS)
    map: str = "auto"  # contribution | per_location (see the module doc) | auto: the method's (task.localization_map)
    contrast_audios: int = 7  # contribution maps: other clips' audio subtracted (0 = none)
    batch_size: int = 64
    num_plot: int = 8  # clips in localization.png
    events: bool = True  # also run temporal event localization
    event_clips_per_video: int = 4  # segments per video (the windows tile the video)
    event_train_split: str = "train"
    event_val_split: str = "val"
    cache_dir: str = "runs/.feature_cache"  # frozen features of the event segments
    device: str = "auto"


def heatmaps(task: PretextTask, video: torch.Tensor, audio: torch.Tensor, kind: str = "contribution",
             contrast_audios: int = 7) -> torch.Tensor:
    """B×H×W maps (H×W of the frames) of how strongly each place goes with the audio."""
    if kind == "auto":
        kind = task.localization_map
    with torch.no_grad():
        feature_map = task.video_encoder.feature_map(video)  # B×C×T×h×w
        audio_embedding = task.audio_encoder(audio)
    if kind == "per_location":
        with torch.no_grad():
            frame_map = feature_map.mean(dim=2)
            batch, channels, h, w = frame_map.shape
            locations = frame_map.permute(0, 2, 3, 1).reshape(batch * h * w, channels)
            scores = task.pair_scores(locations, audio_embedding.repeat_interleave(h * w, dim=0))
            maps = scores.reshape(batch, 1, h, w)
    elif kind == "contribution":
        shifts = range(1, min(contrast_audios, video.shape[0] - 1) + 1)
        own = _contribution(task, feature_map, audio_embedding)
        others = [_contribution(task, feature_map, audio_embedding.roll(k, 0)) for k in shifts]
        maps = own - torch.stack(others).mean(0) if others else own
    else:
        raise ValueError(f"localization.map must be auto, contribution or per_location, got {kind!r}")
    return F.interpolate(maps.float(), size=video.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


def _contribution(task: PretextTask, feature_map: torch.Tensor, audio_embedding: torch.Tensor) -> torch.Tensor:
    """B×1×h×w: Σ_c A_c ∂s/∂A_c of the pair score s of each clip with ``audio_embedding``."""
    with torch.enable_grad():
        activation = feature_map.detach().requires_grad_(True)
        score = task.pair_scores(task.video_encoder.pool(activation), audio_embedding).sum()
        (gradient,) = torch.autograd.grad(score, activation)
    return (gradient * activation.detach()).sum(dim=1).mean(dim=1, keepdim=True)


def _gt_maps(boxes: torch.Tensor, height: int, width: int) -> list[torch.Tensor | None]:
    """Union map of each clip's boxes (NaN rows unused); None when no box is on screen."""
    maps: list[torch.Tensor | None] = []
    for rows in boxes:
        rows = rows[~torch.isnan(rows).any(dim=1)]
        gt = ground_truth_map(rows, height, width) if len(rows) else None
        maps.append(gt if gt is not None and float(gt.sum()) > 0 else None)
    return maps


def localization_scores(cious: list[float], baselines: list[float]) -> dict[str, float]:
    """Dataset-level figures: cIoU@0.5 (fraction of clips), mean cIoU, AUC, and the same
    for the whole-image map."""
    return {"ciou": ciou_success_rate(cious), "mean_ciou": float(np.mean(cious)), "auc": ciou_auc(cious),
            "whole_image_ciou": ciou_success_rate(baselines), "whole_image_mean_ciou": float(np.mean(baselines)),
            "whole_image_auc": ciou_auc(baselines), "num_clips": len(cious)}


def evaluate_localization(task: PretextTask, data: DataConfig, cfg: LocalizationConfig, device: torch.device
                          ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """cIoU figures for both binarisation rules (the recipe's first), and a few clips to plot."""
    views = replace(base_views(data), targets=(BOXES,))
    loader, finish = split_loader(data, cfg.split, views, cfg.batch_size)
    finish = finish.to(device)
    task.eval().to(device)
    cious: dict[str, list[float]] = {"gt_area": [], "median": []}
    baselines: list[float] = []
    skipped = evaluated = 0
    shown: dict[str, list[torch.Tensor]] = {"frame": [], "heatmap": [], "boxes": [], "predicted": [], "ciou": []}
    for batch in tqdm(loader, desc=f"localization {cfg.split}", unit="batch", total=len(loader.stream), leave=False):
        evaluated += len(batch[INDEX])
        frames = batch[VIDEO][:, :, batch[VIDEO].shape[2] // 2]  # uint8 B×3×H×W, the middle frame
        batch = finish({k: v.to(device) for k, v in batch.items()}, train=False)
        maps = heatmaps(task, batch[VIDEO], batch[AUDIO], cfg.map, cfg.contrast_audios).cpu()
        height, width = maps.shape[-2:]
        for i, gt in enumerate(_gt_maps(batch[BOXES].cpu(), height, width)):
            if gt is None:  # the sounding object is off screen in this frame
                skipped += 1
                continue
            for rule in cious:
                cious[rule].append(ciou(maps[i], gt, rule=rule))
            baselines.append(whole_image_baseline(gt))
            if len(shown["frame"]) < cfg.num_plot:
                shown["frame"].append(frames[i])
                shown["heatmap"].append(maps[i])
                shown["boxes"].append(batch[BOXES][i].cpu())
                marked = int(gt.gt(0).sum()) if cfg.rule == "gt_area" else None  # the rule's pixel count
                shown["predicted"].append(binarize_heatmap(maps[i], marked))
                shown["ciou"].append(torch.tensor(cious[cfg.rule][-1], dtype=torch.float64))
    clips = split_clips(data.shards, cfg.split, 1, evaluated, test=True, allow_missing=data.allow_missing_test_clips)
    if not baselines:
        raise ValueError(f"split {cfg.split!r}: no clip with a sounding object on screen: nothing to localize")
    rules = [cfg.rule] + [r for r in cious if r != cfg.rule]
    results: dict[str, Any] = {"rule": cfg.rule, **localization_scores(cious[cfg.rule], baselines),
                               "by_rule": {r: localization_scores(cious[r], baselines) for r in rules},
                               "clips_without_box": skipped, "clips": {"test": clips}}
    return results, {k: torch.stack(v) for k, v in shown.items() if v}


def event_localization(encoders: dict[str, torch.nn.Module], data: DataConfig, cfg: LocalizationConfig,
                       device: torch.device, cache: Path | None, encoder_id: str) -> dict[str, Any]:
    """Segment accuracy (%) of a linear classifier on frozen video + audio features of each
    segment, 29-way on AVE, (categories + background) here."""
    splits, clips = {}, {}
    for name, split in (("train", cfg.event_train_split), ("val", cfg.event_val_split), ("test", cfg.split)):
        features = extract_features(encoders, data, split, cfg.event_clips_per_video, cfg.batch_size, device,
                                    cache, encoder_id, targets=("event",))
        splits[name] = features
        clips[name] = split_clips(data.shards, split, cfg.event_clips_per_video, len(features.label),
                                  test=name == "test", allow_missing=data.allow_missing_test_clips,
                                  limit=data.max_skip_fraction)
    num_categories = int(max(f.extra["event"].max() for f in splits.values())) + 1
    relabelled = {}
    for name, f in splits.items():
        event = np.where(f.extra["event"] == BACKGROUND, num_categories, f.extra["event"])
        # one "video" per segment: the probe's video-level score is then the segment's own
        relabelled[name] = Features(f.by_modality, event, np.arange(len(event)), f.clip)
    result = probe_modality(relabelled["train"], relabelled["val"], relabelled["test"], "both", ProbeConfig())
    background = float((relabelled["test"].label == num_categories).mean() * 100)
    return {"segment_accuracy": result["test_clip_top1"], "weight_decay": result["weight_decay"],
            "background_share": background, "segments": {k: int(len(v.label)) for k, v in relabelled.items()},
            "clips": clips}


def plot_localization(shown: dict[str, torch.Tensor], path: Path, title: str, rule: str = "gt_area") -> Path:
    """``localization.png``: each shown clip's frame and boxes, its heatmap on a colour scale
    with the pixels ``rule`` marks outlined, and its cIoU (:mod:`~avssl.evaluation.figures`)."""
    from avssl.evaluation.figures import localization_figure, save_figure

    return save_figure(localization_figure(shown["frame"], shown["heatmap"], shown["boxes"], shown["predicted"],
                                           shown["ciou"].tolist(), title, rule), path, dpi=110)


def evaluate(config: DictConfig) -> dict[str, Any]:
    """`avssl localize`: sound-source localization of ``localization.checkpoint``'s task on the
    recipe's shards (and event localization); metrics.json and localization.png in ``run_dir``."""
    cfg, run_dir = start_evaluation(config, "localization", LocalizationConfig)
    task, encoder_id = load_task(config, cfg.checkpoint)
    data = data_config(config)
    device = resolve_device(cfg.device)
    results, shown = evaluate_localization(task, data, cfg, device)
    results["checkpoint"] = cfg.checkpoint
    if shown:
        title = (f"{cfg.checkpoint}: cIoU@0.5 {results['ciou']:.3f} (whole image {results['whole_image_ciou']:.3f}), "
                 f"rule {cfg.rule}")
        results["plot"] = str(plot_localization(shown, run_dir / "localization.png", title, cfg.rule))
    if cfg.events:
        encoders = {"video": task.video_encoder, "audio": task.audio_encoder}
        results["events"] = event_localization(encoders, data, cfg, device, Path(cfg.cache_dir), encoder_id)
    return {**results, "metrics_file": str(write_metrics(results, run_dir))}


def report(results: dict[str, Any]) -> str:
    """What `avssl localize` prints: cIoU@0.5, mean cIoU and AUC beside the whole-image baseline."""
    events = (f"; event segment accuracy {results['events']['segment_accuracy']:.1f} %" if "events" in results
              else "")
    return (f"localization of {results['checkpoint']} ({results['clips']['test']['split']}, {results['num_clips']} "
            f"clips, rule {results['rule']}): cIoU@0.5 {results['ciou']:.3f}, mean cIoU {results['mean_ciou']:.3f}, "
            f"AUC {results['auc']:.3f}; whole image {results['whole_image_ciou']:.3f} / "
            f"{results['whole_image_mean_ciou']:.3f}{events}\nwritten: {results['metrics_file']}")


__all__ = ["LocalizationConfig", "evaluate", "evaluate_localization", "event_localization", "heatmaps",
           "localization_scores", "plot_localization", "report"]
