"""Recipes: OmegaConf YAML with a schema, inheritance and command-line overrides.

A recipe has the sections ``data``, ``model``, ``task``, ``trainer``, ``logger``,
``export`` (DESIGN.md) and ``monitors`` (online probes during pretraining).
``base: other.yaml`` (relative to the recipe, or to recipes/) starts from another recipe.
``key=value`` overrides apply last. Every key is checked against the schema: an unknown
key is an error that names it.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from avssl.data.datamodule import DataConfig

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


class RecipeError(ValueError):
    """A recipe that cannot be used as written; the message names the key or file."""


@dataclass
class ModelConfig:
    """Encoders by registry name, with keyword arguments beside ``name``."""

    video_encoder: dict[str, Any] | None = field(default_factory=lambda: {"name": "small3d"})
    audio_encoder: dict[str, Any] | None = field(default_factory=lambda: {"name": "small2d"})
    channels_last: bool = False  # conv weights and inputs channels-last (GPU: faster bf16 convolutions)
    compile: bool = False  # torch.compile each encoder in place (nn.Module.compile: same state-dict keys)


@dataclass
class LoggerConfig:
    csv: bool = True
    wandb: bool = True  # offline unless WANDB_MODE says otherwise
    project: str = "avssl"
    name: str | None = None


@dataclass
class ExportConfig:
    after_training: bool = True  # write <run_dir>/export when training ends


@dataclass
class CheckpointConfig:
    """When ``run_dir/checkpoints/last.ckpt`` is written (atomically: a killed write never
    leaves a broken newest checkpoint). Mid-epoch checkpoints resume exactly (docs/launching.md)."""

    every_n_train_steps: int = 0  # 0: only at the end of every ``every_n_epochs`` epochs
    every_n_epochs: int = 1


@dataclass
class MonitorsConfig:
    """Online linear probe and kNN on the training embeddings (avssl/tasks/monitors.py)."""

    linear_probe: bool = True
    knn: bool = True
    modalities: list[str] = field(default_factory=lambda: ["video", "audio"])
    num_classes: int | None = None  # None: the number of class names in the shards' manifest
    lr: float = 1e-3  # the linear probe's Adam
    knn_k: int = 20
    knn_temperature: float = 0.07
    queue_size: int = 4096  # labelled training embeddings kept for the kNN, per modality


@dataclass
class Recipe:
    """Sections every recipe has; ``task`` and ``trainer`` are checked separately."""

    seed: int = 0
    run_dir: str = "runs/default"
    # auto: continue from the newest checkpoint in run_dir/checkpoints (a fresh start if none);
    # a path: that checkpoint; null: a fresh start (avssl pretrain only)
    resume: str | None = None
    # 2 CPU training steps per phase of the method at a shrunken size, in <run_dir>-smoke:
    # rehearses a recipe end to end (config.smoke_settings)
    smoke: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    task: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    monitors: MonitorsConfig = field(default_factory=MonitorsConfig)
    # evaluation verbs' sections, each checked by its verb (avssl probe / finetune / localize /
    # separate / cluster)
    probe: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    localization: dict[str, Any] = field(default_factory=dict)
    separation: dict[str, Any] = field(default_factory=dict)
    cluster: dict[str, Any] = field(default_factory=dict)


def _resolve_base(base: str, relative_to: Path) -> Path:
    for candidate in (relative_to.parent / base, RECIPES_DIR / base, Path(base)):
        if candidate.exists():
            return candidate
    raise RecipeError(f"{relative_to}: base recipe {base!r} not found (looked beside it and in {RECIPES_DIR})")


def _load_yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    path = path.resolve()
    if not path.exists():
        raise RecipeError(f"recipe {path} not found")
    if path in seen:
        raise RecipeError(f"recipe {path} inherits from itself through 'base'")
    node = OmegaConf.load(path)
    if not isinstance(node, DictConfig):
        raise RecipeError(f"{path}: a recipe is a mapping of sections")
    base = node.pop("base", None)
    if base is None:
        return node
    return OmegaConf.merge(_load_yaml_chain(_resolve_base(str(base), path), seen + (path,)), node)


def _check_schema(node: DictConfig, schema: type, where: str, prefix: str = "") -> DictConfig:
    structured = OmegaConf.structured(schema)
    OmegaConf.set_readonly(structured, False)
    try:
        return OmegaConf.merge(structured, node)
    except (ConfigKeyError, ConfigAttributeError) as error:
        raise RecipeError(f"{where}: unknown key '{prefix}{error.full_key}'") from None
    except ValidationError as error:
        raise RecipeError(f"{where}: bad value for '{prefix}{error.full_key}': {error.msg}") from None


def check_trainer_keys(trainer: dict[str, Any], where: str = "recipe") -> None:
    import pytorch_lightning as pl

    known = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self", "logger", "callbacks"}
    for key in trainer:
        if key not in known:
            raise RecipeError(f"{where}: unknown key 'trainer.{key}' (not a pytorch_lightning.Trainer argument)")


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Load a recipe with its bases, apply ``key=value`` overrides, check every key."""
    path = Path(path)
    node = _load_yaml_chain(path)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise RecipeError(f"overrides must look like key=value, got {bad}")
    user = OmegaConf.from_dotlist(list(overrides))
    node = OmegaConf.merge(node, user)
    if node.get("smoke"):  # the user's key=value win over the smoke settings
        node = OmegaConf.merge(node, smoke_settings(node), user)
        node.run_dir = smoke_run_dir(str(node.get("run_dir") or Recipe.run_dir))
    config = _check_schema(node, Recipe, str(path))
    check_trainer_keys(OmegaConf.to_container(config.trainer), str(path))
    return config


