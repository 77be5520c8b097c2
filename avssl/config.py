"""Recipes: OmegaConf YAML with a schema, inheritance and command-line overrides.

A recipe has the sections ``data``, ``model``, ``task``, ``trainer``, ``logger``,
``export`` (docs/design.md) and ``monitors`` (online probes during pretraining).
``base: other.yaml`` (relative to the recipe, or to recipes/) starts from another recipe.
``key=value`` overrides apply last. Every key is checked against the schema: an unknown
key is an error that names it (and the nearest known key); a value of the wrong type or out
of range is an error that names the key and what it accepts (``VALUE_RULES``).
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from avssl.data.datamodule import DataConfig
from avssl.errors import RecipeError

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


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
    # separate / cluster / retrieve)
    probe: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    localization: dict[str, Any] = field(default_factory=dict)
    separation: dict[str, Any] = field(default_factory=dict)
    cluster: dict[str, Any] = field(default_factory=dict)
    retrieval: dict[str, Any] = field(default_factory=dict)


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


def _field_type(schema: type, dotted: str) -> Any:
    """The declared type of ``dotted`` in a dataclass schema (None where the schema has no
    such field, or the key is inside a free dict)."""
    declared: Any = schema
    for part in dotted.split("."):
        declared = _without_none(declared)
        if not dataclasses.is_dataclass(declared):
            return None
        declared = typing.get_type_hints(declared).get(part)
    return declared


def _without_none(declared: Any) -> Any:
    args = [a for a in typing.get_args(declared) if a is not type(None)]
    return args[0] if type(None) in typing.get_args(declared) and len(args) == 1 else declared


_KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _kind(declared: Any) -> str:
    """``int | None`` → 'an integer or null': the words for a type in an error message."""
    base = _without_none(declared)
    origin = typing.get_origin(base) or base
    if base in _KINDS:
        words = _KINDS[base]
    elif origin in (list, tuple):
        words = "a list"
    else:
        words = "a mapping of keys" if origin is dict or dataclasses.is_dataclass(base) else str(base)
    return words + (" or null" if base is not declared else "")


def _plain_value(value: Any) -> Any:
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _show(value: Any) -> str:
    """A value as the user wrote it in YAML terms (true, null, 'two')."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _did_you_mean(name: str, known: Sequence[str], section: str = "") -> str:
    """' (did you mean 'data.batch_size'?)' for a near miss of a known key, else ''."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f" (did you mean '{section}{match[0]}'?)" if match else ""


def literal_choices(declared: Any) -> tuple[Any, ...]:
    """The values a ``Literal[...]`` field (or ``Literal[...] | None``) allows; () for other types."""
    base = _without_none(declared)
    return typing.get_args(base) if typing.get_origin(base) is typing.Literal else ()


def _one_of_words(choices: Sequence[Any]) -> str:
    return "one of " + ", ".join(repr(c) for c in choices)


def _check_schema(node: DictConfig, schema: type, where: str, prefix: str = "") -> DictConfig:
    structured = OmegaConf.structured(schema)
    OmegaConf.set_readonly(structured, False)
    try:
        return OmegaConf.merge(structured, node)
    except (ConfigKeyError, ConfigAttributeError) as error:
        key = str(error.full_key)
        parent, _, name = key.rpartition(".")
        owner = _without_none(_field_type(schema, parent) if parent else schema)
        known = [f.name for f in dataclasses.fields(owner)] if dataclasses.is_dataclass(owner) else []
        hint = _did_you_mean(name, known, prefix + (parent + "." if parent else ""))
        raise RecipeError(f"{where}: unknown key '{prefix}{key}'{hint}") from None
    except ValidationError as error:
        if error.full_key:
            value = _plain_value(OmegaConf.select(node, str(error.full_key)))
            declared = _field_type(schema, str(error.full_key))
            choices = literal_choices(declared)
            if choices:
                raise RecipeError(f"{prefix}{error.full_key} must be {_one_of_words(choices)}, got {_show(value)}") \
                    from None
            if declared is not None:
                raise RecipeError(f"{prefix}{error.full_key}: {_show(value)} is not {_kind(declared)}") from None
        raise RecipeError(f"{where}: bad value for '{prefix}{error.full_key}': {error.msg}") from None


def check_trainer_keys(trainer: dict[str, Any], where: str = "recipe") -> None:
    import pytorch_lightning as pl

    known = set(inspect.signature(pl.Trainer.__init__).parameters) - {"self", "logger", "callbacks"}
    for key in trainer:
        if key not in known:
            hint = _did_you_mean(key, sorted(known), "trainer.")
            raise RecipeError(f"{where}: unknown key 'trainer.{key}' (not a pytorch_lightning.Trainer argument){hint}")


# -- values: kinds and ranges -------------------------------------------------------------------
@dataclass(frozen=True)
class Accepts:
    """What one key accepts: a kind, checked first ("'two' is not an integer"), then a range
    ("must be an integer >= 1, got 0"). The schema's types already hold for schema keys; the
    kind matters for ``trainer``, a free dict handed to Lightning."""

    kind: str
    is_kind: Callable[[Any], bool]
    in_range: Callable[[Any], bool]
    accepted: str
    nullable: bool = False

    def problem(self, key: str, value: Any) -> str | None:
        if value is None:
            return None if self.nullable else f"{key}: null is not {self.kind}"
        if not self.is_kind(value):
            return f"{key}: {_show(value)} is not {self.kind}"
        if not self.in_range(value):
            return f"{key} must be {self.accepted}, got {_show(value)}"
        return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def integer(minimum: int, special: int | None = None, meaning: str = "", nullable: bool = False) -> Accepts:
    """An integer >= ``minimum``, or the one ``special`` value (e.g. -1: no limit)."""
    accepted = f"an integer >= {minimum}" + (f", or {special} ({meaning})" if special is not None else "")
    return Accepts("an integer", _is_int, lambda v: v >= minimum or v == special, accepted, nullable)


def number(low: float = -math.inf, high: float = math.inf, low_open: bool = False,
           nullable: bool = False) -> Accepts:
    """A number in [low, high] (or (low, high] with ``low_open``)."""
    above = (lambda v: v > low) if low_open else (lambda v: v >= low)
    if high == math.inf:
        accepted = f"a number {'>' if low_open else '>='} {low:g}"
    else:
        accepted = f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"
    return Accepts("a number", _is_number, lambda v: above(v) and v <= high and not math.isnan(v), accepted, nullable)


def one_of(choices: Sequence[Any], kind: str, nullable: bool = False) -> Accepts:
    return Accepts(kind, lambda v: not isinstance(v, bool) and isinstance(v, (int, str)), lambda v: v in choices,
                   _one_of_words(choices), nullable)


FRACTION = number(0, 1)
POSITIVE = number(0, low_open=True)
NON_NEGATIVE = number(0)


def _limit_batches() -> Accepts:
    """Lightning's limit_*_batches: a float is a fraction of the batches, an int a count."""
    return Accepts("a number", _is_number,
                   lambda v: (_is_int(v) and v >= 0) or (isinstance(v, float) and 0.0 <= v <= 1.0),
                   "a fraction in [0.0, 1.0] or a whole number of batches >= 0", nullable=True)


