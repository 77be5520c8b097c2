"""What the evaluation verbs evaluate, and where: the encoders a recipe names (an `avssl
export` folder, a Lightning .ckpt, or ``random``), a pretext run's whole task (localization
needs its cross-modal head), and the device they run on."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from avssl.config import data_config, to_plain
from avssl.data.datamodule import DataConfig
from avssl.data.views import input_views

if TYPE_CHECKING:
    from avssl.tasks.pretext.base import PretextTask


def resolve_device(name: str) -> torch.device:
    """A recipe's ``device`` key: ``auto`` is the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class LoadedEncoders(NamedTuple):
    """Encoders by modality (None where the source has none), the recipe's data section
    with the input windows they expect, and an id of their weights for the feature cache."""

    encoders: dict[str, torch.nn.Module | None]
    data: DataConfig
    encoder_id: str


def file_digest(paths: list[Path]) -> str:
    """A short digest of the files' bytes (sorted by path): the feature cache's key."""
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def random_id(config: DictConfig) -> str:
    """The feature cache's id of the recipe's model initialised with its ``seed``."""
    return "random:" + json.dumps(to_plain(config.model), sort_keys=True) + f":seed={config.seed}"


def load_encoders(config: DictConfig, source_name: str, run_dir: Path) -> LoadedEncoders:
    """The encoders ``source_name`` names: an export folder, a Lightning .ckpt (exported into
    ``run_dir/export`` first) or ``random`` (the recipe's model, initialised with ``seed``).
    An export's model.json sets the input windows (:func:`~avssl.data.views.input_views`)."""
    from avssl.export import export_checkpoint, load_pretrained
    from avssl.models.registry import build_encoders

    data = data_config(config)
    if source_name == "random":
        pl.seed_everything(config.seed)
        video, audio = build_encoders(to_plain(config.model))
        return LoadedEncoders({"video": video, "audio": audio}, data, random_id(config))
    source = Path(source_name)
    if source.suffix == ".ckpt":
        source = export_checkpoint(source, run_dir / "export")
    if not source.is_dir():
        raise FileNotFoundError(f"encoders={source_name}: not an export folder, a .ckpt or 'random'")
    pretrained = load_pretrained(source)
    encoders = {"video": pretrained.video_encoder, "audio": pretrained.audio_encoder}
    data = input_views(pretrained.spec.get("inputs", {})).applied_to(data)
    return LoadedEncoders(encoders, data, "export:" + file_digest(list(source.glob("*.safetensors"))))


def load_task(config: DictConfig, checkpoint: str, section: str = "localization") -> tuple["PretextTask", str]:
    """(task, an id for the feature cache): a pretext run's task from its checkpoint, or the
    recipe's task freshly initialised with ``seed`` (``random``); ``section`` is the verb's
    recipe section (left out of the pretext recipe, and named in the error)."""
    from avssl.tasks.pretext import build_pretext_task, load_pretext_task

    if checkpoint == "random":
        pl.seed_everything(config.seed)
        recipe = to_plain(config)
        recipe.pop(section, None)
        return build_pretext_task(recipe).eval(), random_id(config)
    path = Path(checkpoint)
    if path.suffix != ".ckpt":
        raise FileNotFoundError(f"{section}.checkpoint={checkpoint}: give a pretext run's .ckpt (the method's "
                                "cross-modal score needs its cross-modal head, which an export folder does not "
                                "hold) or 'random'")
    return load_pretext_task(path), f"ckpt:{path.resolve()}:{path.stat().st_mtime_ns}"


__all__ = ["LoadedEncoders", "file_digest", "load_encoders", "load_task", "random_id", "resolve_device"]