def check_section(config: DictConfig, section: str, schema: type, where: str = "recipe") -> Any:
    """Check one free-form section (``task``, ``probe``) against its dataclass; return it."""
    node = config.get(section) or OmegaConf.create({})
    checked = _check_schema(node, schema, where, prefix=f"{section}.")
    return OmegaConf.to_object(checked)


def start_evaluation(config: DictConfig, section: str, schema: type) -> tuple[Any, Path]:
    """An evaluation verb's opening: its checked section (a value the schema's
    ``__post_init__`` refuses is a RecipeError too) and its run folder, created, with the
    resolved recipe saved in it."""
    try:
        checked = check_section(config, section, schema)
    except RecipeError:
        raise
    except ValueError as error:
        raise RecipeError(str(error)) from None
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(config, run_dir / "config.yaml", resolve=True)
    return checked, run_dir


SMOKE_TRAINER = {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto",
                 "max_steps": -1, "limit_train_batches": 2, "limit_val_batches": 0, "limit_test_batches": 0,
                 "num_sanity_val_steps": 0, "log_every_n_steps": 1, "check_val_every_n_epoch": 1,
                 "sync_batchnorm": False}  # SyncBatchNorm runs on CUDA only; one CPU process has nothing to sync


# Method constants that count training instances: at most this many in a smoke run, whose
# shards hold a few dozen videos (a bank needs more instances than negatives drawn from it).
SMOKE_TASK_LIMITS = {"num_negatives": 8, "cma_positives": 2, "cma_negatives": 4, "num_clusters": 4}

# float16 autocast is CUDA's; the CPU's autocast runs bfloat16 (every other precision runs as written)
CPU_PRECISION = {"16-mixed": "bf16-mixed", "16": "bf16-mixed", "16-true": "bf16-true"}

SMOKE_SUFFIX = "-smoke"


def smoke_run_dir(run_dir: str) -> str:
    """A smoke run's own folder, ``<run_dir>-smoke``: the real run's ``resume=auto`` never
    finds a smoke checkpoint."""
    run_dir = run_dir.rstrip("/")
    return run_dir if run_dir.endswith(SMOKE_SUFFIX) else run_dir + SMOKE_SUFFIX