def _devices() -> Accepts:
    def valid(value: Any) -> bool:
        if _is_int(value):
            return value >= 1 or value == -1
        if isinstance(value, str):
            return value == "auto" or re.fullmatch(r"\s*-?\d+\s*(,\s*\d+\s*)*,?", value) is not None
        return bool(value) and all(_is_int(index) and index >= 0 for index in value)

    return Accepts("a number of devices, a list of device indices or 'auto'",
                   lambda v: not isinstance(v, bool) and isinstance(v, (int, str, list)), valid,
                   "a number of devices >= 1 (-1: all), a list of device indices, a string like '0,1', or 'auto'")


def _precisions() -> list[Any]:
    """What ``Trainer(precision=...)`` accepts, read from Lightning's own type so it cannot drift."""
    from lightning_fabric.plugins.precision.precision import _PRECISION_INPUT

    def leaves(declared: Any) -> list[Any]:
        args = typing.get_args(declared)
        return [declared] if not args else [leaf for arg in args for leaf in leaves(arg)]

    return leaves(_PRECISION_INPUT)


# Values the schema's types allow but the code cannot use, and the trainer keys users set
# most (Lightning checks these late, some with a bare assert). Keys of a section that is
# absent are not checked.
VALUE_RULES: dict[str, Accepts] = {
    "seed": integer(0),
    "data.batch_size": integer(1),
    "data.eval_batch_size": integer(1, nullable=True),
    "data.num_workers": integer(0),
    "data.shuffle_buffer": integer(0),
    "data.max_skip_fraction": FRACTION,
    "data.worker_timeout_s": NON_NEGATIVE,
    "data.video.num_frames": integer(1),
    "data.video.fps": POSITIVE,
    "data.video.size": integer(1),
    "data.audio.seconds": POSITIVE,
    "data.audio.min_shift_seconds": NON_NEGATIVE,
    "data.mel.sample_rate": integer(1),
    "data.mel.n_mels": integer(1),
    "data.mel.n_fft": integer(1),
    "data.mel.window_seconds": POSITIVE,
    "data.mel.hop_seconds": POSITIVE,
    "checkpoint.every_n_train_steps": integer(0),
    "checkpoint.every_n_epochs": integer(0),
    "monitors.num_classes": integer(2, nullable=True),
    "monitors.lr": POSITIVE,
    "monitors.knn_k": integer(1),
    "monitors.knn_temperature": POSITIVE,
    "monitors.queue_size": integer(1),
    "task.lr": POSITIVE,
    "task.weight_decay": NON_NEGATIVE,
    "task.warmup_epochs": integer(0),
    "task.contrastive_warmup_epochs": integer(0),
    "task.contrastive_weight": NON_NEGATIVE,
    "task.contrastive_temperature": POSITIVE,
    "probe.batch_size": integer(1),
    "probe.max_iter": integer(1),
    "probe.train_clips_per_video": integer(1),
    "probe.eval_clips_per_video": integer(1),
    "probe.knn_k": integer(1),
    "probe.knn_temperature": POSITIVE,
    "finetune.num_classes": integer(2, nullable=True),
    "finetune.epochs": integer(1),
    "finetune.lr": POSITIVE,
    "finetune.encoder_lr_scale": NON_NEGATIVE,
    "finetune.weight_decay": NON_NEGATIVE,
    "finetune.momentum": FRACTION,
    "finetune.dropout": FRACTION,
    "finetune.eval_clips_per_video": integer(1),
    "localization.batch_size": integer(1),
    "localization.contrast_audios": integer(0),
    "localization.num_plot": integer(0),
    "localization.event_clips_per_video": integer(1),
    "separation.steps": integer(1),
    "separation.batch_size": integer(1),
    "separation.lr": POSITIVE,
    "separation.weight_decay": NON_NEGATIVE,
    "separation.max_train_clips": integer(0),
    "separation.test_mixtures": integer(1),
    "separation.max_two_source_clips": integer(0),
    "separation.figure_mixtures": integer(0),
    "separation.eval_workers": integer(0),
    "cluster.num_clusters": integer(2, nullable=True),
    "cluster.restarts": integer(1),
    "cluster.batch_size": integer(1),
    "retrieval.per_class": integer(1, nullable=True),
    "retrieval.max_items": integer(2, nullable=True),
    "retrieval.batch_size": integer(1),
    "retrieval.pairs_per_batch": integer(1),
    "trainer.max_epochs": integer(1, -1, "no limit", nullable=True),
    "trainer.min_epochs": integer(0, nullable=True),
    "trainer.max_steps": integer(1, -1, "no limit"),
    "trainer.min_steps": integer(0, nullable=True),
    "trainer.devices": _devices(),
    "trainer.num_nodes": integer(1),
    "trainer.precision": one_of(_precisions(), "a precision such as 'bf16-mixed'", nullable=True),
    "trainer.accumulate_grad_batches": integer(1),
    "trainer.limit_train_batches": _limit_batches(),
    "trainer.limit_val_batches": _limit_batches(),
    "trainer.limit_test_batches": _limit_batches(),
    "trainer.limit_predict_batches": _limit_batches(),
    "trainer.check_val_every_n_epoch": integer(1, nullable=True),
    "trainer.num_sanity_val_steps": integer(0, -1, "all", nullable=True),
    "trainer.gradient_clip_val": number(0, nullable=True),
}

