"""The ``avssl`` command line: one verb per stage of the pipeline.

Data verbs take flags (``avssl synth --num-videos 100 --out data/synth``); training and
evaluation verbs take a recipe and ``key=value`` overrides
(``avssl pretrain recipes/synth/avc_small.yaml trainer.max_epochs=2``).
Heavy imports happen inside each verb so that ``avssl --help`` is instant.

A user's mistake (a recipe key, a path, the data) is one line on stderr,
``avssl <verb>: <message>``, and exit status 2 (usage: the recipe or its keys) or 1 (the
files or the data); ``AVSSL_DEBUG=1`` shows the traceback instead. Anything else is a bug
and keeps its traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

USAGE_ERROR, DATA_ERROR = 2, 1
# Paths the user named that are missing, of the wrong kind, or not writable.
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def _synth(args: argparse.Namespace) -> int:
    from avssl.data.synth import generate_dataset, summary_line

    summary = generate_dataset(
        out_dir=args.out,
        num_videos=args.num_videos,
        seconds=args.seconds,
        size=args.size,
        fps=args.fps,
        sample_rate=args.sample_rate,
        num_categories=args.num_categories,
        split_fractions=tuple(args.split),
        seed=args.seed,
        workers=args.workers,
        faulty_soundtrack_fraction=args.faulty_soundtrack_fraction,
    )
    print(summary_line(summary, args.out))
    return 0


def _slurm_array_part() -> tuple[int, int] | None:
    """(part, number of parts) of this SLURM array task, or None outside an array job."""
    import os

    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    if task is None:
        return None
    first = int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
    return int(task) - first, int(os.environ.get("SLURM_ARRAY_TASK_COUNT", int(task) - first + 1))


def _shard_part(args: argparse.Namespace):  # -> avssl.data.shards.Part | None (imported inside)
    """The part of the input this run writes (--part/--num-parts, else the SLURM array
    task's), or None for the whole input."""
    from avssl.data.shards import Part

    array = _slurm_array_part() if args.part is None or args.num_parts is None else None
    part = args.part if args.part is not None else array[0] if array else None
    count = args.num_parts if args.num_parts is not None else array[1] if array else None
    if part is None and count is None:
        return None
    if part is None or count is None:
        missing = "--part" if part is None else "--num-parts"
        args.shards_parser.error(f"{missing} is needed too (or run inside a SLURM array job)")
    try:
        return Part(part, count)
    except ValueError as error:
        args.shards_parser.error(str(error))


def _shards(args: argparse.Namespace) -> int:
    from avssl.data.shards import MergeError, ShardSettings, merge_parts, write_shards

    if args.shards_step == "merge":
        try:
            report = merge_parts(args.out, num_parts=args.num_parts, workers=args.workers)
        except MergeError as error:
            print(f"avssl shards merge: {error}", file=sys.stderr)
            return 2
        print(report.summary())
        return 0 if report.num_packed > 0 else 1
    if args.videos is None or args.out is None:
        missing = [flag for flag, value in (("--videos", args.videos), ("--out", args.out)) if value is None]
        args.shards_parser.error(f"the following arguments are required: {', '.join(missing)}")
    part = _shard_part(args)
    settings = ShardSettings(
        shard_size=args.shard_size,
        short_side=args.short_side,
        fps=args.fps,
        sample_rate=args.sample_rate,
        gop_seconds=args.gop_seconds,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        missing_audio=args.missing_audio,
        audio_format=args.audio_format,
        min_seconds=args.min_seconds,
        seed=args.seed,
    )
    report = write_shards(args.videos, args.out, labels_csv=args.labels, settings=settings, workers=args.workers,
                          part=part)
    print(report.summary())
    if part is not None:
        return 0  # a part that packed nothing is not a failure: the merge counts the whole
    return 0 if report.num_packed > 0 else 1


def _prepare(args: argparse.Namespace) -> int:
    """0 when something was packed, 1 when nothing was, 2 on bad input."""
    from avssl.data.sources.cli import InapplicableOptions, run_prepare
    from avssl.data.sources.common import PrepareError

    try:
        report = run_prepare(args)
    except InapplicableOptions as error:
        print(f"avssl prepare: {error}", file=sys.stderr)
        return 2
    except (PrepareError, ValueError) as error:
        print(f"avssl prepare {args.benchmark}: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.num_packed > 0 else 1


def check_shards(shards: str) -> None:
    """A recipe verb's ``data.shards`` must be a folder written by `avssl shards`: said in one
    line before anything starts (the loader would find out after the model is built). A URL
    or a list of shards (avssl/data/remote.py): its manifest must be readable. The manifest
    read here is the one the run uses (read once per process: :func:`avssl.data.remote.read_manifest`)."""
    from avssl.data import remote

    if remote.is_local_folder(shards):
        folder, fix = Path(shards), "point data.shards at a folder written by `avssl shards`"
        if folder.is_file():
            raise NotADirectoryError(f"data.shards={shards} is a file; {fix}")
        if not folder.is_dir():
            raise FileNotFoundError(f"data.shards={shards}: no such folder; {fix}")
        if not (folder / remote.MANIFEST).is_file():
            raise FileNotFoundError(f"data.shards={shards} has no manifest.json; {fix}")
    remote.read_manifest(shards)


def _recipe(args: argparse.Namespace, section: str | None = None, schema: type | None = None):
    """The checked recipe: its keys and values, the verb's own ``section`` against its
    ``schema``, then the shards folder (a recipe mistake is reported before a data one)."""
    from avssl.config import check_section, load_recipe

    config = load_recipe(args.recipe, args.overrides)
    if section is not None and schema is not None:
        check_section(config, section, schema, where=str(args.recipe))
    check_shards(str(config.data.shards))
    return config


def _pretrain(args: argparse.Namespace) -> int:
    from avssl.pretrain import pretrain

    result = pretrain(_recipe(args))
    from pytorch_lightning.utilities import rank_zero_only

    if rank_zero_only.rank != 0:  # under DDP every rank returns here: one report, not one per rank
        return 0
    if result["resumed_from"]:
        print(f"resumed from: {result['resumed_from']}")
    print(f"run folder: {result['run_dir']}\ncheckpoint: {result['checkpoint']}")
    if "export" in result:
        print(f"exported encoders: {result['export']}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from avssl.export import export_checkpoint

    # the library logs "exported OUT": the command's one line of result
    export_checkpoint(args.checkpoint, args.out, license=args.license, evaluations=args.evaluation)
    return 0


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog may be a function, called only when the help is shown:
    the defaults it lists come from the config dataclasses, whose modules import torch."""

    def __init__(self, *args: Any, epilog_from: Callable[[], str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epilog_from = epilog_from

    def format_help(self) -> str:
        if self.epilog_from is not None:
            self.epilog = self.epilog_from()
        return super().format_help()


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps a one-paragraph description; keeps text with line breaks (the epilog's key
    table and example) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" not in text:
            return super()._fill_text(text, width, indent)
        return "".join(indent + line for line in text.splitlines(keepends=True))


def _yaml(value: Any) -> str:
    """A default as a user would write it after ``key=``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_yaml(v) for v in value) + "]"
    return str(value)


def key_default(key: str, sections: dict[str, type] | None = None) -> Any:
    """The default of a recipe key: the Recipe schema's, or that of the schema ``sections``
    gives for its section (``probe`` → ProbeConfig); for ``trainer.*``, a free dict, that of
    the base every recipe starts from (recipes/pretrain/_base.yaml), else Lightning's."""
    import inspect

    from omegaconf import OmegaConf

    from avssl.config import RECIPES_DIR, Recipe

    section, _, rest = key.partition(".")
    if section == "trainer":
        base = OmegaConf.load(RECIPES_DIR / "pretrain" / "_base.yaml").get("trainer", {})
        if rest in base:
            return base[rest]
        import pytorch_lightning as pl

        return inspect.signature(pl.Trainer.__init__).parameters[rest].default
    value: Any = Recipe()
    if section in (sections or {}):
        value, key = sections[section](), rest
    for part in key.split("."):
        value = getattr(value, part)
    return list(value) if isinstance(value, tuple) else value


def _epilog(keys: Sequence[tuple[str, str]], example: str, sections: dict[str, type] | None = None) -> str:
    width = max(len(key) for key, _ in keys) + 1
    lines = ["keys set most often, as key=value after the recipe (the defaults are the schema's; a recipe",
             "may set its own" + ("; trainer.*: those of recipes/pretrain/_base.yaml, the base of every recipe):"
                                  if any(key.startswith("trainer.") for key, _ in keys) else "):")]
    for key, meaning in keys:
        lines.append(f"  {key:<{width}} {meaning} (default: {_yaml(key_default(key, sections))})")
    return "\n".join([*lines, "", "example:", f"  {example}"])


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", type=Path, help="recipe YAML (see recipes/ and docs/recipes.md)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override any key of the recipe (the keys below, or any other it has)")


PRETRAIN_KEYS = [
    ("data.shards", "folder written by `avssl shards`"),
    ("run_dir", "where checkpoints, logs and the export go"),
    ("smoke", "true: 2 CPU steps at a small size, to check the recipe end to end"),
    ("resume", "auto: continue from run_dir's newest checkpoint; or a .ckpt path"),
    ("seed", "random seed"),
    ("data.batch_size", "clips per batch, per GPU"),
    ("data.num_workers", "DataLoader processes per GPU"),
    ("trainer.max_epochs", "epochs to train (-1: no limit)"),
    ("trainer.devices", "GPUs per node (or auto)"),
    ("trainer.precision", "e.g. bf16-mixed, 32-true"),
    ("logger.wandb", "also log to Weights & Biases (offline unless WANDB_MODE=online)"),
    ("export.after_training", "write run_dir/export (safetensors + model.json) at the end"),
    ("checkpoint.every_n_train_steps", "also checkpoint every N steps (0: at epoch ends only)"),
]
PRETRAIN_EXAMPLE = "avssl pretrain recipes/synth/avc_small.yaml data.shards=runs/demo/shards smoke=true"


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain", help="self-supervised pretraining from a recipe",
        description="Train the recipe's pretext task (AVC, AVTS, AVID+CMA or SeLaVi) on the shards with "
        "PyTorch Lightning; checkpoints go to run_dir/checkpoints and, at the end, the encoders to "
        "run_dir/export (docs/launching.md: GPUs, torchrun, SLURM, resume).",
        formatter_class=_HelpFormatter,
        epilog_from=lambda: _epilog(PRETRAIN_KEYS, PRETRAIN_EXAMPLE),
    )
    _add_recipe_args(p)
    p.set_defaults(run=_pretrain)


_ENCODERS = "an `avssl export` folder, a Lightning .ckpt, or random"


class EvaluationTask(Protocol):
    """An evaluation module, ``avssl/evaluation/<task>.py`` (docs/evaluation.md)."""

    def evaluate(self, config: Any) -> dict[str, Any]:
        """Run the task from the loaded recipe; writes metrics.json into its run_dir."""

    def report(self, results: dict[str, Any]) -> str:
        """The text the verb prints for ``evaluate``'s results."""


# Each verb's module and section schema, imported when the verb runs or shows its help, not
# before: they import torch, and `avssl --help` stays instant.
def _linear_probe() -> ModuleType:
    from avssl.evaluation import linear_probe

    return linear_probe


def _finetune() -> ModuleType:
    from avssl.evaluation import finetune

    return finetune


def _localization() -> ModuleType:
    from avssl.evaluation import localization

    return localization


def _separation() -> ModuleType:
    from avssl.evaluation import separation

    return separation


def _clustering() -> ModuleType:
    from avssl.evaluation import clustering

    return clustering


def _retrieval() -> ModuleType:
    from avssl.evaluation import retrieval

    return retrieval


@dataclass(frozen=True)
class EvaluationVerb:
    """A recipe verb that writes metrics.json into the recipe's run_dir (docs/evaluation.md)."""

    task: Callable[[], EvaluationTask]  # imports the verb's evaluation module
    section: str  # the recipe section it reads
    schema: Callable[[], type]  # the dataclass of that section
    help: str
    description: str
    keys: tuple[tuple[str, str], ...]
    example: str


EVALUATION_VERBS: dict[str, EvaluationVerb] = {
    "probe": EvaluationVerb(
        _linear_probe, "probe", lambda: _linear_probe().ProbeConfig,
        "linear probe and k-NN of frozen encoders (probe.encoders=EXPORT_DIR|CKPT|random)",
        "Pool frozen features of each split, fit a logistic regression on train (weight decay chosen "
        "on val) and a k-NN, and report top-1 on test per modality.",
        (("probe.encoders", _ENCODERS), ("data.shards", "folder written by `avssl shards`"),
         ("run_dir", "where metrics.json and the figures go"),
         ("probe.modalities", "video, audio and/or both"),
         ("probe.eval_clips_per_video", "clips averaged per test video"),
         ("probe.knn", "also a k-NN classifier"), ("probe.batch_size", "clips per feature batch"),
         ("probe.device", "auto, cpu or cuda")),
        "avssl probe recipes/eval/synth_probe.yaml probe.encoders=runs/synth_avc_small/export "
        "data.shards=runs/demo/shards"),
    "finetune": EvaluationVerb(
        _finetune, "finetune", lambda: _finetune().FinetuneConfig,
        "fine-tune a pretrained encoder with a classifier (finetune.encoders=EXPORT_DIR|CKPT|random)",
        "Train one pretrained encoder with a dropout + linear classifier on the train split and report "
        "clip- and video-level top-1/top-5 on test.",
        (("finetune.encoders", _ENCODERS), ("data.shards", "folder written by `avssl shards`"),
         ("run_dir", "where metrics.json goes"), ("finetune.modality", "which encoder: video or audio"),
         ("finetune.epochs", "training epochs"), ("finetune.lr", "the classifier's learning rate"),
         ("finetune.num_classes", "null: the classes in the shards' manifest"),
         ("finetune.accelerator", "auto, cpu or gpu")),
        "avssl finetune recipes/eval/synth_finetune.yaml finetune.encoders=runs/synth_avc_small/export"),
    "localize": EvaluationVerb(
        _localization, "localization", lambda: _localization().LocalizationConfig,
        "sound-source localization (cIoU/AUC) and event localization (localization.checkpoint=CKPT|random)",
        "Heatmaps of where the sound comes from, scored by cIoU/AUC against the sounding objects' boxes "
        "beside a whole-image baseline, and temporal event localization.",
        (("localization.checkpoint", "a pretext run's Lightning .ckpt, or random"),
         ("data.shards", "folder written by `avssl shards` (with boxes)"),
         ("run_dir", "where metrics.json and localization.png go"),
         ("localization.split", "the split scored"), ("localization.rule", "cIoU binarisation: gt_area or median"),
         ("localization.events", "also temporal event localization"),
         ("localization.batch_size", "clips per batch"), ("localization.device", "auto, cpu or cuda")),
        "avssl localize recipes/eval/synth_localization.yaml "
        "localization.checkpoint=runs/synth_avc_small/checkpoints/last.ckpt"),
    "separate": EvaluationVerb(
        _separation, "separation", lambda: _separation().SeparationConfig,
        "mix-and-separate with a visually conditioned U-Net, SDR/SIR/SAR/SI-SDR "
        "(separation.encoders=EXPORT_DIR|CKPT|random)",
        "Train a U-Net conditioned on the video encoder's features to separate mixtures of two clips "
        "and report SDR/SIR/SAR/SI-SDR on test mixtures.",
        (("separation.encoders", _ENCODERS), ("data.shards", "folder written by `avssl shards`"),
         ("run_dir", "where metrics.json and the figures go"), ("separation.steps", "training steps"),
         ("separation.batch_size", "mixtures per step"),
         ("separation.finetune_video", "also train the video encoder"),
         ("separation.eval_workers", "processes for BSS Eval (0: this one)"),
         ("separation.device", "auto, cpu or cuda")),
        "avssl separate recipes/eval/synth_separation.yaml separation.encoders=runs/synth_avc_small/export"),
    "cluster": EvaluationVerb(
        _clustering, "cluster", lambda: _clustering().ClusterConfig,
        "k-means on frozen features, NMI/ARI/purity against labels (cluster.encoders=EXPORT_DIR|CKPT|random)",
        "Cluster frozen features of one split with k-means and score NMI, ARI and purity against the labels.",
        (("cluster.encoders", _ENCODERS), ("data.shards", "folder written by `avssl shards`"),
         ("run_dir", "where metrics.json goes"), ("cluster.modalities", "video, audio and/or both"),
         ("cluster.num_clusters", "null: the classes in the manifest"), ("cluster.split", "the split clustered"),
         ("cluster.batch_size", "clips per feature batch")),
        "avssl cluster recipes/eval/synth_cluster.yaml cluster.encoders=runs/synth_avc_small/export"),
    "retrieve": EvaluationVerb(
        _retrieval, "retrieval", lambda: _retrieval().RetrievalConfig,
        "video→audio and audio→video retrieval, R@1/5/10 and median rank (retrieval.checkpoint=CKPT|random)",
        "Score every test video against every test audio (one centre clip per video) with the method's own "
        "cross-modal score and report recall@K and the median rank of each clip's partner, both directions.",
        (("retrieval.checkpoint", "a pretext run's Lightning .ckpt (the score needs its cross-modal head), or random"),
         ("data.shards", "folder written by `avssl shards`"), ("run_dir", "where metrics.json goes"),
         ("retrieval.split", "the split retrieved among"),
         ("retrieval.per_class", "null, or the first N clips of each class (CAV-MAE: 5)"),
         ("retrieval.max_items", "null, or at most the first N clips"), ("retrieval.ks", "the K of recall@K"),
         ("retrieval.batch_size", "clips per feature batch"), ("retrieval.device", "auto, cpu or cuda")),
        "avssl retrieve recipes/eval/synth_retrieval.yaml "
        "retrieval.checkpoint=runs/synth_avc_small/checkpoints/last.ckpt"),
}


def _evaluate(args: argparse.Namespace) -> int:
    verb = EVALUATION_VERBS[args.command]
    task = verb.task()
    config = _recipe(args, verb.section, verb.schema())
    print(task.report(task.evaluate(config)))
    return 0


def _evaluation_epilog(verb: EvaluationVerb) -> str:
    return _epilog(verb.keys, verb.example, {verb.section: verb.schema()})


def _add_evaluation_verbs(sub: argparse._SubParsersAction) -> None:
    for name, verb in EVALUATION_VERBS.items():
        p = sub.add_parser(name, help=verb.help, description=verb.description + " Writes metrics.json into run_dir.",
                           formatter_class=_HelpFormatter,
                           epilog_from=lambda verb=verb: _evaluation_epilog(verb))
        _add_recipe_args(p)
        p.set_defaults(run=_evaluate)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="Lightning checkpoint → encoder safetensors + model.json",
        description="Write the encoders of an avssl training checkpoint as safetensors files with a "
        "model.json that says what each expects as input and a model card (README.md, the Hugging Face Hub's "
        "layout; docs/models.md); read them back with "
        "avssl.load_pretrained(folder) or give the folder to an evaluation verb.",
        formatter_class=_HelpFormatter,
        epilog="example:\n  avssl export runs/synth_avc_small/checkpoints/last.ckpt --out exported/",
    )
    p.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                   help="a .ckpt written by `avssl pretrain` (e.g. RUN_DIR/checkpoints/last.ckpt)")
    p.add_argument("--out", type=Path, required=True,
                   help="export folder to write (an earlier export there is replaced once the new one is complete; "
                   "a folder holding other files is refused)")
    p.add_argument("--license", default="unknown", help="the model card's licence (a Hub licence id, e.g. cc-by-4.0)")
    p.add_argument("--evaluation", type=Path, action="append", default=[], metavar="METRICS_JSON",
                   help="an evaluation verb's metrics.json to show in the model card (repeatable)")
    p.set_defaults(run=_export)


