"""The model card of an export folder: ``README.md`` in the Hugging Face Hub's layout (YAML
front matter, then Markdown), so that the folder can be pushed to a model hub or handed on
as it is. Everything in it comes from model.json, the run's CSV log and the evaluation
``metrics.json`` files given; nothing is guessed.
"""
from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from avssl.errors import RecipeError

MODEL_CARD = "README.md"
# The Hub's value for "not stated": the weights' terms depend on the data they were trained
# on, which only the person exporting knows (`avssl export --license`).
DEFAULT_LICENSE = "unknown"

log = logging.getLogger(__name__)

# task.name → (method, the paper that defines it)
METHODS: dict[str, tuple[str, str]] = {
    "avc": ("Audio-Visual Correspondence (AVC)", "Look, Listen and Learn"),
    "avts": ("Audio-Visual Temporal Synchronization (AVTS)",
             "Cooperative Learning of Audio and Video Models from Self-Supervised Synchronization"),
    "avid_cma": ("Audio-Visual Instance Discrimination with Cross-Modal Agreement (AVID+CMA)",
                 "Audio-Visual Instance Discrimination with Cross-Modal Agreement"),
    "selavi": ("Self-Labelling Videos (SeLaVi)",
               "Labelling Unlabelled Videos from Scratch with Multi-modal Self-supervision"),
    "xdc": ("Cross-Modal Deep Clustering (XDC)", "Self-Supervised Learning by Cross-Modal Audio-Video Clustering"),
    "avenet": ("AVE-Net / AVOL-Net (audio-visual embedding and object localization)", "Objects that Sound"),
    "lvs": ("Localizing Visual Sounds the Hard Way (LVS)", "Localizing Visual Sounds the Hard Way"),
    "vatt": ("Video-Audio Transformers with DropToken (VATT, audio-video)",
             "VATT: Transformers for Multimodal Self-Supervised Learning from Raw Video, Audio and Text"),
    "cav_mae": ("Contrastive Audio-Visual Masked Autoencoder (CAV-MAE)", "Contrastive Audio-Visual Masked Autoencoder"),
    "robust_xid": ("Robust cross-modal instance discrimination (Robust-xID)",
                   "Robust Audio-Visual Instance Discrimination"),
}
METHODS["avid"] = METHODS["avid_cma"]  # task.name of AVID+CMA checkpoints written before its rename
# CSV columns that describe the run's speed or schedule, not what it learned.
_NOT_FIGURES = ("lr-", "perf/", "epoch", "step")


def pretext_metrics(checkpoint: Path, global_step: int | None) -> dict[str, float]:
    """The last logged value of each metric of the run the checkpoint belongs to, up to its
    step (``RUN/csv/metrics.csv`` beside ``RUN/checkpoints/``); empty when there is no log."""
    run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return {}
    last: dict[str, float] = {}
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            step = row.get("step") or ""
            if global_step is not None and step.isdigit() and int(step) > global_step:
                continue  # logged by a later part of the run than this checkpoint
            for key, value in row.items():
                if key and value not in (None, "") and not key.startswith(_NOT_FIGURES):
                    try:
                        last[key] = float(value)
                    except ValueError:
                        continue
    return dict(sorted(last.items()))


def read_evaluations(paths: Sequence[str | Path]) -> dict[str, Any]:
    """``metrics.json`` files of evaluation verbs, by path."""
    results: dict[str, Any] = {}
    for path in map(Path, paths):
        try:
            results[str(path)] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise RecipeError(f"evaluation {path}: not a readable metrics.json ({error})") from None
    return results