# Keys recipes once had and no longer do: a recipe naming one is refused as unknown, but a
# checkpoint written before the removal still loads (its saved recipe drops them).
RETIRED_KEYS: tuple[str, ...] = ("data.eval_clips_per_video",)


def without_retired_keys(recipe: dict[str, Any]) -> dict[str, Any]:
    """A saved recipe (a checkpoint's plain dict) without the keys in RETIRED_KEYS."""
    recipe = dict(recipe)
    for key in RETIRED_KEYS:
        section, _, name = key.partition(".")
        if isinstance(recipe.get(section), dict) and name in recipe[section]:
            recipe[section] = {k: v for k, v in recipe[section].items() if k != name}
    return recipe


_ABSENT = object()


def check_values(node: DictConfig, prefix: str = "") -> None:
    """Check every key of VALUE_RULES that ``node`` sets (``node`` is the ``prefix`` section)."""
    for key, accepts in VALUE_RULES.items():
        if not key.startswith(prefix):
            continue
        value = OmegaConf.select(node, key[len(prefix):], default=_ABSENT)
        if value is _ABSENT:
            continue
        problem = accepts.problem(key, _plain_value(value))
        if problem:
            raise RecipeError(problem)


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
    check_values(config)
    data_config(config)  # the data dataclasses' own checks (__post_init__), here rather than at the first batch
    return config