def _fraction(value: str) -> float:
    """argparse type: a number in [0, 1] (a mistake is argparse's one-line usage error)."""
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {value}")
    return number


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write the synthetic audio-visual set (mp4 + ground truth)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--num-videos", type=int, default=400)
    p.add_argument("--seconds", type=float, default=4.0, help="length of each video")
    p.add_argument("--size", type=int, default=64, help="frame width and height in pixels")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--num-categories", type=int, default=8)
    p.add_argument("--split", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    p.add_argument("--faulty-soundtrack-fraction", type=_fraction, default=0.0, metavar="F",
                   help="give this fraction of the training videos another training video's soundtrack "
                        "(recorded as soundtrack_from in their ground truth and in summary.json)")
    p.set_defaults(run=_synth)


def _add_shards(sub: argparse._SubParsersAction) -> None:
    from avssl.data.shards import AUDIO_FORMATS, ShardSettings

    d = ShardSettings()
    p = sub.add_parser(
        "shards",
        help="re-encode a folder of videos into WebDataset tar shards",
        description="One sample per video: the re-encoded mp4, a json of metadata and any sidecar "
        "files with the same stem. Bad files are skipped and reported, never fatal. "
        "Split across nodes: each of N runs writes one part (--num-parts N --part I, or one task of a "
        "SLURM array), then `avssl shards merge --out OUT` builds the one manifest (docs/launching.md).",
    )
    p.add_argument("--videos", type=Path, default=None, help="folder of videos (searched recursively); required")
    p.add_argument("--labels", type=Path, default=None,
                   help="csv with the header id,label[,split]: id = the video's path under --videos without "
                        "extension (or its file name without extension), label = a class name or integer, "
                        "split = train/val/test/… (optional)")
    p.add_argument("--out", type=Path, default=None, help="output folder for the shards; required")
    p.add_argument("--shard-size", type=int, default=d.shard_size, help="samples per shard")
    p.add_argument("--short-side", type=int, default=d.short_side,
                   help="resize (up or down) so the short side is S pixels")
    p.add_argument("--fps", type=float, default=d.fps, help="constant output frame rate")
    p.add_argument("--sample-rate", type=int, default=d.sample_rate, help="output audio rate (mono)")
    p.add_argument("--gop-seconds", type=float, default=d.gop_seconds, help="keyframe interval in seconds")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="share of the videos without a split held out as 'val' (per class with --labels; "
                        "default: 0.1 when the labels file has no split column, else 0)")
    p.add_argument("--test-fraction", type=float, default=d.test_fraction,
                   help="share of the videos without a split held out as 'test' (per class with --labels; "
                        "default: 0.1 when the labels file has no split column, else 0)")
    p.add_argument("--missing-audio", choices=("skip", "silence"), default=d.missing_audio,
                   help="what to do with videos that have no audio stream")
    p.add_argument("--audio-format", choices=AUDIO_FORMATS, default=d.audio_format,
                   help="pcm: raw int16 mono beside a video-only mp4 (fastest to read, ~2x the bytes); "
                        "aac: mono AAC inside the mp4")
    p.add_argument("--min-seconds", type=float, default=d.min_seconds,
                   help="skip videos whose audio and video overlap for less than this (seconds)")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds the split of the videos without one")
    p.add_argument("--workers", type=int, default=1,
                   help="parallel processes (the output does not depend on it)")
    p.add_argument("--num-parts", type=int, default=None,
                   help="split the input into N parts written by separate runs into OUT/parts/ "
                        "(default: inside a SLURM array job, its number of tasks)")
    p.add_argument("--part", type=int, default=None,
                   help="the part (0..N-1) this run writes (default: the SLURM array task's index)")
    p.set_defaults(run=_shards, shards_step=None, shards_parser=p)
    steps = p.add_subparsers(dest="shards_step", metavar="[merge]")
    merge = steps.add_parser(
        "merge", help="build OUT/manifest.json and the shards from the parts in OUT/parts/",
        description="Merge the parts written by `avssl shards --num-parts N --part I --out OUT`: refuses, "
        "naming the part, when one is missing (no part manifest) or failed.",
    )
    merge.add_argument("--out", type=Path, required=True, help="the --out the parts were written with")
    merge.add_argument("--num-parts", type=int, default=None,
                       help="how many parts to expect (default: what the part manifests say)")
    merge.add_argument("--workers", type=int, default=1,
                       help="processes rewriting the shards of parts 1..N-1 (the output does not depend on it)")
    merge.set_defaults(run=_shards)


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    from avssl.data.sources.cli import add_prepare_arguments

    p = sub.add_parser(
        "prepare",
        help="shard a public benchmark from its release layout (labels, splits, ground truth)",
        description="Read a benchmark's own annotation files, find its clips under --root and pack them "
        "with the shard writer; clips listed but missing are skipped and reported (docs/benchmarks-data.md).",
    )
    add_prepare_arguments(p)
    p.set_defaults(run=_prepare)


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_synth, _add_shards, _add_prepare, _add_pretrain, _add_evaluation_verbs, _add_export,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="avssl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def _is_avssl_error(error: BaseException) -> bool:
    """Raised on purpose by avssl (an error class of its own), so its message is for users."""
    return any(cls.__module__.split(".")[0] == "avssl" for cls in type(error).__mro__)