def _numbers(value: Any, prefix: str = "") -> list[tuple[str, float]]:
    """The numeric leaves of a metrics.json, as (dotted key, value)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [(prefix, float(value))]
    if isinstance(value, Mapping):
        return [item for key, sub in value.items() for item in _numbers(sub, f"{prefix}.{key}" if prefix else str(key))]
    return []


def _training_data(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """Where the training clips came from and how many (the shards' manifest, when readable)."""
    from avssl.data.errors import DataError
    from avssl.data.remote import is_local_folder, read_manifest

    shards = str((recipe.get("data") or {}).get("shards", ""))
    folder = PurePosixPath(shards.rstrip("/")) if not is_local_folder(shards) else Path(shards)  # a URL stays a URL
    name = folder.parent.name if folder.name == "shards" else folder.name
    data: dict[str, Any] = {"shards": shards, "name": name or "unknown"}
    try:
        manifest = read_manifest(shards)
        train = manifest["splits"]["train"]
        data.update(clips=train.get("num_samples"), hours=train.get("hours"),
                    classes=len(manifest.get("classes") or []) or None)
    except (OSError, DataError, KeyError, TypeError, ValueError):
        log.info("model card: no readable manifest at %s; the data size is left out", shards)
    return data


def _front_matter(method: str, data: Mapping[str, Any], license: str) -> str:
    meta = {"library_name": "avssl", "license": license,
            "tags": ["avssl", "self-supervised-learning", "audio-visual", "video", "audio", method],
            "datasets": [data["name"]], "pipeline_tag": "feature-extraction"}
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _encoder_rows(spec: Mapping[str, Any]) -> list[str]:
    rows = ["| modality | encoder | embedding | pooling | parameters | file | weights |",
            "|---|---|---:|---|---:|---|---|"]
    for key in ("video_encoder", "audio_encoder"):
        entry = spec.get(key)
        if entry:
            rows.append(f"| {key.split('_')[0]} | `{entry['name']}` {json.dumps(entry['kwargs'])} | "
                        f"{entry['embedding_dim']} | {entry['pooling']} | {entry['num_parameters']:,} | "
                        f"`{entry['file']}` | {entry['weights_convention']} |")
    return rows


def _input_lines(inputs: Mapping[str, Any]) -> list[str]:
    lines = []
    if video := inputs.get("video"):
        lines.append(f"- video: {video['num_frames']} frames at {video['fps']} fps, "
                     f"{video['size']}×{video['size']} px, layout {video['layout']}; "
                     f"{video['scaling']} (mean {video['mean']}, std {video['std']})")
    if audio := inputs.get("audio"):
        mel = audio["mel"]
        lines.append(f"- audio: {audio['seconds']} s mono at {audio['sample_rate']} Hz → {audio['representation']} "
                     f"{mel['n_mels']}×{audio['num_mel_frames']} (window {mel['window_seconds']} s, hop "
                     f"{mel['hop_seconds']} s, n_fft {mel['n_fft']}), layout {audio['layout']}; {audio['scaling']}")
    return lines


def _results_lines(pretext: Mapping[str, float], evaluations: Mapping[str, Any]) -> list[str]:
    lines = []
    if pretext:
        lines += ["Pretext and online-monitor figures, the last value the run logged up to this checkpoint:", "",
                  "| metric | value |", "|---|---:|", *(f"| {k} | {v:.4g} |" for k, v in pretext.items()), ""]
    for path, results in evaluations.items():
        lines += [f"Evaluation `{path}`:", "", "| metric | value |", "|---|---:|",
                  *(f"| {k} | {v:.4g} |" for k, v in _numbers(results)), ""]
    return lines or ["No figures known at export time (no CSV log beside the checkpoint, no evaluation given).", ""]


def _torchvision_note(spec: Mapping[str, Any]) -> list[str]:
    video = spec.get("video_encoder") or {}
    if not video.get("torchvision_arch"):
        return []
    cls = video["torchvision_class"]
    if video["pooling"] == "max":
        pool = ("model.avgpool = torch.nn.AdaptiveMaxPool3d(1)  # this encoder max-pools; "
                "torchvision's default averages")
    else:
        pool = "# this encoder averages, as torchvision's own avgpool does"
    return ["Without avssl, into torchvision:", "", "```python", "import torch, torchvision",
            "from safetensors.torch import load_file", "", f"model = {cls}()",
            f'model.load_state_dict(load_file("{video["file"]}"), strict=True)', pool,
            "model.fc = torch.nn.Identity()  # the stored classifier is random and unused", "```", ""]


def _training_lines(spec: Mapping[str, Any], data: Mapping[str, Any]) -> list[str]:
    recipe = spec["recipe"]
    size = ", ".join(f"{data[k]:,} {k}" if isinstance(data[k], int) else f"{data[k]} {k}"
                     for k in ("clips", "hours", "classes") if data.get(k) is not None)
    in_split = f", {size} in the training split" if size else ""
    checkpoint = Path(str(spec.get("source_checkpoint"))).name
    return [f"- data: {data['name']} (`{data['shards']}`){in_split}",
            f"- training steps: {spec.get('global_step')} (epoch {spec.get('epoch')})",
            (f"- batch size: {(recipe.get('data') or {}).get('batch_size')}; seed: {recipe.get('seed')}; "
             f"source checkpoint: `{checkpoint}`"),
            "- recipe: the resolved recipe is `recipe` in `model.json`"]


_SMOKE_NOTICE = ("> **Smoke export.** Trained with `smoke=true`: 2 steps at a shrunken input, to check a recipe end "
                 "to end. These weights are not a trained model.")
_USAGE = ["```python", "import avssl", "", 'pretrained = avssl.load_pretrained("path/to/this/folder")',
          "video_encoder, audio_encoder = pretrained.video_encoder, pretrained.audio_encoder  # eval mode", "```", ""]


def model_card(spec: Mapping[str, Any], pretext: Mapping[str, float], evaluations: Mapping[str, Any],
               license: str) -> str:
    """README.md for an export folder whose model.json is ``spec``."""
    task = str((spec["recipe"].get("task") or {}).get("name", "unknown"))
    method, paper = METHODS.get(task, (task, ""))
    data = _training_data(spec["recipe"])
    names = " + ".join(spec[k]["name"] for k in ("video_encoder", "audio_encoder") if spec.get(k))
    licence = f"`{license}`" + (" (not stated by whoever exported it: the terms of the training data apply)"
                                if license == DEFAULT_LICENSE else "")
    lines = [_front_matter(task, data, license), f"# {method}: {names}", ""]
    if spec.get("smoke"):
        lines += [_SMOKE_NOTICE, ""]
    lines += ["Encoders pretrained without labels by avssl. "
              'Load them with `avssl.load_pretrained("path/to/this/folder")`.',
              "", "## Model", "", f"- method: {method}" + (f' (paper: "{paper}")' if paper else ""), "",
              *_encoder_rows(spec), "", "## Training", "", *_training_lines(spec, data), "",
              "## Inputs", "", *_input_lines(spec["inputs"]), "",
              "## Results", "", *_results_lines(pretext, evaluations),
              "## Usage", "", *_USAGE, *_torchvision_note(spec), "## Licence", "", licence, ""]
    return "\n".join(lines)