def check_section(config: DictConfig, section: str, schema: type, where: str = "recipe") -> Any:
    """Check one free-form section (``task``, ``probe``) against its dataclass and
    VALUE_RULES; return it. A value the schema's ``__post_init__`` refuses is a RecipeError too."""
    node = config.get(section) or OmegaConf.create({})
    checked = _check_schema(node, schema, where, prefix=f"{section}.")
    check_values(checked, prefix=f"{section}.")
    try:
        return OmegaConf.to_object(checked)
    except ValueError as error:
        raise RecipeError(str(error)) from None


def start_evaluation(config: DictConfig, section: str, schema: type) -> tuple[Any, Path]:
    """An evaluation verb's opening: its checked section and its run folder, created, with
    the resolved recipe saved in it."""
    checked = check_section(config, section, schema)
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
SMOKE_TASK_LIMITS = {"num_negatives": 8, "cma_positives": 2, "cma_negatives": 4, "num_clusters": 4,
                     "video_clusters": 4, "audio_clusters": 4}

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
    AVID, then CMA (positives re-solved every epoch); Robust-xID's plain xID, then its
    weights and soft targets; SeLaVi filling its label bank (or its contrastive warm-up),
    then labels by Sinkhorn and the heads' cross-entropy; XDC clustering the training set
    and training on the labels, then clustering again (every epoch)."""
    name, changes = task.get("name"), {}
    if name == "avts":
        changes["hard_start_epoch"] = min(int(task.get("hard_start_epoch", 1)), 1)
    elif name in ("avid_cma", "avid") and task.get("cma_start_epoch") is not None:  # avid: its former name
        changes.update(cma_start_epoch=min(int(task.cma_start_epoch), 1), cma_resample_epochs=1)
    elif name == "robust_xid" and task.get("robust_start_epoch") is not None:
        changes["robust_start_epoch"] = min(int(task.robust_start_epoch), 1)
    elif name == "selavi" and task.get("variant", "offline") == "offline":
        changes["contrastive_warmup_epochs"] = min(int(task.get("contrastive_warmup_epochs", 0)), 1)
    elif name == "xdc":
        changes["recluster_epochs"] = 1
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