def smoke_phases(task: Any) -> tuple[int, dict[str, Any]]:
    """The smoke run's epochs and the task keys that move each phase switch to epoch 1, so
    that 2 steps of every phase run: AVTS easy, then hard (and super-hard) negatives;
    AVID, then CMA (positives re-solved every epoch); SeLaVi filling its label bank (or its
    contrastive warm-up), then labels by Sinkhorn and the heads' cross-entropy."""
    name, changes = task.get("name"), {}
    if name == "avts":
        changes["hard_start_epoch"] = min(int(task.get("hard_start_epoch", 1)), 1)
    elif name == "avid" and task.get("cma_start_epoch") is not None:
        changes.update(cma_start_epoch=min(int(task.cma_start_epoch), 1), cma_resample_epochs=1)
    elif name == "selavi" and task.get("variant", "offline") == "offline":
        changes["contrastive_warmup_epochs"] = min(int(task.get("contrastive_warmup_epochs", 0)), 1)
    else:
        return 1, changes
    return 2, changes


def refuse_smoke_mix(checkpoint: dict[str, Any], config: dict[str, Any]) -> None:
    """RecipeError when a checkpoint's run and this run differ in ``smoke`` (its saved
    recipe is in the checkpoint's hyper-parameters)."""
    saved = (checkpoint.get("hyper_parameters") or {}).get("config") or {}
    was_smoke, is_smoke = bool(saved.get("smoke", False)), bool(config.get("smoke", False))
    if was_smoke == is_smoke:
        return
    if was_smoke:
        raise RecipeError(f"resume: that checkpoint is from a smoke run (smoke=true, run_dir {saved.get('run_dir')}); "
                          "a real run never continues one: start it fresh (resume=null) or from its own checkpoint")
    raise RecipeError(f"resume: that checkpoint is from a real run (run_dir {saved.get('run_dir')}); "
                      "a smoke run starts fresh in its own folder: drop resume")


def smoke_settings(node: DictConfig) -> DictConfig:
    """What ``smoke=true`` changes: 2 training steps of batch 4 per phase of the method
    (:func:`smoke_phases`) in one CPU process, no validation, frames at most 32 px and 4
    frames, no wandb, no export, and the constants of SMOKE_TASK_LIMITS capped. The
    encoders, ``model.channels_last`` and ``model.compile``, the precision (float16 as the
    CPU's bfloat16), ``data.audio_features``, the other method constants, the audio window
    and the spectrogram stay as written: it rehearses the GPU run but for CUDA itself.
    The run folder is :func:`smoke_run_dir`; ``load_recipe`` applies the user's
    ``key=value`` again on top."""
    video = node.get("data", {}).get("video")
    task = node.get("task", {})
    trainer = node.get("trainer", {})
    epochs, phase_keys = smoke_phases(task)
    settings: dict[str, Any] = {
        "trainer": {**SMOKE_TRAINER, "max_epochs": epochs,
                    **({"val_check_interval": 1.0} if "val_check_interval" in trainer else {}),
                    **({"precision": CPU_PRECISION[str(trainer.get("precision"))]}
                       if str(trainer.get("precision")) in CPU_PRECISION else {})},
        "data": {"batch_size": 4, "eval_batch_size": None, "num_workers": 0},
        "logger": {"wandb": False}, "export": {"after_training": False}, "checkpoint": {"every_n_train_steps": 0},
        "task": {**{key: min(int(task[key]), limit) for key, limit in SMOKE_TASK_LIMITS.items()
                    if task.get(key) is not None}, **phase_keys},
    }
    if video is not None:
        settings["data"]["video"] = {"size": min(int(video.get("size", 32)), 32),
                                     "num_frames": min(int(video.get("num_frames", 4)), 4)}
    return OmegaConf.create(settings)


def to_plain(config: DictConfig) -> dict[str, Any]:
    """The resolved recipe as plain Python types (saved beside runs and in checkpoints)."""
    return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]


def data_config(config: DictConfig) -> DataConfig:
    """The checked ``data`` section (a value DataConfig refuses is a RecipeError)."""
    try:
        return OmegaConf.to_object(config.data)  # type: ignore[return-value]
    except ValueError as error:
        raise RecipeError(str(error)) from None