def exit_status(error: BaseException) -> int | None:
    """The exit status of a user's mistake, or None for a bug (which keeps its traceback)."""
    from avssl.errors import RecipeError  # a module of its own: importing it costs nothing

    if isinstance(error, RecipeError):
        return USAGE_ERROR
    if isinstance(error, PATH_ERRORS):
        return DATA_ERROR
    if isinstance(error, (ValueError, RuntimeError, MemoryError)) and _is_avssl_error(error):
        return DATA_ERROR  # DataError, LabelsError, ExportError, DecodeCacheFull, ...
    return None


def one_line(error: BaseException) -> str:
    """The message on one line; an OSError from the system names its path."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        message = f"{error.filename}: {error.strerror}"
    else:
        message = str(error) or type(error).__name__
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


class _DropLightningTips(logging.Filter):
    """Lightning's advertisements ("💡 Tip: ... litlogger / litmodels"), logged at INFO
    through rank_zero_info; nothing else of its log is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


_TIPS_FILTER = _DropLightningTips()
LIGHTNING_INFO_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")


def quiet_third_party_noise() -> None:
    """Hide what a user cannot act on: Lightning's tips, and torch's deprecation of the
    ``LeafSpec`` class that Lightning's own ``_pytree`` still instantiates."""
    for name in LIGHTNING_INFO_LOGGERS:
        logging.getLogger(name).addFilter(_TIPS_FILTER)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"pytorch_lightning\.utilities\._pytree")


class _PlainFormatter(logging.Formatter):
    """INFO is the bare message (progress); a warning or error says what it is."""

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno <= logging.INFO else f"{record.levelname.lower()}: {message}"


def configure_logging() -> None:
    """INFO and above to stderr, so that library progress shows; left alone when the
    program embedding avssl configured logging itself."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PlainFormatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def debugging() -> bool:
    return os.environ.get("AVSSL_DEBUG", "") not in ("", "0")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    quiet_third_party_noise()
    try:
        return int(args.run(args) or 0)
    except Exception as error:
        status = exit_status(error)
        if status is None or debugging():
            raise
        print(f"avssl {args.command}: {one_line(error)}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
