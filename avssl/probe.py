"""`avssl probe`: pick the encoders a recipe names, run the linear probe, write metrics."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from omegaconf import DictConfig

from avssl.config import data_config, start_evaluation, to_plain
from avssl.data.datamodule import DataConfig
from avssl.data.views import AudioView, MelSettings, VideoView
from avssl.evaluation.linear_probe import ProbeConfig, run_linear_probe, write_metrics


def _file_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def data_for_encoders(data: DataConfig, spec: dict[str, Any]) -> DataConfig:
    """The recipe's data section with the input windows the exported encoders expect."""
    inputs = spec.get("inputs", {})
    if inputs.get("video"):
        v = inputs["video"]
        data.video = VideoView(num_frames=v["num_frames"], fps=v["fps"], size=v["size"])
    if inputs.get("audio"):
        a = inputs["audio"]
        data.audio = AudioView(seconds=a["seconds"])
        data.mel = MelSettings(**a["mel"]) if "mel" in a else data.mel
    return data


def load_encoders(config: DictConfig, source_name: str, run_dir: Path) -> tuple[dict, DataConfig, str]:
    """(encoders by modality, data config, an id for the feature cache) from an export
    folder, a Lightning .ckpt (exported into ``run_dir/export`` first) or ``random`` (the
    recipe's model, initialised with ``seed``)."""
    from avssl.export import export_checkpoint, load_pretrained
    from avssl.models.registry import build_encoders

    data = data_config(config)
    if source_name == "random":
        pl.seed_everything(config.seed)
        video, audio = build_encoders(to_plain(config.model))
        encoder_id = "random:" + json.dumps(to_plain(config.model), sort_keys=True) + f":seed={config.seed}"
        return {"video": video, "audio": audio}, data, encoder_id
    source = Path(source_name)
    if source.suffix == ".ckpt":
        source = export_checkpoint(source, run_dir / "export")
    if not source.is_dir():
        raise FileNotFoundError(f"encoders={source_name}: not an export folder, a .ckpt or 'random'")
    pretrained = load_pretrained(source)
    encoder_id = "export:" + _file_digest(list(source.glob("*.safetensors")))
    encoders = {"video": pretrained.video_encoder, "audio": pretrained.audio_encoder}
    return encoders, data_for_encoders(data, pretrained.spec), encoder_id


def format_table(results: dict[str, Any]) -> str:
    """One row per modality: top-1 (%) for single-label sets, mAP for multi-label ones."""
    def decay(value: Any) -> str:
        return "/".join(f"{v:.0e}" for v in value) if isinstance(value, list) else f"{value:.0e}"

    rows = [f"{'modality':<8} {'clip':>8} {'video':>8} {'kNN clip':>9}  weight decay"]
    for modality, r in results.items():
        if not isinstance(r, dict):
            continue
        if "test_clip_top1" in r:
            knn = f"{r['knn_clip_top1']:>9.1f}" if "knn_clip_top1" in r else f"{'-':>9}"
            rows.append(f"{modality:<8} {r['test_clip_top1']:>8.1f} {r['test_video_top1']:>8.1f} {knn}  "
                        f"{decay(r['weight_decay'])}")
        elif "test_clip_map" in r:
            rows.append(f"{modality:<8} {r['test_clip_map']:>8.3f} {r['test_video_map']:>8.3f} {'-':>9}  "
                        f"{decay(r['weight_decay'])}   (mAP)")
    return "\n".join(rows)


def cross_validate(encoders: dict, data: DataConfig, probe: ProbeConfig, encoder_id: str, run_dir: Path
                   ) -> dict[str, Any]:
    """The fold protocol (ESC-50, "Look, Listen and Learn", ICCV 2017; "Audio-Visual Instance Discrimination with
    Cross-Modal Agreement", CVPR 2021): one probe per fold's shard set
    (`avssl prepare esc50 --fold k`: train = the other folds, test = fold k), and the mean
    of each test metric over the folds; each fold's figures in ``run_dir/fold<k>``."""
    from dataclasses import replace

    folds = [run_linear_probe(encoders, replace(data, shards=shards), probe, encoder_id, run_dir / f"fold{k}")
             for k, shards in enumerate(probe.fold_shards)]
    results: dict[str, Any] = {"folds": folds, "fold_shards": list(probe.fold_shards)}
    for modality in probe.modalities:
        keys = [k for k, v in folds[0][modality].items() if k.startswith("test_") or k == "knn_clip_top1"]
        results[modality] = {k: float(np.mean([f[modality][k] for f in folds])) for k in keys}
        results[modality]["weight_decay"] = [f[modality]["weight_decay"] for f in folds]
    return results


def probe_from_recipe(config: DictConfig) -> dict[str, Any]:
    probe, run_dir = start_evaluation(config, "probe", ProbeConfig)
    encoders, data, encoder_id = load_encoders(config, probe.encoders, run_dir)
    if probe.fold_shards:
        results = cross_validate(encoders, data, probe, encoder_id, run_dir)
    else:
        results = run_linear_probe(encoders, data, probe, encoder_id, figures_dir=run_dir)
    results["encoders"] = probe.encoders
    path = write_metrics(results, run_dir)
    where = f"mean of {len(probe.fold_shards)} folds" if probe.fold_shards else "test split"
    figures = f"{run_dir}/fold*/" if probe.fold_shards else run_dir
    figures = "" if probe.multilabel else f"; confusion.png, embedding.png in {figures}"
    print(f"linear probe of {probe.encoders} ({where}, top-1 %):\n{format_table(results)}\nwritten: {path}{figures}")
    return results
